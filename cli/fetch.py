"""Stage 2 of the download engine (cli/download.py): fetching chunks with GetChunks.

A plan's fetch windows are streamed on a background thread, one GetChunks call per window, and
decoded (zstd + BLAKE3, spread over a small pool) into a bounded queue, so memory is bounded by
the queue and not by the file. The writer takes chunks by (window, digest). A chunk that fails its
check is an error of the files that use it; a call that fails as a whole (server error, chunks
missing) is :class:`CallFailed` for every chunk not yet arrived. Chunks that fail the check are
reported to the server when the fetch ends (ReportDamagedChunks), which verifies its copies again
and marks the damaged ones, so the next upload of that content repairs them.

Delta downloads: a window proposes, for some digests, chunks of the old local copy as delta bases
(cli/plan.py); the server may answer such a digest with a delta frame against them (ChunkData.base
names the first). The bases' bytes are read from the old copy and each is checked against its
digest before use; when one no longer matches (the old copy changed) the chunk is fetched again as
a plain frame. A delta frame naming another base than the first proposed, or one that does not
decode to the digest, is a corrupt chunk like any other.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc

from cas import codec, delta
from cas.errors import (
    CasError,
    ChunkTooLargeError,
    CorruptChunkError,
    DigestMismatchError,
    IntegrityError,
    MalformedFrameError,
)
from cli.plan import BaseRef, FetchWindow
from cli.remote import Remote
from cli.rpc_errors import map_rpc_error
from proto import stratus_pb2 as pb

QUEUE_ITEMS = 64  # decoded chunks waiting for the writer: <= 64 * max chunk size
POOL_DECODE_BYTES = 1024 * 1024  # batches from this size on are decoded on a small thread pool
_END = object()
Proposals = dict[bytes, tuple[int, tuple[BaseRef, ...]]]  # digest -> (file number, proposed bases)
BaseReader = Callable[[int, BaseRef], "bytes | None"]  # (file number, base) -> its verified bytes, or None


class _Stale:
    """What the decoder hands over for a delta frame whose local base changed: fetch it plain."""


_STALE = _Stale()


def decode_chunk(digest: bytes, frame: bytes, max_size: int, base: bytes | None = None) -> bytes:
    """Decode a frame from the server (a delta frame against ``base`` when given) and verify its
    digest; CorruptChunkError on any mismatch."""
    try:
        if base is not None:
            return delta.decode_verified(digest, frame, base, max_size)
        return codec.decode_verified(digest, frame, max_size)
    except DigestMismatchError as exc:
        raise CorruptChunkError(digest, f"received bytes hash to {exc.actual.hex()}") from None
    except (MalformedFrameError, ChunkTooLargeError) as exc:
        raise CorruptChunkError(digest, str(exc)) from None


def _decoded(digest: bytes, frame: bytes, max_size: int, base: bytes | None = None) -> bytes | CorruptChunkError:
    """The chunk's bytes, or the error that belongs to the file(s) using it, not to the whole call."""
    try:
        return decode_chunk(digest, frame, max_size, base)
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
    in a small buffer, so the server may answer a window in any order. ``read_base`` reads the
    delta bases the windows propose (none are proposed without it).
    """

    def __init__(self, remote: Remote, windows: Iterator[FetchWindow], read_base: BaseReader | None = None) -> None:
        self._remote = remote
        self._windows = windows
        self._read_base = read_base
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
        bases = window.bases if self._read_base is not None else {}
        proposals = [pb.DeltaBase(digest=d, base=ref.digest) for d, (_, refs) in bases.items() for ref in refs]
        call = self._remote.stub.GetChunks(pb.GetChunksRequest(digests=window.digests, bases=proposals))
        self._call = call
        if self._stop.is_set():
            call.cancel()
            return
        for batch in call:
            # Each read of a bytes field copies it out of the message: read every field once.
            chunks = [(c.digest, c.frame, c.base) for c in batch.chunks]
            seen: set[bytes] = set()
            for d, _, _ in chunks:
                if d not in pending or d in seen:
                    raise IntegrityError(f"the server sent chunk {d.hex()}, which was not requested")
                seen.add(d)
            # Decoding (zstd + BLAKE3) releases the GIL: a big batch is spread over the pool; the
            # frames of small files are decoded right here, cheaper than a hand-off to other threads.
            big = sum(len(f) for _, f, _ in chunks) >= POOL_DECODE_BYTES
            datas = (pool.map if big else map)(partial(self._decode, bases), chunks)
            for (d, frame, base), data in zip(chunks, datas, strict=True):
                self._put((window.index, d, data, pending.pop(d), len(frame), bool(base)))
        if pending:
            first = next(iter(pending))
            raise IntegrityError(
                f"the server did not send {len(pending)} requested chunk(s), e.g. {first.hex()}"
            )

    def _decode(self, bases: Proposals, chunk: tuple[bytes, bytes, bytes]) -> bytes | CorruptChunkError | _Stale:
        d, frame, base_digest = chunk
        base = None
        if base_digest:
            proposed = bases.get(d)
            if proposed is None or proposed[1][0].digest != base_digest:
                return CorruptChunkError(d, "a delta frame against a base this client did not propose")
            assert self._read_base is not None
            number, refs = proposed
            parts = [self._read_base(number, ref) for ref in refs]
            if any(part is None for part in parts):
                return _STALE
            base = b"".join(parts)  # type: ignore[arg-type]
        data = _decoded(d, frame, self._max_size, base)
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

    def take(self, window: int, digest: bytes) -> tuple[bytes, int, bool]:
        """The bytes of ``digest`` from fetch window ``window`` (blocks until they arrive), the frame
        bytes received for them (0 when an earlier step already took them) and whether they came as
        a delta frame. A delta whose local base changed is fetched again, plain, here.

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
                w, d, data, uses, frame, was_delta = item  # type: ignore[misc]
                self._buffer[(w, d)] = [data, uses, frame, was_delta]
        entry = self._buffer[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del self._buffer[key]
        frame, entry[2] = entry[2], 0
        if isinstance(entry[0], BaseException):
            raise entry[0]
        if entry[0] is _STALE:
            entry[0], plain = fetch_plain(self._remote, digest)
            entry[3], frame = False, frame + plain
        return entry[0], frame, entry[3]

    def close(self) -> None:
        """Stop the background thread (cancelling an in-flight GetChunks), then report the chunks
        that failed the check to the server."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)
        self._report()


def fetch_plain(remote: Remote, digest: bytes) -> tuple[bytes, int]:
    """Fetch a single chunk synchronously, as a plain frame: its bytes and the frame's size."""
    max_size = remote.params.chunking.max_size
    try:
        for batch in remote.stub.GetChunks(pb.GetChunksRequest(digests=[digest])):
            for c in batch.chunks:
                if c.digest == digest:
                    if c.base:
                        raise CorruptChunkError(digest, "a delta frame where none was asked for")
                    return decode_chunk(digest, c.frame, max_size), len(c.frame)
    except grpc.RpcError as err:
        raise map_rpc_error(err, remote.target) from err
    raise IntegrityError(f"the server did not send chunk {digest.hex()}")


def fetch_one(remote: Remote, digest: bytes) -> bytes:
    """Fetch a single chunk synchronously (used when a local copy turned out to have changed)."""
    return fetch_plain(remote, digest)[0]
