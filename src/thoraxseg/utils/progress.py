"""Rich progress bars and console shared by every command."""

from __future__ import annotations

import os
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

#: Console for tables and messages (stdout).
console = Console(highlight=False)
#: Console for progress bars and warnings (stderr), so stdout stays parseable.
err_console = Console(stderr=True, highlight=False)


def progress_enabled() -> bool:
    """Progress bars are shown unless ``THORAXSEG_NO_PROGRESS=1``."""
    return os.environ.get("THORAXSEG_NO_PROGRESS", "0") not in ("1", "true", "yes")


def make_progress() -> Progress:
    """A :class:`rich.progress.Progress` with count, elapsed and ETA columns (on stderr)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not progress_enabled(),
        transient=not sys.stderr.isatty(),
    )


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr.

    >>> list(track(range(3), "counting"))
    [0, 1, 2]
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)
