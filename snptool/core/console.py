"""Everything a human sees: the stderr console, progress bars, tables, and JSON on stdout.

The only module that imports rich. Library steps report through `progress` and `log`;
`set_quiet(True)` silences both (the CLI's --quiet).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from snptool.core.files import strict_json

stderr = Console(stderr=True, highlight=False)
if not stderr.is_terminal:  # logs and pipes: no live bars, no truncated tables
    stderr.width = 160
_state: dict = {"quiet": False, "active": None, "rank": 0}


def set_quiet(quiet: bool) -> None:
    """Silence progress, logs and tables (ranks other than 0 stay silent regardless)."""
    _state["quiet"] = quiet or bool(_state["rank"])


def set_rank(rank: int) -> None:
    """Under torchrun: only rank 0 shows progress, logs, tables and JSON."""
    _state["rank"] = rank
    if rank:
        _state["quiet"] = True


class ProgressTask:
    """A handle on one progress bar: `advance(n)` and `describe(text)`."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task_id = task_id

    @property
    def live(self) -> bool:
        """Whether a bar is shown (so a description is worth computing)."""
        return self._progress is not None

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task_id, steps)

    def describe(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, description=description)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[ProgressTask]:
    """A progress bar on stderr for `total` steps (silent when quiet)."""
    if _state["quiet"] or not stderr.is_terminal:
        yield ProgressTask(None, None)
        return
    active = _state["active"]
    if active is not None:  # nested work gets a second bar in the same display
        task_id = active.add_task(description, total=total)
        try:
            yield ProgressTask(active, task_id)
        finally:
            active.remove_task(task_id)
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )
    _state["active"] = bar
    try:
        with bar:
            yield ProgressTask(bar, bar.add_task(description, total=total))
    finally:
        _state["active"] = None


def log(message: str) -> None:
    """One line of human output on stderr (silent when quiet)."""
    if not _state["quiet"]:
        stderr.print(message, markup=False, soft_wrap=True)


def error(message: str, *, collective: bool = False) -> None:
    """An error line on stderr; printed even when quiet. Under torchrun an error every rank
    raises (`collective`) is printed by rank 0 only, any other names its rank."""
    rank = _state["rank"]
    if rank and collective:
        return
    where = f"rank {rank}: " if rank else ""
    stderr.print(f"error: {where}{message}", markup=False, style="bold red", soft_wrap=True)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Render a table on stderr (silent when quiet)."""
    if _state["quiet"]:
        return
    stderr.print(title, markup=False, style="bold", soft_wrap=True)
    grid = Table()
    for index, column in enumerate(columns):
        grid.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        grid.add_row(*(format_cell(value) for value in row))
    stderr.print(grid)


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return str(value)


def emit_json(payload: Any) -> None:
    """Print a machine-readable result on stdout (rank 0 only under torchrun)."""
    if _state["rank"]:
        return
    text = json.dumps(strict_json(payload), indent=2, default=_json_default, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
