"""Pipelined delta upload: hash everything, send only what the server lacks, then commit.

Three stages run at once, so memory stays constant whatever the file size:

1. this thread reads and chunks the source (hashing in a pool, feeding the whole-file BLAKE3),
   groups chunks into windows and asks FindMissingChunks once per window;
2. the missing chunks of each window go into a small bounded queue;
3. gRPC's request thread drains that queue through a compression pool and streams ChunkBatch
   messages of about ``batch_bytes`` on ONE PutChunks call, opened only when the first missing
   chunk appears (an unchanged file sends no chunk bytes at all).

Then CommitFile. If the server reports missing chunks at commit (a garbage collection raced the
upload), they are read again from the source, sent, and the commit is retried once.

With a manifest cache (:mod:`cli.manifestdelta`) holding the head's manifest, chunks of that
manifest are not asked about and the commit is sent as a delta against it; if the server refuses
the base, the full manifest is sent once instead.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import grpc

from cas.digest import digest as blake3_digest
from cas.digest import new_hasher
from cas.errors import CasError, InvalidInputError, MissingChunksError
from cas.manifest import Manifest, ManifestBuilder
from cas.paths import normalize_path
from cas.pipeline import HashedChunk, Pipeline
from cli.manifestdelta import BaseLookup, ManifestCache, commit_file, delta_request
from cli.remote import ProgressFn, Remote, TransferParams
from cli.rpc_errors import map_rpc_error
from proto import stratus_pb2 as pb

WINDOW_BYTES = 8 * 1024 * 1024
WINDOW_CHUNKS = 1024
PIPELINE_IN_FLIGHT = 8 * 1024 * 1024
FIND_BATCH = 4096  # digests per FindMissingChunks call when re-checking a whole manifest
_CHUNK_OVERHEAD = 48  # protobuf bytes around one frame in a ChunkBatch
_MANIFEST_ENTRY_BYTES = 40  # upper bound of one ChunkRef in a serialised CommitFileRequest
_END = object()


@dataclass
class PutResult:
    """What an upload did."""

    version: pb.VersionInfo
    unchanged: bool  # the content equalled the head: no new version was written
    bytes_read: int
    chunks_total: int
    chunks_sent: int
    bytes_sent: int  # frame bytes sent on the wire
    seconds: float
    digests_checked: int = 0  # digests asked about with FindMissingChunks
    manifest_delta: bool = False  # committed as a delta against the head's manifest


@dataclass
class Source:
    """Where the bytes come from, and how to read them again for the missing-chunks retry."""

    stream: BinaryIO
    size: int | None = None
    reopen: Callable[[], BinaryIO] | None = None  # None: the source cannot be read twice


class _Progress:
    """Serialises progress callbacks from the reading thread and gRPC's sending thread."""

    def __init__(self, fn: ProgressFn | None, total: int | None) -> None:
        self._fn = fn
        self._total = total
        self._done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self._fn is None or not n:
            return
        with self._lock:
            self._done += n
            self._fn(self._done, self._total)


class _Sender:
    """One PutChunks call fed from a bounded queue of windows, opened lazily."""

    def __init__(self, remote: Remote, params: TransferParams, progress: _Progress) -> None:
        self._remote = remote
        self._params = params
        self._progress = progress
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._aborted = threading.Event()
        self._future: grpc.Future | None = None
        self._pipe: Pipeline | None = None
        self._error: BaseException | None = None
        self.chunks_sent = 0
        self.bytes_sent = 0

    def submit(self, missing: list[HashedChunk]) -> None:
        """Queue a window's missing chunks (blocks while the queue is full: that bounds memory)."""
        if not missing:
            return
        if self._future is None:
            self._pipe = Pipeline(
                self._params.chunking, self._params.compression_level, max_in_flight_bytes=PIPELINE_IN_FLIGHT
            )
            self._future = self._remote.stub.PutChunks.future(self._requests())
        self._put(missing)

    def _put(self, item: object) -> None:
        assert self._future is not None
        while True:
            if self._future.done():
                self._raise_failure()
                raise CasError("the chunk upload stream ended early")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _chunks(self) -> Iterator[HashedChunk]:
        # Runs on gRPC's request thread; polls so that it ends when the call or the upload dies.
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._aborted.is_set() or (self._future is not None and self._future.done()):
                    return
                continue
            if item is _END:
                return
            # Popping hands each chunk's bytes over to the encoder: the window list keeps none alive.
            item.reverse()
            while item:
                yield item.pop()

    def _requests(self) -> Iterator[pb.ChunkBatch]:
        assert self._pipe is not None
        limit = self._params.batch_bytes
        batch: list[pb.ChunkData] = []
        batch_bytes = frame_bytes = raw_bytes = 0
        try:
            for enc in self._pipe.encode(self._chunks()):
                size = len(enc.frame) + _CHUNK_OVERHEAD
                if batch and batch_bytes + size > limit:
                    yield pb.ChunkBatch(chunks=batch)
                    self._account(len(batch), frame_bytes, raw_bytes)
                    batch, batch_bytes, frame_bytes, raw_bytes = [], 0, 0, 0
                batch.append(pb.ChunkData(digest=enc.digest, frame=enc.frame))
                batch_bytes += size
                frame_bytes += len(enc.frame)
                raw_bytes += enc.length
            if batch and not self._aborted.is_set():
                yield pb.ChunkBatch(chunks=batch)
                self._account(len(batch), frame_bytes, raw_bytes)
        except Exception as exc:  # noqa: BLE001 - raised again on the reading thread by finish()
            # Raising here would make gRPC log a traceback; end the stream and report it instead.
            self._error = exc
            self._aborted.set()

    def _account(self, chunks: int, frame_bytes: int, raw_bytes: int) -> None:
        self.chunks_sent += chunks
        self.bytes_sent += frame_bytes
        self._progress.add(raw_bytes)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
        assert self._future is not None
        try:
            self._future.result()
        except grpc.RpcError as err:
            raise map_rpc_error(err, self._remote.target) from err

    def finish(self) -> pb.PutChunksResponse | None:
        """Close the stream and wait for the server's answer (None if nothing was ever sent)."""
        if self._future is None:
            return None
        self._put(_END)
        try:
            response = self._future.result()
        except grpc.RpcError as err:
            if self._error is not None:
                raise self._error from err
            raise map_rpc_error(err, self._remote.target) from err
        finally:
            self._close_pipe()
        if self._error is not None:
            raise self._error
        return response

    def abort(self) -> None:
        """Cancel the call after a failure on the reading side."""
        self._aborted.set()
        if self._future is not None:
            self._future.cancel()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


def _find_missing(remote: Remote, digests: list[bytes]) -> set[bytes]:
    if not digests:
        return set()
    resp = remote.call(remote.stub.FindMissingChunks, pb.FindMissingChunksRequest(digests=digests))
    return set(resp.missing)


def _check_limits(params: TransferParams, count: int) -> None:
    if params.max_manifest_chunks and count > params.max_manifest_chunks:
        raise InvalidInputError(
            f"the file has more than {params.max_manifest_chunks} chunks, the server's limit"
        )
    if params.max_message_bytes and count * _MANIFEST_ENTRY_BYTES + 65536 > params.max_message_bytes:
        raise InvalidInputError(
            f"the file's manifest ({count} chunks) would exceed the server's message limit of "
            f"{params.max_message_bytes} bytes"
        )


def _send_stream(
    remote: Remote, stream: BinaryIO, hasher: object, progress: _Progress, base: BaseLookup
) -> tuple[ManifestBuilder, int, int, _Sender, int]:
    """Stages 1-3 over one stream; returns the manifest builder, bytes read, chunk count, sender
    and how many digests were asked about."""
    params = remote.params
    builder = ManifestBuilder()
    sender = _Sender(remote, params, progress)
    queued: set[bytes] = set()  # digests already sent (or queued) by this upload
    window: list[HashedChunk] = []
    window_bytes = bytes_read = count = 0
    asked = [0]

    def flush() -> None:
        # The base manifest's chunks are committed content of the namespace: no need to ask.
        known = base.digests
        ask = list(dict.fromkeys(c.digest for c in window if c.digest not in queued and c.digest not in known))
        asked[0] += len(ask)
        missing = _find_missing(remote, ask)
        to_send = []
        for c in window:
            if c.digest in missing and c.digest not in queued:
                queued.add(c.digest)
                to_send.append(c)
            else:
                progress.add(c.length)
        sender.submit(to_send)

    try:
        pipe = Pipeline(params.chunking, params.compression_level, max_in_flight_bytes=PIPELINE_IN_FLIGHT)
        with pipe:
            for chunk in pipe.hash_stream(stream, hasher):  # type: ignore[arg-type]
                builder.add(chunk.digest, chunk.length)
                count += 1
                bytes_read += chunk.length
                window.append(chunk)
                window_bytes += chunk.length
                if window_bytes >= WINDOW_BYTES or len(window) >= WINDOW_CHUNKS:
                    _check_limits(params, count)
                    flush()
                    window, window_bytes = [], 0
            _check_limits(params, count)
            if window:
                flush()
                window = []
        sender.finish()
    except BaseException:
        sender.abort()
        raise
    return builder, bytes_read, count, sender, asked[0]


def _resend_missing(remote: Remote, source: Source, manifest: Manifest, progress: _Progress) -> _Sender:
    """Send again the manifest's chunks that the server lacks now, read back from the source."""
    assert source.reopen is not None
    digests = manifest.unique_digests()
    missing: set[bytes] = set()
    for start in range(0, len(digests), FIND_BATCH):
        missing |= _find_missing(remote, digests[start : start + FIND_BATCH])
    sender = _Sender(remote, remote.params, progress)
    stream = source.reopen()
    try:
        position = 0
        batch: list[HashedChunk] = []
        batch_bytes = 0
        for offset, ref in zip(manifest.offsets(), manifest.chunks, strict=True):
            if ref.digest not in missing:
                continue
            missing.discard(ref.digest)
            if offset != position:
                # Relative: a rewound stream may not start at offset 0 of its file.
                stream.seek(offset - position, os.SEEK_CUR)
            data = stream.read(ref.length)
            position = offset + len(data)
            if len(data) != ref.length or blake3_digest(data) != ref.digest:
                raise CasError("the source changed during the upload; run the upload again")
            batch.append(HashedChunk(offset, ref.length, ref.digest, data))
            batch_bytes += ref.length
            if batch_bytes >= WINDOW_BYTES:
                sender.submit(batch)
                batch, batch_bytes = [], 0
        sender.submit(batch)
        sender.finish()
    except BaseException:
        sender.abort()
        raise
    finally:
        if stream is not source.stream:
            stream.close()
    return sender


def _commit_request(
    path: str, manifest: Manifest, *, if_version: int | None, mode: int, mtime_ns: int, sign_key: object
) -> pb.CommitFileRequest:
    request = pb.CommitFileRequest(
        path=path,
        manifest=pb.Manifest(
            chunks=[pb.ChunkRef(digest=c.digest, length=c.length) for c in manifest.chunks],
            size=manifest.size,
            file_digest=manifest.file_digest,
        ),
        mode=mode,
        mtime_ns=mtime_ns,
    )
    if if_version is not None:
        request.if_version = if_version
    if sign_key is not None:
        from cas import signing  # lazily: only signed uploads need cryptography loaded

        key = signing.private_key_from_pem(sign_key) if isinstance(sign_key, bytes | bytearray) else sign_key
        request.signature = signing.sign_version(
            key, path, manifest.digest(), manifest.file_digest, manifest.size
        )
        request.signer_public_key = signing.public_key_bytes(key)  # type: ignore[arg-type]
    return request


def upload(
    remote: Remote,
    source: Source,
    remote_path: str,
    *,
    if_version: int | None = None,
    mode: int = 0,
    mtime_ns: int = 0,
    sign_key: object = None,
    progress: ProgressFn | None = None,
    cache: ManifestCache | None = None,
) -> PutResult:
    """Upload ``source`` to ``remote_path`` as a new version (see the module docstring)."""
    started = time.perf_counter()
    path = normalize_path(remote_path)  # fail before reading gigabytes, not after
    tracker = _Progress(progress, source.size)
    hasher = new_hasher()
    use_cache = cache is not None and remote.info().manifest_deltas
    base = BaseLookup(remote, cache if use_cache else None, path)
    try:
        builder, bytes_read, count, sender, asked = _send_stream(remote, source.stream, hasher, tracker, base)
    finally:
        base.cancel()
    manifest = builder.build(hasher.digest())
    request = _commit_request(
        path, manifest, if_version=if_version, mode=mode, mtime_ns=mtime_ns, sign_key=sign_key
    )
    delta = delta_request(request, base.manifest, manifest) if base.manifest is not None else None
    chunks_sent, bytes_sent = sender.chunks_sent, sender.bytes_sent
    try:
        response, delta = commit_file(remote, request, delta)
    except MissingChunksError:
        if source.reopen is None:
            raise
        again = _resend_missing(remote, source, manifest, _Progress(None, None))
        chunks_sent += again.chunks_sent
        bytes_sent += again.bytes_sent
        response, delta = commit_file(remote, request, delta)
    if use_cache and cache is not None:
        cache.put(manifest)
    return PutResult(
        version=response.version,
        unchanged=response.unchanged,
        bytes_read=bytes_read,
        chunks_total=count,
        chunks_sent=chunks_sent,
        bytes_sent=bytes_sent,
        seconds=time.perf_counter() - started,
        digests_checked=asked,
        manifest_delta=delta is not None,
    )


def file_source(path: str | os.PathLike[str], stream: BinaryIO) -> Source:
    """A :class:`Source` over an open regular file that can be re-opened by path for the retry."""
    size = os.fstat(stream.fileno()).st_size
    return Source(stream, size, lambda: open(path, "rb"))


def stream_source(stream: BinaryIO, size: int | None = None) -> Source:
    """A :class:`Source` over any binary stream; re-readable when it is seekable."""
    reopen: Callable[[], BinaryIO] | None = None
    if _seekable(stream):
        start = stream.tell()

        def rewind() -> BinaryIO:
            stream.seek(start)
            return stream

        reopen = rewind
        if size is None:
            end = stream.seek(0, os.SEEK_END)
            stream.seek(start)
            size = end - start
    return Source(stream, size, reopen)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False
