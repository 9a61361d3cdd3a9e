"""The upload engine's stages: prepare (chunk + hash), find missing, send, commit.

Every upload goes through these stages: a big file or a stream here, one file at a time and
pipelined; a group of small files in :mod:`cli.smallfiles`, prepared in memory and then found,
sent and committed together with the same :func:`find_missing`, :class:`_Sender` and
:func:`commit_request`; :mod:`cli.push` runs them for a file, a stream or a tree. Each file ends
as one :class:`FileOutcome`.

For a big file or a stream, the stages run at once, so memory stays constant whatever the size:

1. this thread reads and chunks the source (hashing in a pool, feeding the whole-file BLAKE3),
   groups chunks into windows and asks FindMissingChunks once per window;
2. the missing chunks of each window go into a small bounded queue;
3. gRPC's request thread drains that queue through a compression pool and streams ChunkBatch
   messages of about ``batch_bytes`` on ONE PutChunks call, opened only when the first missing
   chunk appears (an unchanged file sends no chunk bytes at all).

Then CommitFile. If the server reports missing chunks at commit (a garbage collection raced the
upload), they are read again from the source, sent, and the commit is retried once.

A rate-limited PutChunks or CommitFile is retried after the delay the server names, within a
bound on the total wait (:mod:`cli.pacing`). A PutChunks stream refused mid-way is not resent at
once: chunking goes on to the end (the manifest needs every digest), and then the chunks the
server still lacks are read again from the source and sent; a source that cannot be read twice
(a pipe) fails with the refusal instead.

With a manifest cache (:mod:`cli.manifestdelta`) holding the head's manifest, chunks of that
manifest are not asked about and the commit is sent as a delta against it; if the server refuses
the base, the full manifest is sent once instead. Chunks that are sent carry delta hints (the
head's chunks at the same offset, :mod:`cli.deltahints`) when the server takes them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import grpc

from cas.digest import digest as blake3_digest
from cas.digest import new_hasher
from cas.errors import (
    CasError,
    CommitUnansweredError,
    InvalidInputError,
    MissingChunksError,
    RateLimitedError,
    ServerUnavailableError,
)
from cas.manifest import Manifest, ManifestBuilder
from cas.paths import normalize_path
from cas.pipeline import HashedChunk, Pipeline
from cli.deltahints import HINT_OVERHEAD, UploadHints
from cli.grouping import CHUNK_OVERHEAD
from cli.manifestdelta import BaseLookup, ManifestCache, commit_file, delta_request
from cli.pacing import RateLimitBudget, retry_rate_limited
from cli.remote import Advance, Remote, TransferParams
from cli.results import Version
from cli.rpc_errors import map_rpc_error
from proto import stratus_pb2 as pb

WINDOW_BYTES = 8 * 1024 * 1024
WINDOW_CHUNKS = 1024
PIPELINE_IN_FLIGHT = 8 * 1024 * 1024
FIND_BATCH = 4096  # digests per FindMissingChunks call when re-checking a whole manifest
_MANIFEST_ENTRY_BYTES = 40  # upper bound of one ChunkRef in a serialised CommitFileRequest
_END = object()



@contextlib.contextmanager
def committing() -> Iterator[None]:
    """Around a commit call: a lost connection becomes :class:`CommitUnansweredError`."""
    try:
        yield
    except CommitUnansweredError:
        raise
    except ServerUnavailableError as exc:
        raise CommitUnansweredError(exc) from exc


@dataclass
class FileOutcome:
    """What happened to one file (or stream) of an upload: the one result type of the engine.

    Invariants: ``status`` is ``uploaded`` or ``unchanged`` exactly when ``version`` is the
    committed version and ``error`` is None; ``failed`` always carries ``error``; ``skipped``
    (unchanged since the last run, not read) and ``deleted`` carry the head or the tombstone.
    """

    remote: str
    local: str
    status: str  # uploaded | unchanged | skipped | failed | deleted
    version: Version | None = None  # converted from the server's answer where the engine receives it
    bytes_read: int = 0
    bytes_sent: int = 0  # frame bytes sent on the wire
    chunks_total: int = 0
    chunks_sent: int = 0
    digests_checked: int = 0  # digests asked about with FindMissingChunks
    manifest_delta: bool = False  # committed as a delta against the head's manifest
    seconds: float = 0.0
    error: BaseException | None = None

    @property
    def unchanged(self) -> bool:
        """The content equalled the head: no new version was written."""
        return self.status == "unchanged"

    @property
    def committed(self) -> bool:
        """The server holds this file's content as ``version`` (written now or found as the head)."""
        return self.status in ("uploaded", "unchanged", "skipped") and self.version is not None


@dataclass
class Source:
    """Where the bytes come from, and how to read them again for the missing-chunks retry."""

    stream: BinaryIO
    size: int | None = None
    reopen: Callable[[], BinaryIO] | None = None  # None: the source cannot be read twice


class _Meter:
    """Counts bytes done for one file and hands each increment to the run's ``advance``."""

    def __init__(self, advance: Advance | None) -> None:
        self._advance = advance

    def add(self, n: int) -> None:
        if self._advance is not None and n:
            self._advance(n)


class _Sender:
    """One PutChunks call fed from a bounded queue of windows, opened lazily.

    Memory is bounded by the queue (one window) plus the pipeline's in-flight bytes. With
    ``track``, ``frames`` maps each sent digest to its frame size (a group attributes them to files).
    Delta hints given with a window travel with their chunks (:mod:`cli.deltahints`).
    With ``tolerate_rate_limit``, a call the server refuses for its rate limit is not an error:
    ``refused`` holds the refusal, and every later window is dropped (the caller resends what
    the server lacks afterwards).
    """

    def __init__(self, remote: Remote, params: TransferParams, progress: _Meter, *, track: bool = False,
                 tolerate_rate_limit: bool = False) -> None:
        self.frames: dict[bytes, int] | None = {} if track else None
        self.refused: RateLimitedError | None = None
        self._tolerate = tolerate_rate_limit
        self._remote = remote
        self._params = params
        self._progress = progress
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._aborted = threading.Event()
        self._future: grpc.Future | None = None
        self._pipe: Pipeline | None = None
        self._error: BaseException | None = None
        self._hints: dict[bytes, list[bytes]] = {}
        self.chunks_sent = 0
        self.bytes_sent = 0

    def submit(self, missing: list[HashedChunk], hints: Mapping[bytes, list[bytes]] | None = None) -> None:
        """Queue a window's missing chunks (blocks while the queue is full: that bounds memory),
        with the delta hints of some of them (digest -> base digests)."""
        if not missing or self.refused is not None:
            return
        if hints:
            self._hints.update(hints)  # before the chunks are queued: read when each is encoded
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
                self._tolerating(self._raise_failure)
                if self.refused is not None:
                    return
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
                hints = self._hints.pop(enc.digest, ())
                size = len(enc.frame) + CHUNK_OVERHEAD + HINT_OVERHEAD * len(hints)
                if batch and batch_bytes + size > limit:
                    yield pb.ChunkBatch(chunks=batch)
                    self._account(len(batch), frame_bytes, raw_bytes)
                    batch, batch_bytes, frame_bytes, raw_bytes = [], 0, 0, 0
                batch.append(pb.ChunkData(digest=enc.digest, frame=enc.frame, base_hints=hints))
                if self.frames is not None:
                    self.frames[enc.digest] = len(enc.frame)
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

    def _tolerating(self, fail: Callable[[], None]) -> None:
        """Run ``fail``; a rate-limit refusal it raises becomes ``refused`` when tolerated."""
        try:
            fail()
        except RateLimitedError as refusal:
            if not self._tolerate:
                raise
            self.refused = refusal

    def finish(self) -> pb.PutChunksResponse | None:
        """Close the stream and wait for the server's answer (None if nothing was ever sent, or
        the call was refused for the rate limit and that is tolerated)."""
        if self._future is None:
            return None
        self._put(_END)
        try:
            self._tolerating(self._raise_failure)
        finally:
            self._close_pipe()
        return None if self.refused is not None else self._future.result()

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


def find_missing(remote: Remote, digests: list[bytes]) -> set[bytes]:
    """The digests of ``digests`` the server does not hold (one FindMissingChunks call)."""
    if not digests:
        return set()
    resp = remote.call(remote.stub.FindMissingChunks, pb.FindMissingChunksRequest(digests=digests))
    return set(resp.missing)


def find_missing_later(remote: Remote, digests: list[bytes]) -> grpc.Future | None:
    """Start a FindMissingChunks call for ``digests`` (None when there is nothing to ask);
    :func:`missing_of` waits for its answer."""
    if not digests:
        return None
    return remote.stub.FindMissingChunks.future(pb.FindMissingChunksRequest(digests=digests))


def missing_of(remote: Remote, future: grpc.Future | None) -> set[bytes]:
    """The answer of a :func:`find_missing_later` call, as a set (typed errors, like :func:`find_missing`)."""
    if future is None:
        return set()
    try:
        return set(future.result().missing)
    except grpc.RpcError as err:
        raise map_rpc_error(err, remote.target) from err


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
    remote: Remote, source: Source, hasher: object, progress: _Meter, base: BaseLookup,
    hints: UploadHints | None,
) -> tuple[ManifestBuilder, int, int, _Sender, int]:
    """Stages 1-3 over one source; returns the manifest builder, bytes read, chunk count, sender
    and how many digests were asked about. ``hints`` adds delta hints to the chunks sent. A
    source that can be read again tolerates a rate-limited PutChunks (see ``_Sender.refused``).

    A window's FindMissingChunks answer is awaited only when the next window is ready, so the
    round trip overlaps the reading and hashing of the next window instead of stalling it. A
    digest asked about in two windows at once is still sent once (``queued`` is checked when the
    answer is used).
    """
    params = remote.params
    stream = source.stream
    builder = ManifestBuilder()
    sender = _Sender(remote, params, progress, tolerate_rate_limit=source.reopen is not None)
    queued: set[bytes] = set()  # digests already sent (or queued) by this upload
    window: list[HashedChunk] = []
    window_bytes = bytes_read = count = 0
    asked = [0]
    pending: list[tuple[list[HashedChunk], grpc.Future | None]] = []  # asked, answer not used yet

    def flush() -> None:
        if sender.refused is not None:
            return  # rate-limited: the rest is asked about and sent once the manifest is whole
        # The base manifest's chunks are committed content of the namespace: no need to ask.
        known = base.digests
        ask = list(dict.fromkeys(c.digest for c in window if c.digest not in queued and c.digest not in known))
        asked[0] += len(ask)
        pending.append((window, find_missing_later(remote, ask)))
        while len(pending) > 1:
            send_missing(*pending.pop(0))

    def send_missing(asked_window: list[HashedChunk], future: grpc.Future | None) -> None:
        missing = missing_of(remote, future)
        to_send = []
        for c in asked_window:
            if c.digest in missing and c.digest not in queued:
                queued.add(c.digest)
                to_send.append(c)
            else:
                progress.add(c.length)
        sender.submit(to_send, hints.of(to_send) if hints is not None else None)

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
        while pending:
            send_missing(*pending.pop(0))
        sender.finish()
    except BaseException:
        for _, future in pending:
            if future is not None:
                future.cancel()
        sender.abort()
        raise
    return builder, bytes_read, count, sender, asked[0]


def _resend_missing(remote: Remote, source: Source, manifest: Manifest, progress: _Meter,
                    budget: RateLimitBudget) -> _Sender:
    """Send again the manifest's chunks that the server lacks now, read back from the source.

    What is missing is asked once; a rate-limited PutChunks is sent again (the same chunks)
    within ``budget``. Asking again before each try would need two calls per waited-out delay,
    which a server that admits one call per delay would refuse for ever.
    """
    digests = manifest.unique_digests()
    missing: set[bytes] = set()
    for start in range(0, len(digests), FIND_BATCH):
        missing |= find_missing(remote, digests[start : start + FIND_BATCH])
    return retry_rate_limited(lambda: _send_from_source(remote, source, manifest, set(missing), progress), budget)


def _send_from_source(remote: Remote, source: Source, manifest: Manifest, missing: set[bytes],
                      progress: _Meter) -> _Sender:
    """Send the manifest's chunks named in ``missing`` (emptied as they are sent), read back from
    the source, on one PutChunks call."""
    assert source.reopen is not None
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


def signing_key(sign_key: object) -> object:
    """An Ed25519 private key object from a key object or PEM bytes (None stays None)."""
    if isinstance(sign_key, bytes | bytearray):
        from cas import signing  # lazily: only signed uploads need cryptography loaded

        return signing.private_key_from_pem(bytes(sign_key))
    return sign_key


def commit_request(
    path: str, manifest: Manifest, *, mode: int, mtime_ns: int, if_version: int | None = None,
    sign_key: object = None,
) -> pb.CommitFileRequest:
    """The one CommitFile request builder; ``sign_key`` is a private key object or PEM bytes."""
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
    key = signing_key(sign_key)
    if key is not None:
        from cas import signing

        request.signature = signing.sign_version(
            key, path, manifest.digest(), manifest.file_digest, manifest.size  # type: ignore[arg-type]
        )
        request.signer_public_key = signing.public_key_bytes(key)  # type: ignore[arg-type]
    return request


def upload(
    remote: Remote,
    source: Source,
    remote_path: str,
    *,
    local: str = "-",
    if_version: int | None = None,
    mode: int = 0,
    mtime_ns: int = 0,
    sign_key: object = None,
    advance: Advance | None = None,
    cache: ManifestCache | None = None,
    before_commit: Callable[[], None] | None = None,
) -> FileOutcome:
    """Upload ``source`` to ``remote_path`` as a new version (see the module docstring).

    ``before_commit`` is called once everything was read and sent, right before the commit; what
    it raises cancels the commit (a sync checks there that the file did not change while read).
    Raises on failure: nothing was committed then, except after :class:`CommitUnansweredError`,
    when it may have been. The outcome is ``uploaded`` or ``unchanged``.
    """
    started = time.perf_counter()
    path = normalize_path(remote_path)  # fail before reading gigabytes, not after
    hasher = new_hasher()
    info = remote.info()
    use_cache = cache is not None and info.manifest_deltas
    base = BaseLookup(remote, cache if use_cache else None, path, stat=info.delta_hints)
    hints = UploadHints(remote, base, path) if info.delta_hints else None
    budget = RateLimitBudget()
    try:
        builder, bytes_read, count, sender, asked = _send_stream(remote, source, hasher, _Meter(advance), base, hints)
    finally:
        base.cancel()
    manifest = builder.build(hasher.digest())
    if sender.refused is not None:
        # What the refused call carried, and everything after it, is sent again once allowed.
        budget.wait(sender.refused)
        again = _resend_missing(remote, source, manifest, _Meter(advance), budget)
        sender.chunks_sent += again.chunks_sent
        sender.bytes_sent += again.bytes_sent
    if before_commit is not None:
        before_commit()
    request = commit_request(path, manifest, mode=mode, mtime_ns=mtime_ns, if_version=if_version, sign_key=sign_key)
    delta = delta_request(request, base.manifest, manifest) if base.manifest is not None else None
    outcome = FileOutcome(path, local, "uploaded", bytes_read=bytes_read, chunks_total=count,
                          chunks_sent=sender.chunks_sent, bytes_sent=sender.bytes_sent, digests_checked=asked)
    response, delta = _commit(remote, source, manifest, (request, delta), outcome, budget)
    if use_cache and cache is not None:
        cache.put(manifest)
    outcome.version = Version.from_message(response.version)
    outcome.status = "unchanged" if response.unchanged else "uploaded"
    outcome.manifest_delta = delta is not None
    outcome.seconds = time.perf_counter() - started
    return outcome


def _commit(
    remote: Remote, source: Source, manifest: Manifest,
    requests: tuple[pb.CommitFileRequest, pb.CommitFileRequest | None], outcome: FileOutcome,
    budget: RateLimitBudget,
) -> tuple[pb.CommitFileResponse, pb.CommitFileRequest | None]:
    """The commit stage: CommitFile (as a delta when there is one); chunks the server lost since
    they were found present are read again from the source and sent, then the commit is retried once.
    Rate-limited calls are retried within ``budget``."""
    request, delta = requests

    def commit() -> tuple[pb.CommitFileResponse, pb.CommitFileRequest | None]:
        with committing():
            return retry_rate_limited(lambda: commit_file(remote, request, delta), budget)

    try:
        return commit()
    except MissingChunksError:
        if source.reopen is None:
            raise
    again = _resend_missing(remote, source, manifest, _Meter(None), budget)
    outcome.chunks_sent += again.chunks_sent
    outcome.bytes_sent += again.bytes_sent
    return commit()


def upload_path(
    remote: Remote,
    local_path: str | os.PathLike[str],
    remote_path: str,
    *,
    if_version: int | None = None,
    sign_key: object = None,
    advance: Advance | None = None,
    cache: ManifestCache | None = None,
) -> FileOutcome:
    """Upload a local regular file (its mode and mtime are recorded); raises on failure."""
    if os.path.exists(local_path) and not os.path.isfile(local_path):
        raise InvalidInputError(f"{os.fspath(local_path)} is not a regular file")  # a FIFO would block open()
    with open(local_path, "rb") as stream:
        st = os.fstat(stream.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{os.fspath(local_path)} is not a regular file")
        return upload(
            remote, Source(stream, st.st_size, lambda: open(local_path, "rb")), remote_path,
            local=os.fspath(local_path), if_version=if_version, mode=st.st_mode & 0o777,
            mtime_ns=st.st_mtime_ns, sign_key=sign_key, advance=advance, cache=cache,
        )


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
