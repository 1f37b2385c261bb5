"""Command flags derived from the config dataclasses: each declared once, next to its field.

A field's flag is `--field-name` (`--name/--no-name` for a switch) unless its metadata names
another; its default is the field's default and its help the field's `help` metadata
(`config.setting`). A nested config contributes its own fields, and a tuple field is one
comma-separated value. `@config_flags(PruneConfig)` puts these flags where the command has its
`config` parameter and hands the command the config they build, so no command copies fields by
hand and a config's default or help is never retyped.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from snptool.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line option of a config field."""

    path: tuple[str, ...]  # field names from the outer config down
    parameter: inspect.Parameter
    parse: Callable[[Any], Any]  # the option's value → the field's value


def config_flags(
    config_type: type,
    *,
    into: str = "config",
    skip: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
):
    """Replace the command's parameter `into` by one option per field of `config_type` (but the
    fields named in `skip`, whose defaults stay; `helps` rewords a field's help for this
    command), and call the command with the built config."""
    flags = fields_as_flags(config_type, skip=skip, helps=helps or {})

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        if into not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {into!r} for {config_type}")
        parameters = []
        for parameter in signature.parameters.values():
            if parameter.name == into:
                parameters += [flag.parameter for flag in flags]
            else:  # the flags have defaults, so what follows them is keyword-only
                keyword = parameters and parameters[-1].kind == inspect.Parameter.KEYWORD_ONLY
                kind = inspect.Parameter.KEYWORD_ONLY if keyword else parameter.kind
                parameters.append(parameter.replace(kind=kind))

        @functools.wraps(command)
        def with_config(**kwargs: Any) -> Any:
            values = {flag.path: flag.parse(kwargs.pop(flag.parameter.name)) for flag in flags}
            return command(**kwargs, **{into: build_config(config_type, values)})

        with_config.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_config.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_config

    return decorate


def fields_as_flags(
    config_type: type,
    path: tuple[str, ...] = (),
    *,
    skip: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
) -> list[Flag]:
    """The options of every field of `config_type` but those named in `skip`, nested configs'
    fields included."""
    hints = typing.get_type_hints(config_type)
    flags = []
    for field in dataclasses.fields(config_type):
        kind = hints[field.name]
        if field.name in skip:
            continue
        if dataclasses.is_dataclass(kind):
            flags += fields_as_flags(kind, (*path, field.name), skip=skip, helps=helps)
            continue
        if "help" not in field.metadata:
            raise TypeError(f"{config_type.__name__}.{field.name} has no help; use config.setting")
        declaration = field.metadata.get("flag") or default_flag(field.name, kind)
        name = declaration.split("/")[0].removeprefix("--").replace("-", "_")
        cli_type, default, parse = command_line_form(kind, field.default, declaration)
        help_text = (helps or {}).get(field.name, field.metadata["help"])
        option = typer.Option(declaration, help=help_text)
        parameter = inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[cli_type, option],
        )
        flags.append(Flag((*path, field.name), parameter, parse))
    return flags


def default_flag(name: str, kind: Any) -> str:
    flag = "--" + name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if kind is bool else flag


def command_line_form(kind: Any, default: Any, flag: str) -> tuple[Any, Any, Callable[[Any], Any]]:
    """(the option's type, its default, value → field value): a tuple is one comma-separated
    string, read back into items of the tuple's element type; an empty one is no value."""
    members = [k for k in typing.get_args(kind) if k is not type(None)]
    optional = _is_optional(kind)
    sequence = typing.get_origin(kind) is tuple or (
        optional and len(members) == 1 and typing.get_origin(members[0]) is tuple
    )
    if not sequence:
        return kind, default, lambda value: value
    item = typing.get_args(members[0] if optional else kind)[0]
    empty = None if optional else ()

    def parse(value: str | None) -> tuple | None:
        if value is None:
            return empty
        try:
            return tuple(item(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            kind_of = {int: "whole numbers, e.g. 4,8,16", float: "numbers, e.g. 0.5,0.25"}
            raise UsageError(
                f"{flag} {value!r} must be comma-separated {kind_of.get(item, item.__name__)}."
            ) from None

    text = ",".join(map(str, default)) if default else None
    return (str if text is not None else str | None), text, parse


def _is_optional(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    union = origin is typing.Union or origin is types.UnionType
    return union and type(None) in typing.get_args(kind)


def build_config(config_type: type, values: dict[tuple[str, ...], Any], path: tuple = ()) -> Any:
    """`config_type` from the flags' values by field path; nested configs built the same way,
    fields without a flag left at their defaults."""
    hints = typing.get_type_hints(config_type)
    kwargs = {}
    for field in dataclasses.fields(config_type):
        key = (*path, field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            kwargs[field.name] = build_config(hints[field.name], values, key)
        elif key in values:
            kwargs[field.name] = values[key]
    return config_type(**kwargs)
