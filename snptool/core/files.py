"""File plumbing: atomic writes, sha256, provenance records."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snptool.core.interrupts import held_interrupts
from snptool.errors import InputFileError, UsageError, first_line

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a one-line error if it is not a readable file."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist; check the path.")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory; give a file.")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{what} {path} is not readable; check its permissions.")
    return path


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output path that would overwrite one of the inputs or has no directory."""
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"output {output} is a directory; give a file name.")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"the directory of output {output} does not exist; create it first.")
    for item in inputs:
        if item is not None and Path(item).exists() and Path(item).resolve() == output.resolve():
            raise UsageError(f"output {output} is also an input; write to another file.")
    return output


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it over `destination` on success.

    On any exception (including KeyboardInterrupt and SIGTERM) the temporary file is removed
    and `destination` is left as it was; an interrupt never splits creating, renaming or
    removing the temporary file from the bookkeeping around it.
    """
    destination = Path(destination)
    temporary_path = None
    try:
        with held_interrupts():
            handle, temporary = tempfile.mkstemp(
                prefix=f".{destination.name}.", suffix=".part", dir=destination.resolve().parent
            )
            temporary_path = Path(temporary)
            os.close(handle)
        yield temporary_path
        with held_interrupts():
            os.chmod(temporary_path, 0o666 & ~_umask())
            os.replace(temporary_path, destination)
    except BaseException:
        with held_interrupts():
            if temporary_path is not None:
                temporary_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(destination: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `destination` via a temporary file and a rename."""
    with atomic_path(destination) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def strict_json(value: Any) -> Any:
    """A copy of nested dicts/lists in which NaN and infinities are None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def command_line() -> str:
    """The command line of this process, shell-quoted."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    return shlex.join([program, *sys.argv[1:]])


def provenance(inputs: dict[str, str | os.PathLike | None]) -> dict:
    """The provenance record every output carries: inputs' sha256, command, version, time."""
    from snptool import __version__

    files = {}
    for role, path in inputs.items():
        if path is None:
            continue
        files[role] = {"path": str(path), "sha256": sha256_file(path)}
    return {
        "inputs": files,
        "command": command_line(),
        "snptool_version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (read without torch), with a one-line error
    for a corrupt file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputFileError(
            f"{path} is not a readable safetensors file ({first_line(error)}); "
            "it may be truncated or of another format."
        ) from None
