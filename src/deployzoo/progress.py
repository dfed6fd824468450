"""Progress bars (rich) that vanish when output is not a terminal or when disabled."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task_id) -> None:
        self._p, self._t = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool = True, unit: str = "items",
                 completed: int = 0) -> Iterator[_Bar]:
    """A bar on stderr when it is a terminal. `unit="bytes"` shows sizes and transfer speed (downloads);
    `completed` is where it starts (a resumed download)."""
    if not enabled or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),
                                                                               TimeElapsedColumn())
    with Progress(TextColumn("{task.description}"), BarColumn(), *counts, TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as p:
        yield _Bar(p, p.add_task(label, total=total, completed=completed))
