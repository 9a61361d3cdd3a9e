"""A progress receiver for engine and library tests: it keeps everything it is told."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cli.upload import FileOutcome


class Recorder:
    """An UploadProgress that keeps what it is told (and can act when the run starts)."""

    def __init__(self, on_start: Callable[[], None] | None = None) -> None:
        self.started: list[tuple[int, int]] = []
        self.bytes = 0
        self.outcomes: list[FileOutcome] = []
        self.finished = 0
        self._lock = threading.Lock()
        self._on_start = on_start

    def start(self, files: int, total_bytes: int) -> None:
        self.started.append((files, total_bytes))
        if self._on_start is not None:
            self._on_start()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes

    def file_done(self, outcome: FileOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def finish(self) -> None:
        self.finished += 1
