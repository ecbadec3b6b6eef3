"""Progress: a live bar on a terminal; with ``lines=True``, plain periodic lines elsewhere (logs, SLURM
job output: ``prepare: 1,200/5,000 images (24%), 85 images/s, ETA 0:00:45``); nothing with ``--quiet``.

The line interval is ``CXRBENCH_PROGRESS_SECONDS`` (default 30 s); a last line is printed at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def progress_enabled(quiet: bool = False) -> bool:
    """True when a live progress bar makes sense (a TTY, not quiet)."""
    return not quiet and sys.stderr.isatty()


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """The part of rich's Progress that cxrbench uses, printing a plain line every ``every`` seconds
    (done/total, rate, ETA) instead of redrawing a bar: readable in a log file or a SLURM output."""

    def __init__(self, unit: str = "images", every: float | None = None, stream: Any = None) -> None:
        self.unit = unit
        self.every = float(os.environ.get("CXRBENCH_PROGRESS_SECONDS", 30)) if every is None else every
        self.stream = stream
        self.tasks: dict[int, dict[str, Any]] = {}
        self.console = console

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(final=exc[0] is None)

    def start(self) -> None:
        """Nothing to start (rich's API)."""

    def stop(self, final: bool = True) -> None:
        """The last line of every task that moved (only when the work finished)."""
        if final:
            for task in self.tasks.values():
                if task["done"] > task["start"] and task["printed"] != task["done"]:
                    self._line(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> TaskID:
        tid = TaskID(len(self.tasks))
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total, "done": completed, "start": completed,
                           "t0": now, "last": now, "printed": completed}
        return tid

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id]["done"] + advance)

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["done"] = completed
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        if time.monotonic() - task["last"] >= self.every:
            self._line(task)

    def _line(self, task: dict[str, Any]) -> None:
        now = time.monotonic()
        task["last"], task["printed"] = now, task["done"]
        done, total = task["done"], task["total"]
        rate = (done - task["start"]) / max(now - task["t0"], 1e-9)
        text = f"{task['description']}: {int(done):,}"
        if total:
            text += f"/{int(total):,} {self.unit} ({100 * done / total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.1f} {self.unit}/s, elapsed {_clock(now - task['t0'])}"
        if total and rate > 0 and done < total:
            text += f", ETA {_clock((total - done) / rate)}"
        print(text, file=self.stream or sys.stderr, flush=True)


def make_progress(quiet: bool = False, *extra_columns, lines: bool = False,
                  unit: str = "images") -> Progress | LineProgress:
    """A rich Progress with bar, count, elapsed and ETA on a terminal. Not on a terminal it is
    disabled, or, with ``lines=True``, a :class:`LineProgress` printing periodic plain lines (of
    ``unit``). Nothing with ``quiet``."""
    if lines and not quiet and not sys.stderr.isatty():
        return LineProgress(unit)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress_enabled(quiet),
        transient=False,
    )


def track(items: Iterable[T], total: int | None, description: str, quiet: bool = False) -> Iterator[T]:
    """Iterate ``items`` while showing a progress bar."""
    with make_progress(quiet) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
