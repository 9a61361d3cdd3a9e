"""Per-identity admission: how many streams and how many bytes one caller may hold at once,
and how much parsing one PutChunks message may cost (its chunks, and the base hints of each).

A :class:`StreamLimits` hands out stream slots of one kind (uploads or downloads). Each slot
counts against a server-wide total and against the caller's own limit, so one identity can use
at most its share and never the whole server. A :class:`ByteBudget` bounds the upload bytes one
identity has received but not yet written to disk.

Invariants:

- A call never waits forever: when no slot (or no budget) frees up within the wait it was
  given, it fails with :class:`RateLimitedError` (RESOURCE_EXHAUSTED plus ``retry_after_ms`` in the ErrorDetail
  trailer) whose message names the setting that refused it.
- Whatever a call took is given back when it ends, however it ends (finished, failed,
  cancelled, timed out): both are async context managers.
- Memory is bounded by the number of identities with a call in flight: an identity whose count
  drops to zero is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from cas.errors import RateLimitedError
from proto import stratus_pb2 as pb


class _Counter:
    """Units held, and the waiters to wake when some are given back. Synchronous to update, so a
    release in a cancelled call's ``finally`` can never be interrupted half-way."""

    def __init__(self) -> None:
        self.held = 0
        self.charging = 0
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``ready()`` holds, at most ``timeout`` seconds; returns whether it does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = loop.create_future()
            self.waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)
        return True


class StreamLimits:
    """Concurrent streams of one kind: at most ``total`` in all, ``per_identity`` per caller."""

    def __init__(self, kind: str, total: int, per_identity: int, wait_s: float, *,
                 total_setting: str, identity_setting: str) -> None:
        self.kind = kind
        self.total = total
        self.per_identity = per_identity
        self.wait_s = wait_s
        self._settings = (total_setting, identity_setting)
        self._all = _Counter()
        self._mine: dict[str, _Counter] = {}

    def held(self, identity: str | None = None) -> int:
        """Slots held by ``identity`` (by everybody when None)."""
        if identity is None:
            return self._all.held
        counter = self._mine.get(identity)
        return counter.held if counter else 0

    @contextlib.asynccontextmanager
    async def slot(self, identity: str) -> AsyncIterator[None]:
        """Hold one stream slot for ``identity`` for the duration of the block."""
        mine = self._mine.setdefault(identity, _Counter())
        mine.held += 1  # reserved while waiting, so the identity's entry outlives the wait
        try:
            if not await mine.wait_until(lambda: mine.held <= self.per_identity, self.wait_s):
                raise self._refusal(identity, per_identity=True)
            if not await self._all.wait_until(lambda: self._all.held < self.total, self.wait_s):
                raise self._refusal(identity, per_identity=False)
        except BaseException:
            self._release(mine, identity)
            raise
        self._all.held += 1
        try:
            yield
        finally:
            self._all.held -= 1
            self._all.wake()
            self._release(mine, identity)

    def _refusal(self, identity: str, *, per_identity: bool) -> RateLimitedError:
        setting = self._settings[1] if per_identity else self._settings[0]
        limit = self.per_identity if per_identity else self.total
        whose = f"for identity {identity!r}" if per_identity else "on this server"
        retry = max(self.wait_s, 1.0)
        return RateLimitedError(
            retry, f"too many concurrent {self.kind} {whose} (limit {limit}, setting {setting}); retry in {retry:.2f} s"
        )

    def _release(self, mine: _Counter, identity: str) -> None:
        mine.held -= 1
        if mine.held == 0 and not mine.waiters and self._mine.get(identity) is mine:
            del self._mine[identity]
        mine.wake()


class ByteBudget:
    """Bytes one identity may have in flight; a charge waits until enough is given back.

    A single charge larger than the budget is admitted when the identity has nothing else in
    flight, so every message the server accepts at all can eventually be taken.
    """

    def __init__(self, per_identity: int, *, setting: str) -> None:
        self.per_identity = per_identity
        self.setting = setting
        self._mine: dict[str, _Counter] = {}

    def held(self, identity: str) -> int:
        """Bytes ``identity`` has in flight."""
        counter = self._mine.get(identity)
        return counter.held if counter else 0

    async def charge(self, identity: str, nbytes: int, wait_s: float) -> None:
        """Take ``nbytes`` for ``identity``, waiting up to ``wait_s``; give them back with :meth:`refund`."""
        mine = self._mine.setdefault(identity, _Counter())
        mine.charging += 1  # keeps the entry while this call waits (see _forget)
        try:
            fits = await mine.wait_until(lambda: mine.held == 0 or mine.held + nbytes <= self.per_identity, wait_s)
        finally:
            mine.charging -= 1
        if not fits:
            self._forget(identity, mine)
            raise RateLimitedError(
                wait_s,
                f"identity {identity!r} has {mine.held} upload bytes in flight (limit {self.per_identity}, "
                f"setting {self.setting}); retry in {wait_s:.2f} s",
            )
        mine.held += nbytes

    def refund(self, identity: str, nbytes: int) -> None:
        """Give back bytes taken with :meth:`charge` (synchronous: safe in any ``finally``)."""
        mine = self._mine.get(identity)
        if mine is None:
            return
        mine.held -= nbytes
        mine.wake()
        self._forget(identity, mine)

    def _forget(self, identity: str, mine: _Counter) -> None:
        if mine.held <= 0 and not mine.charging and self._mine.get(identity) is mine:
            del self._mine[identity]


# ---- bounded parsing of PutChunks messages ------------------------------------------------------

_SKIP = {1: 8, 5: 4}  # fixed-size wire types
_CHUNK_TAG = (1 << 3) | 2  # ChunkBatch.chunks
_HINT_TAG = (3 << 3) | 2  # ChunkData.base_hints
MAX_HINTS_PER_CHUNK = 3


@dataclass(frozen=True)
class OversizeBatch:
    """A PutChunks message refused by the wire scan, never parsed: more chunks than one message
    may hold (or a structure the scan cannot follow, which no client sends), or, when ``hints`` is
    set, a chunk with more than :data:`MAX_HINTS_PER_CHUNK` base hints."""

    counted: int  # the chunks counted before giving up: limit + 1 (all of them for too many hints)
    nbytes: int  # the size of the message on the wire
    hints: int = 0  # the base hints of the chunk that has too many (0: too many chunks)


def chunk_batch_reader(max_chunks: int) -> Callable[[bytes], pb.ChunkBatch | OversizeBatch]:
    """The PutChunks request deserializer: counts the fields on the wire (at most ``max_chunks``
    + 1 steps, plus the fields inside each chunk) before parsing, so a message of 100,000 tiny
    chunks, or of one chunk with a million hints, costs the server a bounded scan instead of as
    many objects."""

    def read(raw: bytes) -> pb.ChunkBatch | OversizeBatch:
        counted = _count_fields(raw, max_chunks)
        if counted > max_chunks:
            return OversizeBatch(max_chunks + 1, len(raw))
        hints = _most_hints(raw)
        if hints > MAX_HINTS_PER_CHUNK:
            return OversizeBatch(counted, len(raw), hints)
        return pb.ChunkBatch.FromString(raw)

    return read


def _fields(raw: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int] | None]:
    """(tag, value start, value end) of each field serialized in ``raw[pos:end]``; None for a
    structure the scan cannot follow (groups, reserved wire types), after which it stops. It also
    stops at a truncated field: a malformed message is left to the real parser to refuse."""
    while pos < end:
        tag, pos = _varint(raw, pos)
        if pos < 0:
            return
        kind = tag & 7
        start = pos
        if kind == 0:
            _, pos = _varint(raw, pos)
        elif kind == 2:
            length, start = _varint(raw, pos)
            pos = start + length if start >= 0 else start
        elif kind in _SKIP:
            pos += _SKIP[kind]
        else:
            yield None
            return
        if pos < 0 or start < 0:
            return
        yield tag, start, pos


def _count_fields(raw: bytes, limit: int) -> int:
    """Top-level fields of a serialized message (chunks and any unknown ones alike); counting
    stops past ``limit``, and a structure the scan cannot follow counts as past it."""
    count = 0
    for found in _fields(raw, 0, len(raw)):
        if found is None:
            return limit + 1
        count += 1
        if count > limit:
            break
    return count


def _most_hints(raw: bytes) -> int:
    """The most base hints one chunk of a serialized ChunkBatch carries; counting stops at the
    first hint past :data:`MAX_HINTS_PER_CHUNK`."""
    most = 0
    for found in _fields(raw, 0, len(raw)):
        if found is None or found[0] != _CHUNK_TAG:
            continue
        _, start, stop = found
        hints = 0
        for field in _fields(raw, start, min(stop, len(raw))):
            hints += field is not None and field[0] == _HINT_TAG
            if hints > MAX_HINTS_PER_CHUNK:
                return hints
        most = max(most, hints)
    return most


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return 0, -1
