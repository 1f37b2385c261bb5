"""Input and output paths: missing files, directories, an output that is also an input, and
atomic writes that leave the old file when they fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from snptool.core.files import atomic_path, sha256_file, write_bytes_atomic
from tests.conftest import assert_one_error, invoke, part_files


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    assert_one_error(invoke("layers", path), f"checkpoint {path} does not exist; check the path.")
    assert_one_error(invoke("evaluate", path), f"checkpoint {path} does not exist; check the path.")
    assert_one_error(
        invoke("import", tmp_path / "absent.pt", "--arch", "tiny_vgg", "-o", tmp_path / "x"),
        f"weights file {tmp_path / 'absent.pt'} does not exist; check the path.",
    )


def test_directory_instead_of_a_file(tmp_path: Path, foreign_weights: Path) -> None:
    assert_one_error(
        invoke("layers", tmp_path), f"checkpoint {tmp_path} is a directory; give a file."
    )
    assert_one_error(invoke("evaluate", tmp_path), contains="is a directory")
    assert_one_error(
        invoke("import", tmp_path, "--arch", "tiny_vgg", "-o", tmp_path / "x.safetensors"),
        f"weights file {tmp_path} is a directory; give a file.",
    )
    assert_one_error(
        invoke("import", foreign_weights, "--arch", "tiny_vgg", "-o", tmp_path),
        f"output {tmp_path} is a directory; give a file name.",
    )


def test_output_equal_to_input_is_refused(foreign_weights: Path, checkpoint_path: Path) -> None:
    digest = sha256_file(foreign_weights)
    assert_one_error(
        invoke("import", foreign_weights, "--arch", "tiny_vgg", "-o", foreign_weights),
        f"output {foreign_weights} is also an input; write to another file.",
    )
    assert sha256_file(foreign_weights) == digest

    digest = sha256_file(checkpoint_path)
    result = invoke("train", "--resume", checkpoint_path, "--epochs", 3, "-o", checkpoint_path)
    assert_one_error(result, contains="is also an input")
    assert sha256_file(checkpoint_path) == digest


@pytest.mark.parametrize("exception", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_the_destination(tmp_path: Path, exception) -> None:
    destination = tmp_path / "result.safetensors"
    destination.write_bytes(b"old")
    with pytest.raises(type(exception)), atomic_path(destination) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".part")
        temporary.write_bytes(b"half of the new fi")
        raise exception
    assert destination.read_bytes() == b"old"
    assert part_files(tmp_path) == [] and sorted(tmp_path.iterdir()) == [destination]

    write_bytes_atomic(destination, b"new")
    assert destination.read_bytes() == b"new" and part_files(tmp_path) == []


def test_interrupted_first_write_creates_nothing(tmp_path: Path) -> None:
    destination = tmp_path / "fresh.safetensors"
    with pytest.raises(OSError), atomic_path(destination) as temporary:
        temporary.write_bytes(b"partial")
        raise OSError("no space left on device")
    assert list(tmp_path.iterdir()) == []
