"""Flags derived from config dataclasses: names, defaults, help, nesting, comma lists, errors."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from snptool.cli.config_flags import build_config, config_flags, fields_as_flags
from snptool.config import setting
from snptool.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Inner:
    epochs: int = setting(0, "Epochs.", flag="--inner-epochs")
    layers: tuple[str, ...] = setting((), "Comma-separated layers.")


@dataclasses.dataclass(frozen=True)
class Outer:
    method: str = setting("a", "The method.")
    sizes: tuple[int, ...] = setting((1, 8), "Sizes.")
    target: float | None = setting(None, "A target.")
    fast: bool = setting(True, "Go fast.")
    inner: Inner = dataclasses.field(default_factory=Inner)


def run(*args: str) -> tuple[typer.testing.Result, list[Outer]]:
    app, seen = typer.Typer(), []

    @app.command()
    @config_flags(Outer, helps={"method": "Which method."})
    def main(name: Annotated[str, typer.Argument()], *, config: Outer) -> None:
        seen.append(config)

    return CliRunner().invoke(app, list(args)), seen


def test_every_field_becomes_a_flag_with_its_default_and_help():
    flags = {f.parameter.name: f for f in fields_as_flags(Outer)}
    assert list(flags) == ["method", "sizes", "target", "fast", "inner_epochs", "layers"]
    assert flags["sizes"].parameter.default == "1,8"
    assert flags["layers"].parameter.default is None  # an empty tuple is no value
    assert flags["inner_epochs"].path == ("inner", "epochs")
    option = flags["fast"].parameter.annotation.__metadata__[0]
    assert option.default == "--fast/--no-fast" and option.help == "Go fast."


def test_the_command_gets_the_built_config():
    result, seen = run(
        "x", "--sizes", "2, 4", "--no-fast", "--inner-epochs", "3", "--layers", "a,b"
    )
    assert result.exit_code == 0, result.output
    assert seen == [Outer(sizes=(2, 4), fast=False, inner=Inner(epochs=3, layers=("a", "b")))]
    result, seen = run("x")
    assert seen == [Outer()]


def test_help_comes_from_the_field_or_the_command_override():
    result, _ = run("--help")
    assert "Which method." in result.output and "Go fast." in result.output
    assert "--inner-epochs" in result.output and "The method." not in result.output


def test_a_bad_comma_list_is_a_usage_error():
    sizes = next(f for f in fields_as_flags(Outer) if f.parameter.name == "sizes")
    with pytest.raises(UsageError, match="--sizes '2,x' must be comma-separated whole numbers"):
        sizes.parse("2,x")


def test_build_config_leaves_unflagged_fields_at_their_defaults():
    assert build_config(Outer, {("inner", "epochs"): 5}) == Outer(inner=Inner(epochs=5))


def test_a_field_without_help_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        size: int = 1

    with pytest.raises(TypeError, match="Bare.size has no help"):
        fields_as_flags(Bare)
