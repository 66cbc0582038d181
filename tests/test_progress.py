"""Progress off a terminal: plain, throttled lines instead of a bar that rich would never draw."""

from __future__ import annotations

import io

from rich.console import Console

from thoraxseg.utils.progress import LineProgress


def _progress(line_every_s: float) -> tuple[LineProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    return LineProgress(console=console, line_every_s=line_every_s, transient=True), out


def test_lines_are_printed_off_a_terminal_and_completion_once() -> None:
    progress, out = _progress(line_every_s=0.0)
    with progress:
        task = progress.add_task("training", total=3)
        for _ in range(3):
            progress.advance(task)
        progress.update(task, completed=3)  # already complete: no second completion line
    lines = [line for line in out.getvalue().splitlines() if line.strip()]  # rich ends a live display with a newline
    assert [line.split(" (")[0] for line in lines] == ["training: 1/3", "training: 2/3", "training: 3/3"]


def test_lines_are_throttled() -> None:
    progress, out = _progress(line_every_s=3600.0)
    with progress:
        task = progress.add_task("predicting", total=50)
        for _ in range(50):
            progress.advance(task)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]  # rich ends a live display with a newline
    assert len(lines) == 1 and lines[0].startswith("predicting: 50/50 ("), lines


def test_no_lines_on_a_terminal_or_when_disabled() -> None:
    out = io.StringIO()
    terminal = LineProgress(console=Console(file=out, force_terminal=True), line_every_s=0.0, transient=True)
    with terminal:
        task = terminal.add_task("x", total=2)
        terminal.advance(task)
    disabled = LineProgress(console=Console(file=out, force_terminal=False), line_every_s=0.0, disable=True)
    with disabled:
        task = disabled.add_task("y", total=2)
        disabled.advance(task, 2)
    assert "x: 1/2" not in out.getvalue() and "y: 2/2" not in out.getvalue()
