"""Duty-cycle pacing: background work that pauses so it takes at most a fraction of the time.

A collection's heavy steps (re-encoding records, rewriting packs, scanning indexes) call
:meth:`DutyCycle.pause` between units of work; each pause lasts long enough that the work
since the previous pause took at most ``duty`` of the wall time (work + pause). Pauses shorter
than ``min_pause_s`` are carried over to the next call rather than slept. The pause is a plain sleep: it
releases the GIL and the disk, so uploads and reads in the same process keep their share.
Pacing changes only timing, never what is done or in which order (crash safety is unaffected).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class DutyCycle:
    """Tracks work time and pauses to hold it to ``duty`` (0 < duty <= 1; 1 never pauses)."""

    def __init__(
        self, duty: float, min_pause_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.duty = min(1.0, max(duty, 0.01))
        self.min_pause_s = min_pause_s
        self._clock, self._sleep = clock, sleep
        self._since = clock()  # start of the current work stretch
        self.paused_s = 0.0  # total time spent pausing

    def _owed(self) -> float:
        """Seconds to pause now for the work stretch since the last pause."""
        if self.duty >= 1:
            return 0.0
        worked = self._clock() - self._since
        return worked * (1 - self.duty) / self.duty

    def pause(self) -> None:
        """Sleep for the work done since the last pause (blocking: worker threads)."""
        owed = self._owed()
        if owed >= self.min_pause_s:
            self._sleep(owed)
            self.paused_s += owed
            self._since = self._clock()

    def paced(self, items: Iterable[T], every: int = 1024) -> Iterator[T]:
        """``items`` unchanged, pausing after every ``every`` of them (an index scan read lazily
        pauses between its reads; blocking: worker threads)."""
        for i, item in enumerate(items, 1):
            yield item
            if i % every == 0:
                self.pause()

    async def apause(self) -> None:
        """:meth:`pause` for the event loop (awaits instead of blocking it)."""
        owed = self._owed()
        if owed >= self.min_pause_s:
            await asyncio.sleep(owed)
            self.paused_s += owed
            self._since = self._clock()
