"""SIGINT and SIGTERM as exceptions raised where the program is, so outputs unwind cleanly.

The CLI turns SIGINT and SIGTERM into KeyboardInterrupt / Terminated raised where the program
is, so `files.atomic_path` unwinds; inside `held_interrupts()` one is postponed to the block's
end. Python ignores an exception raised in a __del__ or a callback, so an interrupt is raised
again every REPEAT_SECONDS until the CLI reports it (`interrupt_reported`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

from snptool.errors import Terminated

REPEAT_SECONDS = 0.5
_interrupts: dict[str, Any] = {"held": 0, "pending": None, "received": None}


def install_interrupt_handlers() -> None:
    """SIGINT → KeyboardInterrupt and SIGTERM → Terminated, raised where the program is."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _interrupt_again)
    default_hook = sys.unraisablehook

    def ignored(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0.01)  # swallowed in a callback: raise it again
            return
        default_hook(unraisable)

    sys.unraisablehook = ignored


def interrupt_reported() -> None:
    """The interrupt reached the code that reports it: stop raising it again."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    _interrupts["received"] = None


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Postpone SIGINT/SIGTERM to the end of a short step that must not be cut in two."""
    _interrupts["held"] += 1
    try:
        yield
    finally:
        _interrupts["held"] -= 1
    pending = _interrupts["pending"]
    if pending is not None and not _interrupts["held"]:
        _interrupts["pending"] = None
        _interrupt(pending, None)


def _interrupt(signum: int, frame: Any) -> None:
    if _interrupts["held"]:
        _interrupts["pending"] = signum
        return
    _interrupts["received"] = signum
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _interrupt_again(signum: int, frame: Any) -> None:
    if _interrupts["received"] is not None:
        _interrupt(_interrupts["received"], frame)
