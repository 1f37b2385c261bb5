"""The ground every stage stands on: files, checkpoints, architectures, file formats, the one
forward-hook tracer and the one SGD step loop.

Nothing here imports a stage. `console` is the only rich import.
"""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "Checkpoint": "checkpoint",
        "read_checkpoint": "checkpoint",
        "write_checkpoint": "checkpoint",
        "build_model": "architectures",
        "TapRecorder": "taps",
        "count_macs": "macs",
    },
)
