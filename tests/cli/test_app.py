"""The command line as a whole: usage errors, --version, --quiet, --debug, interrupts, and a
--help that loads no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from snptool import __version__
from snptool.errors import InputFileError
from tests.conftest import assert_ok, assert_one_error, invoke, part_files


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train"], "Missing option '--output' / '-o'; see `snptool train --help`."),
        (
            ["train", "--epochs", "x", "-o", "m.safetensors"],
            "Invalid value for '--epochs': Input should be a valid integer, unable to parse "
            "string as an integer; see `snptool train --help`.",
        ),
        (["probe"], "Missing argument 'checkpoint'; see `snptool probe --help`."),
        (["nosuch"], "No such command 'nosuch'; see `snptool --help`."),
        (["trian"], "No such command 'trian'. Did you mean 'train'? See `snptool --help`."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    assert_one_error(invoke(*args), expected)
    assert not (Path.cwd() / "m.safetensors").exists()


def test_no_arguments_print_the_help() -> None:
    result = invoke()
    assert "Commands:" in result.output and "train" in result.output


def test_version_and_no_args() -> None:
    result = invoke("--version")
    assert_ok(result)
    assert result.stdout.strip() == f"snptool {__version__}"
    bare = invoke()
    assert "Usage" in bare.output and "train" in bare.output


def test_quiet_leaves_only_json(synthetic_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    args = ["-q", "train", "--arch", "tiny_vgg", "--data", f"npz:{synthetic_npz}"]
    result = invoke(*args, "--epochs", 1, "--batch-size", 16, "-o", out, "--json")
    assert_ok(result)
    assert result.stderr == ""
    assert json.loads(result.stdout)["history"][0]["epoch"] == 1


def test_interrupted_command_exits_130_and_keeps_output(tmp_path: Path) -> None:
    arch_file = tmp_path / "interrupting.py"
    arch_file.write_text(
        textwrap.dedent(
            """
            def factory(num_classes=10):
                raise KeyboardInterrupt
            """
        )
    )
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier result")
    result = invoke("train", "--arch", f"{arch_file}:factory", "-o", out)
    assert result.exit_code == 130
    assert (
        result.stderr.strip()
        == "error: interrupted; no half-written file is left and no input changed."
    )
    assert out.read_bytes() == b"an earlier result" and part_files(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    result = invoke("--debug", "layers", path)
    assert isinstance(result.exception, InputFileError)
    assert result.exit_code == 1 and result.stderr == ""
    with pytest.raises(InputFileError, match="does not exist"):
        invoke("--debug", "layers", path, catch_exceptions=False)
    from_env = invoke("layers", path, env={"SNPTOOL_DEBUG": "1"})
    assert isinstance(from_env.exception, InputFileError)
    # Without the flag the next command is back to one line.
    assert_one_error(invoke("layers", path))


def test_debug_traceback_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    command = [sys.executable, "-m", "snptool", "--debug", "layers", str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert "Traceback (most recent call last)" in completed.stderr
    assert "snptool.errors.InputFileError" in completed.stderr


HELP_SCRIPT = """
import sys
from snptool.cli import app
try:
    app(sys.argv[1:])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print("TORCH_LOADED", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sweep", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    command = [sys.executable, "-c", HELP_SCRIPT, *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "Usage" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == "TORCH_LOADED False"
