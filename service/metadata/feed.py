"""Live change feed: one XREAD BLOCK loop per namespace, fanned out to every watcher.

A watcher that ran its own blocking XREAD would hold a pooled Redis connection for as long as it
watches; with thousands of idle watchers that exhausts the pool (redis-py's async pool raises
MaxConnectionsError past 100 by default) and starves every other request. Here each namespace
with at least one watcher has one reader task on one connection, and watchers wait on queues.

A watcher joins in a way that can neither miss nor repeat an event: it registers its queue
first, then reads the stream from its cursor with XRANGE; everything written after that read is
delivered through the queue, and queue entries at or before the cursor are dropped. A watcher
too slow to drain its queue is dropped by the reader and simply joins again from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

Entry = tuple[bytes, dict[bytes, bytes]]


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id as a comparable (ms, seq) pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def xread_entries(reply: object) -> list[Entry]:
    """The entries of a one-stream XREAD reply, whatever shape the client's protocol gives it."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]  # type: ignore[union-attr]
    entries = streams[0]
    # RESP3 replies of redis-py wrap each stream's entries in one more list
    if entries and isinstance(entries[0], list):
        entries = entries[0]
    return entries


class _Subscriber:
    def __init__(self, max_batches: int) -> None:
        self.queue: asyncio.Queue[list[Entry] | BaseException] = asyncio.Queue(max_batches)
        self.dropped = False


class _Reader:
    """The XREAD loop of one stream key; ``ready`` resolves once its start position is fixed."""

    def __init__(
        self, redis: aioredis.Redis, key: bytes, block_ms: int, on_exit: Callable[[_Reader], None]
    ) -> None:
        self.subscribers: set[_Subscriber] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._redis = redis
        self._key = key
        self._block_ms = block_ms
        self._on_exit = on_exit
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            last = await self._redis.xrevrange(self._key, max="+", min="-", count=1)
            position = last[0][0] if last else b"0-0"
            self.ready.set_result(None)
            while True:
                reply = await self._redis.xread({self._key: position}, count=512, block=self._block_ms)
                entries = xread_entries(reply)
                if not entries:
                    continue
                position = entries[-1][0]
                # no await from here to the end of the loop body: a watcher registering now
                # either gets this batch or finds it in the stream with its own XRANGE
                for sub in list(self.subscribers):
                    try:
                        sub.queue.put_nowait(entries)
                    except asyncio.QueueFull:
                        sub.dropped = True
                        self.subscribers.discard(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to every watcher, which re-raises it
            if not self.ready.done():
                self.ready.set_exception(exc)
            for sub in list(self.subscribers):
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(exc)
            self.subscribers.clear()
        finally:
            if not self.ready.done():
                self.ready.cancel()
            self._on_exit(self)


class ChangeFeed:
    """Shared readers of the namespaces' event streams (one per stream key with watchers)."""

    def __init__(self, redis: aioredis.Redis, max_batches: int = 256) -> None:
        self._redis = redis
        self.max_batches = max_batches
        self._readers: dict[bytes, _Reader] = {}
        # bounds the catch-up reads of watchers joining at once (say, all reconnecting after a
        # restart) well below the client's connection pool size
        self._reads = asyncio.Semaphore(16)

    async def _join(self, key: bytes, block_ms: int) -> _Subscriber:
        sub = _Subscriber(self.max_batches)
        reader = self._readers.get(key)
        if reader is None or reader.task.done():
            reader = _Reader(self._redis, key, block_ms, functools.partial(self._forget, key))
            self._readers[key] = reader
        reader.subscribers.add(sub)
        try:
            # the reader's start position must be fixed before our catch-up read, or an event
            # written in between could fall in neither
            await asyncio.shield(reader.ready)
        except BaseException:
            self._leave(key, sub)
            raise
        return sub

    def _leave(self, key: bytes, sub: _Subscriber) -> None:
        reader = self._readers.get(key)
        if reader is None or sub not in reader.subscribers:
            return
        reader.subscribers.discard(sub)
        if not reader.subscribers:
            reader.task.cancel()
            del self._readers[key]

    def _forget(self, key: bytes, reader: _Reader) -> None:
        if self._readers.get(key) is reader:
            del self._readers[key]

    async def entries(self, key: bytes, cursor: str, block_ms: int) -> AsyncIterator[Entry]:
        """Every entry of stream ``key`` after ``cursor`` ("" = after the current end), forever."""
        sub = await self._join(key, block_ms)
        try:
            if cursor == "":
                async with self._reads:
                    last = await self._redis.xrevrange(key, max="+", min="-", count=1)
                cursor = last[0][0].decode() if last else "0-0"
            while True:
                while True:  # catch up from the stream itself
                    async with self._reads:
                        page = await self._redis.xrange(key, min="(" + cursor, max="+", count=512)
                    for entry in page:
                        cursor = entry[0].decode()
                        yield entry
                    if len(page) < 512:
                        break
                seen = id_key(cursor)
                while not (sub.dropped and sub.queue.empty()):
                    batch = await sub.queue.get()
                    if isinstance(batch, BaseException):
                        raise batch
                    for entry in batch:
                        if id_key(entry[0]) > seen:
                            seen = id_key(entry[0])
                            cursor = entry[0].decode()
                            yield entry
                # dropped for falling behind: join again and catch up from the cursor
                self._leave(key, sub)
                sub = await self._join(key, block_ms)
        finally:
            self._leave(key, sub)
