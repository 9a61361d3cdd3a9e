"""One overall progress bar (bytes, rate, ETA, files) on stderr, fed from many transfer threads.

Drawn only when stderr is a terminal and ``--quiet`` is off; otherwise every call is a cheap no-op,
so the transfer code never needs to ask.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.output import Output
from cli.remote import ProgressFn


class TransferProgress:
    """Aggregates per-file ``progress(done, total)`` callbacks into one bar."""

    def __init__(self, out: Output, label: str, total_bytes: int, total_files: int = 1) -> None:
        self._label = label
        self._files_total = total_files
        self._files_done = 0
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if out.interactive:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn(), console=out.stderr, transient=True,
            )
            self._task = self._progress.add_task(self._describe(), total=total_bytes or None)

    def _describe(self) -> str:
        if self._files_total <= 1:
            return self._label
        return f"{self._label} {self._files_done}/{self._files_total} files"

    def __enter__(self) -> TransferProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def for_file(self) -> ProgressFn | None:
        """A callback for one file's transfer (None when nothing is drawn, which skips the calls)."""
        if self._progress is None:
            return None
        last = [0]

        def update(done: int, _total: int | None) -> None:
            delta = done - last[0]
            last[0] = done
            if delta and self._progress is not None and self._task is not None:
                self._progress.advance(self._task, delta)

        return update

    def file_done(self) -> None:
        """Count one finished (or skipped) file."""
        if self._progress is None or self._task is None:
            return
        with self._lock:
            self._files_done += 1
            self._progress.update(self._task, description=self._describe())
