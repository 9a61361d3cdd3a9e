"""Per-identity rate limiting with token buckets.

Each identity has a bucket of ``burst`` tokens that refills at ``rate`` tokens per second; a
call costs ``cost`` tokens (1 by default). A call is admitted when the bucket holds at least
``min(cost, burst)`` tokens, and the full cost is then taken, possibly leaving the bucket in
debt: a single request larger than the burst (say, a large byte count) is still possible, and
pays for itself by delaying the next ones.

Memory stays bounded: buckets are kept in least-recently-used order, and a bucket that has had
time to refill completely is indistinguishable from a new one, so it is dropped. If more than
``max_identities`` identities are active at once, the least recently seen bucket is dropped
early; that identity gets a fresh (full) bucket, which errs on the side of admitting.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cas.errors import RateLimitedError


class RateLimiter:
    """Token buckets keyed by identity; thread-safe and usable from asyncio code (never blocks)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_identities: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rate`` tokens per second (0 or less: unlimited), ``burst`` tokens of capacity."""
        if rate > 0 and burst <= 0:
            raise ValueError("burst must be positive when a rate is set")
        if max_identities < 1:
            raise ValueError("max_identities must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_identities = max_identities
        self._clock = clock
        self._lock = threading.Lock()
        # identity -> (tokens, time of that reading); most recently used last
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when the limiter admits everything."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, identity: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0.0, or take nothing and return the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        if cost < 0 or math.isnan(cost):
            raise ValueError("cost must be a non-negative number")
        now = self._clock()
        with self._lock:
            tokens = self._tokens(identity, now)
            need = min(cost, self.burst)
            # The tolerance makes waiting exactly the returned hint enough despite float rounding.
            if tokens + 1e-9 < need:
                self._buckets[identity] = (tokens, now)
                self._buckets.move_to_end(identity)
                return (need - tokens) / self.rate
            self._buckets[identity] = (tokens - cost, now)
            self._buckets.move_to_end(identity)
            self._evict(now)
            return 0.0

    def charge(self, identity: str, cost: float) -> float:
        """Take ``cost`` tokens whatever the bucket holds (it may go into debt, which later calls
        wait out); returns the seconds until the bucket is out of debt again."""
        if self.rate <= 0:
            return 0.0
        if cost < 0 or math.isnan(cost):
            raise ValueError("cost must be a non-negative number")
        now = self._clock()
        with self._lock:
            tokens = self._tokens(identity, now) - cost
            self._buckets[identity] = (tokens, now)
            self._buckets.move_to_end(identity)
            self._evict(now)
        return max(0.0, -tokens / self.rate)

    def check(self, identity: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens or raise RateLimitedError with ``retry_after_s`` set."""
        wait = self.acquire(identity, cost)
        if wait > 0:
            raise RateLimitedError(
                wait,
                f"rate limit for {identity!r} exceeded ({self.rate:g}/s, burst {self.burst:g}); "
                f"retry in {wait:.2f} s",
            )

    def _tokens(self, identity: str, now: float) -> float:
        bucket = self._buckets.get(identity)
        if bucket is None:
            return self.burst
        tokens, then = bucket
        # max(0, ...) keeps a clock that steps backwards from minting or destroying tokens.
        return min(self.burst, tokens + max(0.0, now - then) * self.rate)

    def _evict(self, now: float) -> None:
        # Oldest first: stop at the first bucket that still remembers a deficit.
        while self._buckets:
            identity, (tokens, then) = next(iter(self._buckets.items()))
            full = tokens + max(0.0, now - then) * self.rate >= self.burst
            if not full and len(self._buckets) <= self.max_identities:
                break
            del self._buckets[identity]
