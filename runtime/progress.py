"""A live "still working" line for operator commands that can take long (reconcile, mint, import).

On a terminal: a spinner with the task and the elapsed time on stderr, removed when done. Not a
terminal (scripts, --json, pipes): nothing at all, so machine output stays clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextmanager
def working(what: str, *, console: Console | None = None) -> Iterator[None]:
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        progress.add_task(what, total=None)
        yield
