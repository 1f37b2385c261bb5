"""File plumbing: atomic writes, sha256, provenance records."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import math
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snptool.core.interrupts import held_interrupts
from snptool.errors import InputFileError, OutputFileError, UsageError, first_line

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a one-line error if it is not a readable regular file
    (a FIFO or device would block or never end)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputFileError(f"{what} {path} does not exist; check the path.") from None
    except OSError as error:  # a symlink loop, a path through a file, a name too long
        raise InputFileError(f"{what} {path} cannot be opened ({error.strerror}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"{what} {path} is a directory; give a file.")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(
            f"{what} {path} is not a regular file (a {_file_kind(info.st_mode)}); give a file."
        )
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{what} {path} is not readable; check its permissions.")
    return path


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "FIFO", stat.S_ISCHR: "character device", stat.S_ISBLK: "block device"}
    kinds[stat.S_ISSOCK] = "socket"
    return next((name for test, name in kinds.items() if test(mode)), "special file")


_SYSTEM_FOLDERS = {("dev",), ("proc",), ("sys",)}  # devices and kernel files: never replaced


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output path that is not a regular file or a new name in an existing, writable
    directory, that is read-only, or that would overwrite one of the inputs."""
    output = Path(output)
    real = Path(os.path.realpath(output))
    if any(part in _SYSTEM_FOLDERS for part in (output.absolute().parts[1:2], real.parts[1:2])):
        raise OutputFileError(
            f"output {output} is a system path (under /dev, /proc or /sys); snptool writes "
            "regular files atomically, so give a file name (--json prints results on stdout)."
        )
    try:
        info = output.stat() if output.exists() or output.is_symlink() else None
    except OSError as error:  # a symlink loop
        raise OutputFileError(f"output {output} cannot be used ({error.strerror}).") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"output {output} is a directory; give a file name.")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputFileError(
            f"output {output} is a {_file_kind(info.st_mode)}, not a regular file; snptool "
            "writes only regular files, so give a file name."
        )
    if info is not None and not info.st_mode & stat.S_IWUSR:
        raise OutputFileError(
            f"output {output} is read-only; make it writable (chmod u+w) or write elsewhere."
        )
    parent = output.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"the directory of output {output} does not exist; create it first.")
    for item in inputs:
        if item is not None and Path(item).exists() and _same_file(Path(item), output):
            raise UsageError(f"output {output} is also an input; write to another file.")
    return output


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


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
                prefix=f".{destination.name}.", suffix=".part", dir=destination.absolute().parent
            )
            temporary_path = Path(temporary)
            os.close(handle)
        yield temporary_path
        with held_interrupts():
            os.chmod(temporary_path, _mode_for(destination))
            os.replace(temporary_path, destination)
    except BaseException as error:
        with held_interrupts():
            if temporary_path is not None:
                temporary_path.unlink(missing_ok=True)
        problem = write_problem(error)
        if problem is None:
            raise
        raise OutputFileError(f"cannot write {destination}: {problem}.") from None


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory (removed afterwards) for a library that writes files of its own;
    a write there that fails (a full or read-only TMPDIR) is one line."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as directory:
            yield Path(directory)
    except OSError as error:
        problem = write_problem(error)
        if problem is None:
            raise
        raise OutputFileError(
            f"cannot write temporary files in {tempfile.gettempdir()}: {problem} (or set "
            "TMPDIR to another folder)."
        ) from None


def require_space(destination: str | os.PathLike, size: int) -> None:
    """Refuse to start a write of about `size` bytes that the destination's file system has no
    room for (HDF5 may crash, not raise, when a disk fills up under it)."""
    free = shutil.disk_usage(Path(destination).absolute().parent).free
    needed = int(size * 1.05) + (64 << 10)
    if needed > free:
        raise OutputFileError(
            f"cannot write {destination}: it needs about {needed / 2**20:.1f} MiB and its file "
            f"system has {free / 2**20:.1f} MiB free; free some space or write elsewhere (-o)."
        )
    limit = _file_size_limit()
    if limit is not None and needed > limit:
        raise OutputFileError(
            f"cannot write {destination}: it needs about {needed / 2**20:.1f} MiB, beyond the "
            f"file size limit of {limit / 2**20:.2f} MiB (ulimit -f); raise the limit."
        )


def _file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE), if limited."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _mode_for(destination: Path) -> int:
    """The permissions a new file gets, or those of the file it replaces."""
    try:
        return stat.S_IMODE(destination.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


# What a failed write means for the user (errno → what to do).
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some or write elsewhere (-o)",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere (-o)",
    errno.EROFS: "the file system is read-only; write elsewhere (-o)",
    errno.EACCES: "permission denied; check the directory's permissions or write elsewhere",
    errno.EPERM: "the operation is not permitted; write elsewhere (-o)",
    errno.EFBIG: "the file grew beyond the size limit (ulimit -f); write a smaller file",
    errno.ELOOP: "the path is a symlink loop; give another file name",
    errno.ENAMETOOLONG: "the file name is too long; give a shorter one",
    errno.EIO: "an input/output error on the device; check it, or write elsewhere (-o)",
}


def write_problem(error: BaseException) -> str | None:
    """What a write failure means (an OSError, or a library's error that carries its errno,
    e.g. safetensors' "(os error 28)"), or None for any other error."""
    number = error.errno if isinstance(error, OSError) else None
    if number is None:
        found = re.search(r"os error (\d+)|\[Errno (\d+)\]|errno = (\d+)", str(error))
        number = int(next(g for g in found.groups() if g)) if found else None
    return _WRITE_ERRORS.get(number) if number is not None else None


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
    """The provenance record every output carries: inputs' sha256, command, version, torch's
    intra-op thread count, time."""
    from snptool import __version__

    files = {}
    for role, path in inputs.items():
        if path is None:
            continue
        files[role] = {"path": str(path), "sha256": sha256_file(path)}
    torch = sys.modules.get("torch")  # the thread count decides float sums' order
    return {
        "inputs": files,
        "command": command_line(),
        "snptool_version": __version__,
        "threads": torch.get_num_threads() if torch is not None else None,
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
