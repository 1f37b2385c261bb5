"""SIGINT and SIGTERM as exceptions raised where the program is, so outputs unwind cleanly.

The CLI turns SIGINT and SIGTERM into KeyboardInterrupt / Terminated raised where the program
is, so `files.atomic_path` unwinds; inside `held_interrupts()` one is postponed to the block's
end. Python ignores an exception raised in a __del__ or a callback, so an interrupt is raised
again every REPEAT_SECONDS until the CLI reports it (`interrupt_reported`). `work_limit`
bounds a step that may not finish (a third-party graph search) on its own timer, SIGPROF.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from snptool.errors import Terminated

REPEAT_SECONDS = 0.5
_interrupts: dict[str, Any] = {
    "held": 0,
    "pending": None,
    "received": None,
    "last": None,  # the last signal raised as an exception, reported or not
    "reported": False,
}


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
    _interrupts["reported"] = True


def exit_status(code: Any) -> tuple[int, bool]:
    """The status to exit with after the command ended with `code` (a SystemExit code), and
    whether an interrupt still needs its line: 130 for SIGINT and 143 for SIGTERM wherever
    they arrived (typer turns both into 130), after any work the command finished."""
    code = code if isinstance(code, int) else (0 if code is None else 1)
    last = _interrupts["last"]
    if last is None:
        return code, False
    return (143 if last == signal.SIGTERM else 130), not _interrupts["reported"]


def ignore_interrupts() -> None:
    """Leave SIGINT and SIGTERM pending from here on, and stop raising one again: the process
    is exiting."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


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
    _interrupts["received"] = _interrupts["last"] = signum
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _interrupt_again(signum: int, frame: Any) -> None:
    if _interrupts["received"] is not None:
        _interrupt(_interrupts["received"], frame)


class _LimitReached(BaseException):
    """Raised by the work-limit timer: a BaseException, so `except Exception` in third-party
    code does not swallow it."""


@contextlib.contextmanager
def work_limit(seconds: float, memory: int, error: Exception) -> Iterator[None]:
    """Raise `error` once the block has used `seconds` of CPU time or its peak memory has grown
    by `memory` bytes: checked four times a CPU second on the profiling timer (SIGPROF), which
    the interrupt handlers leave alone. No limit off the main thread, where the platform lacks
    the timer, or for `seconds` <= 0."""
    usable = hasattr(signal, "SIGPROF") and threading.current_thread() is threading.main_thread()
    if seconds <= 0 or not usable:
        yield
        return
    started, peak = time.process_time(), _peak_memory()

    def check(signum: int, frame: Any) -> None:
        if time.process_time() - started >= seconds or _peak_memory() - peak >= memory:
            raise _LimitReached  # again at every tick, until it leaves the block

    previous = signal.signal(signal.SIGPROF, check)
    signal.setitimer(signal.ITIMER_PROF, 0.25, 0.25)
    try:
        yield
    except _LimitReached:
        raise error from None
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _peak_memory() -> int:
    """The process's peak resident memory in bytes (Linux reports kilobytes, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
