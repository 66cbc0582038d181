"""Rich progress bars and console shared by every command."""

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

#: Console for tables and messages (stdout).
console = Console(highlight=False)
#: Console for progress bars and warnings (stderr), so stdout stays parseable.
err_console = Console(stderr=True, highlight=False)


def progress_enabled() -> bool:
    """Progress bars are shown unless ``THORAXSEG_NO_PROGRESS=1``."""
    return os.environ.get("THORAXSEG_NO_PROGRESS", "0") not in ("1", "true", "yes")


#: Where stderr is not a terminal (a log file, CI, SLURM), a task prints one plain line at most this often
#: (s), and when it completes, instead of redrawing a bar.
LINE_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class LineProgress(Progress):
    """A :class:`rich.progress.Progress` that also works in log files.

    On a terminal it is rich's bar. Elsewhere rich draws nothing until the end, so long work
    would look hung; this prints ``description: done/total (elapsed, ETA)`` for each task at
    most every ``line_every_s`` seconds of progress, and once when the task completes.
    """

    def __init__(self, *columns: Any, line_every_s: float = LINE_EVERY_S, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.line_every_s = float(line_every_s)
        self._last_line: dict[TaskID, float] = {}
        self._reported_done: set[TaskID] = set()
        self._lines = not self.disable and not self.console.is_terminal

    def start(self) -> None:
        if not self._lines:  # off a terminal rich's live display only adds blank lines: plain lines instead
            super().start()

    def stop(self) -> None:
        if not self._lines:
            super().stop()

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        self._last_line[task] = time.monotonic()
        return task

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def _maybe_line(self, task_id: TaskID) -> None:
        if not self._lines or task_id in self._reported_done:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if not done and now - self._last_line.get(task_id, 0.0) < self.line_every_s:
            return
        self._last_line[task_id] = now
        if done:
            self._reported_done.add(task_id)
        count = f"{task.completed:.0f}/{task.total:.0f}" if task.total is not None else f"{task.completed:.0f}"
        timing = _clock(task.elapsed or 0.0)
        if not done and task.time_remaining is not None:
            timing += f", ~{_clock(task.time_remaining)} left"
        self.console.print(f"{task.description}: {count} ({timing})", markup=False, highlight=False,
                           soft_wrap=True)


def make_progress(line_every_s: float = LINE_EVERY_S) -> LineProgress:
    """A progress display with count, elapsed and ETA columns (on stderr); plain lines off a terminal."""
    return LineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not progress_enabled(),
        transient=not sys.stderr.isatty(),
        line_every_s=line_every_s,
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
