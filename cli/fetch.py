"""Stage 2 of the download engine (cli/download.py): fetching chunks with GetChunks.

A plan's fetch windows are streamed on a background thread, one GetChunks call per window, and
decoded (zstd + BLAKE3, spread over a small pool) into a bounded queue, so memory is bounded by
the queue and not by the file. The writer takes chunks by (window, digest). A chunk that fails its
check is an error of the files that use it; a call that fails as a whole (server error, chunks
missing) is :class:`CallFailed` for every chunk not yet arrived. Chunks that fail the check are
reported to the server when the fetch ends (ReportDamagedChunks), which verifies its copies again
and marks the damaged ones, so the next upload of that content repairs them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from cas import codec
from cas.errors import (
    CasError,
    ChunkTooLargeError,
    CorruptChunkError,
    DigestMismatchError,
    IntegrityError,
    MalformedFrameError,
)
from cli.plan import FetchWindow
from cli.remote import Remote
from cli.rpc_errors import map_rpc_error
from proto import stratus_pb2 as pb

QUEUE_ITEMS = 64  # decoded chunks waiting for the writer: <= 64 * max chunk size
POOL_DECODE_BYTES = 1024 * 1024  # batches from this size on are decoded on a small thread pool
_END = object()


def decode_chunk(digest: bytes, frame: bytes, max_size: int) -> bytes:
    """Decode a frame from the server and verify its digest; CorruptChunkError on any mismatch."""
    try:
        return codec.decode_verified(digest, frame, max_size)
    except DigestMismatchError as exc:
        raise CorruptChunkError(digest, f"received bytes hash to {exc.actual.hex()}") from None
    except (MalformedFrameError, ChunkTooLargeError) as exc:
        raise CorruptChunkError(digest, str(exc)) from None


def _decoded(digest: bytes, frame: bytes, max_size: int) -> bytes | CorruptChunkError:
    """The chunk's bytes, or the error that belongs to the file(s) using it, not to the whole call."""
    try:
        return decode_chunk(digest, frame, max_size)
    except CorruptChunkError as exc:
        return exc


def report_damaged(remote: Remote, digests: Sequence[bytes]) -> list[bytes]:
    """Tell the server which chunks it sent failed this client's check (ReportDamagedChunks).

    The server verifies its copies of them again and marks the damaged ones; returns the digests
    it marked (or had marked already), in the given order.
    """
    asked = list(digests)
    if not asked:
        return []
    reply = remote.call(remote.stub.ReportDamagedChunks, pb.ReportDamagedChunksRequest(digests=asked))
    return [d for d, bad in zip(asked, reply.damaged, strict=False) if bad]


class CallFailed(Exception):
    """A GetChunks call failed as a whole (server error, chunks missing): ``error`` says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Fetcher:
    """Streams the fetch windows of a plan on a background thread into a bounded queue.

    The writer takes chunks by (window, digest); chunks that arrive before they are needed wait
    in a small buffer, so the server may answer a window in any order.
    """

    def __init__(self, remote: Remote, windows: Iterator[FetchWindow]) -> None:
        self._remote = remote
        self._windows = windows
        self._max_size = remote.params.chunking.max_size
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._buffer: dict[tuple[int, bytes], list] = {}
        self._failed: BaseException | None = None
        self._corrupt: set[bytes] = set()  # chunks that failed the check, reported when the fetch ends
        self._thread = threading.Thread(target=self._run, name="stratus-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        workers = min(4, os.cpu_count() or 1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="stratus-decode") as pool:
                for window in self._windows:
                    self._fetch_window(window, pool)
            self._put(_END)
        except grpc.RpcError as err:
            if not self._stop.is_set():
                self._put(map_rpc_error(err, self._remote.target))
        except BaseException as exc:  # noqa: BLE001 - handed to the writer thread, which raises it
            self._put(exc)

    def _fetch_window(self, window: FetchWindow, pool: ThreadPoolExecutor) -> None:
        pending = dict(window.uses)
        call = self._remote.stub.GetChunks(pb.GetChunksRequest(digests=window.digests))
        self._call = call
        if self._stop.is_set():
            call.cancel()
            return
        for batch in call:
            # Each read of a bytes field copies it out of the message: read every field once.
            chunks = [(c.digest, c.frame) for c in batch.chunks]
            seen: set[bytes] = set()
            for d, _ in chunks:
                if d not in pending or d in seen:
                    raise IntegrityError(f"the server sent chunk {d.hex()}, which was not requested")
                seen.add(d)
            # Decoding (zstd + BLAKE3) releases the GIL: a big batch is spread over the pool; the
            # frames of small files are decoded right here, cheaper than a hand-off to other threads.
            big = sum(len(f) for _, f in chunks) >= POOL_DECODE_BYTES
            datas = (pool.map if big else map)(self._decode, chunks)
            for (d, frame), data in zip(chunks, datas, strict=True):
                self._put((window.index, d, data, pending.pop(d), len(frame)))
        if pending:
            first = next(iter(pending))
            raise IntegrityError(
                f"the server did not send {len(pending)} requested chunk(s), e.g. {first.hex()}"
            )

    def _decode(self, chunk: tuple[bytes, bytes]) -> bytes | CorruptChunkError:
        d, frame = chunk
        data = _decoded(d, frame, self._max_size)
        if isinstance(data, CorruptChunkError):
            self._corrupt.add(d)  # set.add: safe from the decoding threads
        return data

    def _report(self) -> None:
        """Best effort: the failure itself already went to the files that use the chunk."""
        if self._corrupt:
            with contextlib.suppress(CasError):
                report_damaged(self._remote, sorted(self._corrupt))

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self, window: int, digest: bytes) -> tuple[bytes, int]:
        """The bytes of ``digest`` from fetch window ``window`` (blocks until they arrive), and the frame
        bytes received for them (0 when an earlier step already took them).

        CorruptChunkError when that chunk was corrupt; CallFailed, now and for every chunk not yet
        arrived, when the call as a whole failed.
        """
        key = (window, digest)
        while key not in self._buffer:
            if self._failed is not None:
                raise CallFailed(self._failed)
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._failed = item
            elif item is _END:
                self._failed = IntegrityError(f"chunk {digest.hex()} never arrived from the server")
            else:
                w, d, data, uses, frame = item  # type: ignore[misc]
                self._buffer[(w, d)] = [data, uses, frame]
        entry = self._buffer[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del self._buffer[key]
        frame, entry[2] = entry[2], 0
        if isinstance(entry[0], BaseException):
            raise entry[0]
        return entry[0], frame

    def close(self) -> None:
        """Stop the background thread (cancelling an in-flight GetChunks), then report the chunks
        that failed the check to the server."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)
        self._report()


def fetch_one(remote: Remote, digest: bytes) -> bytes:
    """Fetch a single chunk synchronously (used when a local copy turned out to have changed)."""
    max_size = remote.params.chunking.max_size
    try:
        for batch in remote.stub.GetChunks(pb.GetChunksRequest(digests=[digest])):
            for c in batch.chunks:
                if c.digest == digest:
                    return decode_chunk(digest, c.frame, max_size)
    except grpc.RpcError as err:
        raise map_rpc_error(err, remote.target) from err
    raise IntegrityError(f"the server did not send chunk {digest.hex()}")
