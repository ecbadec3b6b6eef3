"""A progress bar that stays quiet when stdout is not a terminal or ``--quiet`` is given."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def progress_enabled(quiet: bool = False) -> bool:
    """True when a live progress bar makes sense (a TTY, not quiet)."""
    return not quiet and sys.stderr.isatty()


def make_progress(quiet: bool = False, *extra_columns) -> Progress:
    """A rich Progress with bar, count, elapsed and ETA; disabled when not a TTY or quiet."""
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
