"""Chunk -> hash -> compress over a thread pool, in order, with bounded memory.

Chunking runs in the calling thread (it is sequential by nature and cheap); hashing and zstd run
in worker threads, which is real parallelism because blake3, zstandard and pyfastcdc release the
GIL. Chunks travel in batches of about ``batch_bytes`` so that per-task overhead stays small, and
no more than ``max_in_flight_bytes`` of chunk data is submitted but not yet handed back, so memory
stays constant whatever the size of the stream.

When the pool already has a backlog, the calling thread encodes the next batch itself instead of
queueing it ("caller runs"). With ``cpu_count - 1`` workers that keeps every core busy without
running more compute threads than cores: on a 2-core machine this measured 10-15% faster than
two workers plus a chunking thread, which lost the difference to context switches.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, TypeVar

import blake3

from cas import codec
from cas.chunker import Chunk, ChunkParams, chunk_stream
from cas.digest import digest

_In = TypeVar("_In")
_Out = TypeVar("_Out")

DEFAULT_MAX_IN_FLIGHT = 32 * 1024 * 1024
DEFAULT_BATCH_BYTES = 1024 * 1024
# Batches queued but not started beyond which the calling thread runs the next batch itself.
_BACKLOG = 2


@dataclass(slots=True)
class HashedChunk:
    """A chunk with its BLAKE3 digest and its (uncompressed) bytes."""

    offset: int
    length: int
    digest: bytes
    data: bytes


@dataclass(slots=True)
class EncodedChunk:
    """A chunk with its BLAKE3 digest and its frame (see :mod:`cas.codec`)."""

    offset: int
    length: int
    digest: bytes
    frame: bytes


class Pipeline:
    """Parallel, order-preserving chunk/hash/encode of streams.

    ``workers`` is the number of pool threads (default ``cpu_count - 1``, at least 1); the calling
    thread works too. One pipeline owns one pool: reuse it for many streams and :meth:`close` it at
    the end (or use it as a context manager). Iterations may overlap (``encode(hash_stream(f))``
    is fine); they share the workers, and each holds up to ``max_in_flight_bytes``.
    """

    def __init__(
        self,
        params: ChunkParams = ChunkParams(),
        level: int = 3,
        workers: int | None = None,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_in_flight_bytes < 1:
            raise ValueError(f"max_in_flight_bytes must be >= 1, got {max_in_flight_bytes}")
        self.params = params
        self.level = level
        self.workers = workers or max(1, (os.cpu_count() or 1) - 1)
        self.max_in_flight_bytes = max_in_flight_bytes
        # Small enough that every worker has several batches queued, big enough to amortise a task.
        self.batch_bytes = max(1, min(DEFAULT_BATCH_BYTES, max_in_flight_bytes // (4 * self.workers)))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cas-pipeline")

    def hash_stream(self, stream: BinaryIO, file_hasher: blake3.blake3 | None = None) -> Iterator[HashedChunk]:
        """Chunk ``stream`` here (feeding ``file_hasher`` if given), hash in the pool, yield in order."""
        return self._ordered(_hash_batch, self._chunks(stream, file_hasher))

    def encode(self, chunks: Iterable[HashedChunk]) -> Iterator[EncodedChunk]:
        """Compress already-hashed chunks in the pool; yield them in input order."""
        level = self.level

        def encode_batch(batch: list[HashedChunk]) -> list[EncodedChunk]:
            return [EncodedChunk(h.offset, h.length, h.digest, codec.encode(h.data, level)) for h in batch]

        return self._ordered(encode_batch, chunks)

    def process_stream(self, stream: BinaryIO, file_hasher: blake3.blake3 | None = None) -> Iterator[EncodedChunk]:
        """Chunk, hash and encode ``stream``; yield the encoded chunks in stream order."""
        level = self.level

        # Hash and compress in one task: one hand-off per batch instead of two.
        def process_batch(batch: list[Chunk]) -> list[EncodedChunk]:
            return [EncodedChunk(c.offset, c.length, digest(c.data), codec.encode(c.data, level)) for c in batch]

        return self._ordered(process_batch, self._chunks(stream, file_hasher))

    def close(self) -> None:
        """Stop the worker threads (pending work is cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _chunks(self, stream: BinaryIO, file_hasher: blake3.blake3 | None) -> Iterator[Chunk]:
        for chunk in chunk_stream(stream, self.params):
            if file_hasher is not None:
                file_hasher.update(chunk.data)
            yield chunk

    def _ordered(self, fn: Callable[[list[_In]], list[_Out]], items: Iterable[_In]) -> Iterator[_Out]:
        """Apply ``fn`` to batches of ``items`` in the pool; yield the results in input order.

        Every item must have a ``length`` (its share of the in-flight budget).
        """
        pending: deque[tuple[Future[list[_Out]], int]] = deque()
        queued: deque[Future[list[_Out]]] = deque()
        in_flight = 0
        limit = self.max_in_flight_bytes
        batch: list[_In] = []
        batch_size = 0
        try:
            for item in items:
                batch.append(item)
                batch_size += item.length  # type: ignore[attr-defined]
                if batch_size < self.batch_bytes:
                    continue
                # Hand back finished work first, and wait for the oldest batch when over budget.
                while pending and (in_flight + batch_size > limit or pending[0][0].done()):
                    future, size = pending.popleft()
                    in_flight -= size
                    yield from future.result()
                pending.append((self._start(fn, batch, queued), batch_size))
                in_flight += batch_size
                batch, batch_size = [], 0
            if batch:
                pending.append((self._start(fn, batch, queued), batch_size))
                batch = []
            while pending:
                future, _ = pending.popleft()
                yield from future.result()
        finally:
            for future, _ in pending:
                future.cancel()

    def _start(
        self,
        fn: Callable[[list[_In]], list[_Out]],
        batch: list[_In],
        queued: deque[Future[list[_Out]]],
    ) -> Future[list[_Out]]:
        """Submit ``batch`` to the pool, or run it here when the pool is behind anyway.

        ``queued`` holds the pool futures that may not have started yet, oldest first.
        """
        # The pool is FIFO: once the oldest queued future has started, it is no longer backlog.
        while queued and (queued[0].running() or queued[0].done()):
            queued.popleft()
        if len(queued) < _BACKLOG:
            future = self._pool.submit(fn, batch)
            queued.append(future)
            return future
        future = Future()
        try:
            future.set_result(fn(batch))
        except Exception as exc:
            # Raised when this batch's turn comes, after the results of the batches before it.
            future.set_exception(exc)
        return future


def _hash_batch(batch: list[Chunk]) -> list[HashedChunk]:
    return [HashedChunk(c.offset, c.length, digest(c.data), c.data) for c in batch]
