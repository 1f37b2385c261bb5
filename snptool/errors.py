"""Errors a user can act on. The CLI prints their message on one line and exits with status 2."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, else the error's type name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class SnpError(Exception):
    """Base class: the message is one sentence saying what is wrong and how to fix it."""

    exit_code = 2


class UsageError(SnpError):
    """A flag or argument value that cannot be used."""


class InputFileError(SnpError):
    """A file that is missing, unreadable, corrupt or of the wrong kind."""


class OutputFileError(SnpError):
    """An output path that cannot be written (no space, read-only, permission, not a file)."""


class CheckpointMismatchError(SnpError):
    """Weights that do not fit the architecture they are loaded into."""


class DataError(SnpError):
    """A data set that cannot be found, read or used."""


class ArchitectureError(SnpError):
    """An architecture spec that cannot be resolved into a model."""


class LayerError(SnpError):
    """A layer name that does not exist in a model, or cannot be analysed."""


class ExportError(SnpError):
    """A model that cannot be exported to ONNX, or whose ONNX graph disagrees with torch."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds like Ctrl-C (exit status 143)."""
