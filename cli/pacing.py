"""Waiting out the server's rate limit in the upload engines, within a bound.

A call refused with :class:`RateLimitedError` was refused before it had any effect (the server
checks the caller's budget before it runs a call), except a PutChunks stream refused between two
messages, whose earlier messages may be stored; and the server says when a retry can succeed.
So retrying after that delay is safe for the writes too: a CommitFile (with or without
``if_version``) runs as if the refused try had never been made, and PutChunks stores
content-addressed chunks, which a second send cannot change. This differs from a lost
connection (UNAVAILABLE), after which a commit may or may not have happened and is never resent
(:class:`cas.errors.CommitUnansweredError`).

The gRPC channel retries the read-only calls itself (cli/remote.py); this module serves the
writes. Every operation (one file, or one group of small files) may wait at most
:data:`RATE_LIMIT_MAX_WAIT_S` in total; a refusal that would take it over that is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from cas.errors import RateLimitedError

T = TypeVar("T")

RATE_LIMIT_MAX_WAIT_S = 60.0


class RateLimitBudget:
    """The time one operation may still spend waiting out rate limits (not thread-safe)."""

    def __init__(self, max_wait_s: float = RATE_LIMIT_MAX_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> None:
        self.left_s = max_wait_s
        self.waited_s = 0.0
        self._sleep = sleep

    def wait(self, refusal: RateLimitedError) -> None:
        """Sleep the delay ``refusal`` names, or raise ``refusal`` when that would exceed the budget."""
        delay = max(refusal.retry_after_s, 0.0)
        if delay > self.left_s:
            raise refusal
        self._sleep(delay)
        self.left_s -= delay
        self.waited_s += delay


def retry_rate_limited(call: Callable[[], T], budget: RateLimitBudget) -> T:
    """``call()``, called again after each :class:`RateLimitedError` while ``budget`` allows the wait."""
    while True:
        try:
            return call()
        except RateLimitedError as refusal:
            budget.wait(refusal)
