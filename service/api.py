"""gRPC handlers of the ``stratus.v1.Stratus`` service.

Handlers validate and translate: protobuf in, :mod:`cas` / repository calls, protobuf out.
Errors are raised as typed library errors and become status codes in ``service/errors.py``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path

import grpc

from cas import codec, digest
from cas.errors import (
    ChunkTooLargeError,
    InvalidInputError,
    InvalidPolicyError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from cas.manifest import Manifest, ManifestBuilder
from cas.manifestpieces import pieces_between
from cas.packstore import Hints
from cas.paths import normalize_path, normalize_prefix
from cas.pipeline import Pipeline
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc
from proto.pieces import pieces_message
from service.admission import MAX_HINTS_PER_CHUNK, ByteBudget, OversizeBatch, StreamLimits
from service.batches import BatchCalls, item_error
from service.calls import note, rpc
from service.commits import CommitRequest, Committer
from service.config import ServerConfig
from service.deltadownload import MAX_DELTA_BASES
from service.gate import Caller, Gate
from service.gc import GarbageCollector
from service.messages import (
    commit_manifest_from_message,
    event_message,
    manifest_message,
    policy_from_message,
    selector_from_message,
    version_info,
)
from service.metadata import NamespaceStats, VersionRecord
from service.ratelimit import RateLimiter
from service.repository import Repository
from service.retention import PathForget, forget_prefix
from service.scoped import check_possession, list_within, show_manifest

Ctx = grpc.aio.ServicerContext
SERVER_VERSION = "0.1.0"
DOWNLOAD_PIECE = 1 << 20
# GetChunks windows (of batch_bytes) read ahead of the one being sent.
READ_AHEAD = 3
# How long ServerInfo waits for the first count of a large chunk store before answering without it.
DISK_STATS_WAIT = 1.0


def _encode_token(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=") if path else ""


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError("page_token is not one this server issued") from exc


def _check_digests(digests: list[bytes], limit: int) -> list[bytes]:
    if len(digests) > limit:
        raise LimitExceededError(f"{len(digests)} digests in one request; the limit is {limit}",
                                 limit="max_find_digests", value=len(digests), maximum=limit)
    for d in digests:
        digest.check_digest(d)
    return digests


def _checked_hints(batch: pb.ChunkBatch) -> Hints:
    """digest -> its base hints, for the chunks of ``batch`` that carry any (each a valid digest;
    their count per chunk was bounded on the wire)."""
    hints: dict[bytes, list[bytes]] = {}
    for chunk in batch.chunks:
        if chunk.base_hints:
            hints[chunk.digest] = [digest.check_digest(h) for h in chunk.base_hints]
    return hints


@contextlib.asynccontextmanager
async def _deadline(method: str, seconds: float) -> AsyncIterator[None]:
    """Bound the whole call: past ``seconds`` it ends with RESOURCE_EXHAUSTED naming the setting."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            yield
    except TimeoutError:
        if not limit.expired():
            raise
        raise LimitExceededError(
            f"{method} took longer than {seconds:g} s (setting upload_call_timeout_s); send less per call"
        ) from None


class StratusService(pb_grpc.StratusServicer):
    """The StratusVault API over one repository."""

    def __init__(
        self, config: ServerConfig, repo: Repository, gate: Gate, collector: GarbageCollector | None = None
    ) -> None:
        self.config = config
        self.repo = repo
        self.collector = collector
        self.gate = gate
        wait = config.admission_wait_s
        self.uploads = StreamLimits("upload streams", config.max_concurrent_uploads, config.max_uploads_per_identity,
                                    wait, total_setting="max_concurrent_uploads",
                                    identity_setting="max_uploads_per_identity")
        self.downloads = StreamLimits("download streams", config.max_concurrent_downloads,
                                      config.max_downloads_per_identity, wait,
                                      total_setting="max_concurrent_downloads",
                                      identity_setting="max_downloads_per_identity")
        # Where a download stream whose client stopped reading waits for its end (see _send_all).
        self.stalled_downloads = StreamLimits("stalled download streams", config.max_concurrent_downloads,
                                              config.max_downloads_per_identity, 0.0,
                                              total_setting="max_concurrent_downloads",
                                              identity_setting="max_downloads_per_identity")
        self.chunk_rate = RateLimiter(config.upload_chunks_per_second, config.upload_chunks_burst)
        self.inflight = ByteBudget(config.max_inflight_bytes_per_identity, setting="max_inflight_bytes_per_identity")
        self.observers: list = []
        self.committer = Committer(repo, config.max_manifest_chunks)
        self.batches = BatchCalls(config, repo, gate, self.committer)

    def observe_call(self, method: str, context: Ctx, code: grpc.StatusCode, seconds: float, **facts: object) -> None:
        """Called by service.calls.rpc once per finished call, with what the handler noted."""
        for observer in self.observers:
            observer(method, context, code, seconds, **facts)

    def _identify(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        caller = self.gate.caller(context, method)
        note(identity=caller.identity, namespace=caller.namespace)
        return caller

    def _enter(self, context: grpc.aio.ServicerContext, method: str, path: str = "", *, write: bool = False) -> Caller:
        caller = self._identify(context, method)
        note(path=path or None)
        self.gate.authorize(caller, path, write=write)
        return caller

    def _enter_chunks(self, context: grpc.aio.ServicerContext, method: str, *, write: bool) -> Caller:
        caller = self._identify(context, method)
        self.gate.authorize_chunks(caller, write=write)
        return caller

    def _enter_listing(self, context: Ctx, method: str, prefix: str) -> tuple[Caller, tuple[str, ...]]:
        caller = self._identify(context, method)
        note(path=prefix or None)
        return caller, tuple(self.gate.listing(caller, prefix))

    # ---- information ------------------------------------------------------------------------

    @rpc
    async def ServerInfo(self, request: pb.ServerInfoRequest, context: Ctx) -> pb.ServerInfoResponse:
        # Anyone the namespace admits may ask; its counters are shown only to callers who may read
        # all of it (a prefix grantee would learn the size of what lies outside its prefixes).
        caller = self._identify(context, "ServerInfo")
        ns_stats = NamespaceStats(0, 0, 0, 0, 0)
        if caller.view is None:
            ns_stats = await self.repo.namespace_stats(caller.namespace)
        disk = await self.repo.disk_stats(DISK_STATS_WAIT) if caller.admin else None
        reclaimable, reclaimed = await self.collector.counters() if caller.admin and self.collector else (0, 0)
        p = self.config.chunk_params
        return pb.ServerInfoResponse(
            server_version=SERVER_VERSION,
            chunking=pb.ChunkParams(min_size=p.min_size, avg_size=p.avg_size, max_size=p.max_size),
            compression="zstd", compression_level=self.config.compression_level,
            max_message_bytes=self.config.max_message_bytes, max_batch_bytes=self.config.batch_bytes,
            max_page_size=self.config.max_page_size, identity=caller.identity, namespace=caller.namespace,
            max_manifest_chunks=self.config.max_manifest_chunks, max_batch_files=self.config.max_batch_files,
            manifest_deltas=True, delta_hints=self.repo.takes_hints, delta_downloads=self.config.delta_downloads,
            stats=pb.StoreStats(
                chunk_count=ns_stats.chunk_count, unique_bytes=ns_stats.unique_bytes,
                logical_bytes=ns_stats.logical_bytes, file_count=ns_stats.file_count,
                version_count=ns_stats.version_count,
                stored_bytes=disk.stored_bytes if disk else 0,
                store_chunk_count=disk.chunk_count if disk else 0,
                reclaimable_bytes=reclaimable, reclaimed_bytes=reclaimed,
            ),
        )

    # ---- delta upload -------------------------------------------------------------------------

    @rpc
    async def FindMissingChunks(
        self, request: pb.FindMissingChunksRequest, context: Ctx
    ) -> pb.FindMissingChunksResponse:
        caller = self._enter_chunks(context, "FindMissingChunks", write=True)
        digests = _check_digests(list(request.digests), self.config.max_find_digests)
        return pb.FindMissingChunksResponse(missing=await self.repo.missing(caller.namespace, digests, caller.view))

    @rpc
    async def PutChunks(self, request_iterator: AsyncIterator[pb.ChunkBatch], context: Ctx) -> pb.PutChunksResponse:
        caller = self._enter_chunks(context, "PutChunks", write=True)
        await self._paced(caller.share, self.config.admission_wait_s)
        async with self.uploads.slot(caller.share), _deadline("PutChunks", self.config.upload_call_timeout_s):
            upload = self.repo.open_upload(caller.namespace, self.config.flush_bytes, caller.view)
            pending: asyncio.Future | None = None
            try:
                async for batch in self._arriving(request_iterator, "PutChunks", paced=caller.share):
                    # Every chunk received costs parsing: charged before the limits are checked.
                    over = isinstance(batch, OversizeBatch)
                    self.chunk_rate.charge(caller.share, batch.counted if over else len(batch.chunks))
                    chunks, hints = self._checked_batch(batch)
                    # Verify batch n while batch n+1 is on the wire; at most two batches in memory.
                    if pending is not None:
                        await pending
                    pending = await self._charged(caller.share, chunks, upload.add(chunks, hints))
                if pending is not None:
                    await pending
                result = await upload.finish()
            finally:
                # Temp files of batches still being staged are removed by their own threads.
                upload.discard()
        note(nbytes=result.frame_bytes)
        return pb.PutChunksResponse(received=result.received, stored=result.stored, frame_bytes=result.frame_bytes)

    async def _charged(self, identity: str, chunks: list[tuple[bytes, bytes]], work: object) -> asyncio.Future:
        """Start ``work`` on a batch once its bytes fit the identity's in-flight budget; the bytes
        are given back when the work ends, however it ends."""
        nbytes = sum(len(f) for _, f in chunks)
        try:
            await self.inflight.charge(identity, nbytes, self.config.stream_idle_timeout_s)
        except BaseException:
            work.close()  # type: ignore[attr-defined]
            raise
        task = asyncio.ensure_future(work)  # type: ignore[arg-type]
        task.add_done_callback(lambda _: self.inflight.refund(identity, nbytes))
        return task

    async def _paced(self, identity: str, limit_s: float) -> None:
        """Wait until ``identity``'s upload chunk budget is out of debt; refuse (after ``limit_s``)
        when that would take longer than ``limit_s``. Nothing of the next message is read (or
        parsed) meanwhile."""
        wait = self.chunk_rate.acquire(identity, 0)
        if wait > limit_s:
            # Not refused at once: a client retrying in a tight loop would cost more than it waits.
            await asyncio.sleep(limit_s)
            raise RateLimitedError(
                wait, f"identity {identity!r} is over its upload rate ({self.chunk_rate.rate:g} chunks/s, "
                f"setting upload_chunks_per_second); retry in {wait:.2f} s",
            )
        if wait > 0:
            await asyncio.sleep(wait)

    async def _arriving(self, messages: AsyncIterable, method: str, *, paced: str | None = None) -> AsyncIterator:
        """The messages of a client stream; a pause longer than ``stream_idle_timeout_s`` ends it.

        With ``paced`` (an identity), each next message is read only once that identity's upload
        chunk budget allows it.
        """
        idle = self.config.stream_idle_timeout_s
        iterator = aiter(messages)
        while True:
            if paced is not None:
                await self._paced(paced, idle)
            try:
                async with asyncio.timeout(idle):
                    message = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise LimitExceededError(
                    f"{method} stream idle for {idle:g} s (setting stream_idle_timeout_s); the stream was closed"
                ) from None
            yield message

    async def _send_all(self, context: Ctx, caller: Caller, method: str, messages: AsyncIterator) -> None:
        """Write ``messages`` to a server stream; each must be accepted by flow control within
        ``stream_idle_timeout_s``, else the stream ends with RESOURCE_EXHAUSTED.

        ``messages`` is an async generator that holds the call's download slot while it runs. A
        client that stops reading leaves one message waiting in gRPC, which sends no status
        before that message is taken (or the client goes away): so on a stall the generator is
        closed (its slot and read-ahead given back) and the call waits in one of the identity's
        stalled-stream places (as many as download slots) for that, then ends. When those places
        are all taken the call waits with its download slot, so one identity's stalled streams
        hold at most twice its download share.
        """
        idle = self.config.stream_idle_timeout_s
        async with contextlib.AsyncExitStack() as stack:
            items = await stack.enter_async_context(contextlib.aclosing(messages))
            async for message in items:
                write = asyncio.ensure_future(context.write(message))
                try:
                    await asyncio.wait_for(asyncio.shield(write), idle)
                    continue
                except TimeoutError:
                    pass
                except BaseException:
                    write.cancel()
                    raise
                with contextlib.suppress(RateLimitedError):  # no place free: keep the download slot
                    await stack.enter_async_context(self.stalled_downloads.slot(caller.share))
                    await items.aclose()
                await write
                raise LimitExceededError(
                    f"{method}: the client accepted no data for {idle:g} s (setting stream_idle_timeout_s); "
                    "the stream was closed"
                )

    def _checked_batch(self, batch: pb.ChunkBatch | OversizeBatch) -> tuple[list[tuple[bytes, bytes]], Hints]:
        """Refuse a message whose verification would cost more than one message may, before any
        work; returns its (digest, frame) pairs and the base hints of the chunks that have some.

        Bounded: at most ``max_chunks_per_message`` chunks, of which at most
        ``max_small_chunks_per_message`` are smaller than ``chunk_min_size`` (a chunker only makes
        those at the end of a file), declaring at most ``max_message_raw_bytes`` uncompressed bytes;
        at most :data:`MAX_HINTS_PER_CHUNK` base hints per chunk, each a digest (else INVALID_ARGUMENT).
        """
        cfg = self.config
        if isinstance(batch, OversizeBatch) and batch.hints:
            raise InvalidInputError(
                f"a chunk carries {batch.hints} base_hints; the limit is {MAX_HINTS_PER_CHUNK}"
            )
        if isinstance(batch, OversizeBatch) or len(batch.chunks) > cfg.max_chunks_per_message:
            raise LimitExceededError(
                f"more than {cfg.max_chunks_per_message} chunks in one PutChunks message "
                "(setting max_chunks_per_message)"
            )
        chunks = [self._checked_chunk(c) for c in batch.chunks]
        lengths = [codec.frame_length(f) for _, f in chunks]
        small = sum(1 for n in lengths if n < cfg.chunk_min_size)
        if small > cfg.max_small_chunks_per_message:
            raise LimitExceededError(
                f"{small} chunks smaller than chunk_min_size ({cfg.chunk_min_size} bytes) in one PutChunks message; "
                f"the limit is {cfg.max_small_chunks_per_message} (setting max_small_chunks_per_message)"
            )
        if sum(lengths) > cfg.max_message_raw_bytes:
            raise LimitExceededError(
                f"one PutChunks message declares {sum(lengths)} uncompressed bytes; the limit is "
                f"{cfg.max_message_raw_bytes} (setting max_message_raw_bytes)"
            )
        return chunks, _checked_hints(batch)

    def _checked_chunk(self, chunk: pb.ChunkData) -> tuple[bytes, bytes]:
        # Each read of a bytes field copies it out of the message: read the frame once.
        d, frame = digest.check_digest(chunk.digest), chunk.frame
        # A frame never exceeds its chunk by more than the header and zstd's worst-case overhead.
        if len(frame) > self.config.chunk_max_size + codec.HEADER_SIZE + 1024:
            raise ChunkTooLargeError(f"chunk frame of {len(frame)} bytes exceeds the chunk size limit")
        return d, frame

    async def _commit(self, caller: Caller, c: CommitRequest) -> pb.CommitFileResponse:
        await check_possession(self.repo, caller, c)
        outcome = await self.committer.commit(caller.namespace, caller.identity, c)
        if not outcome.unchanged:
            note(version=outcome.record.version, nbytes=outcome.record.size)
        return pb.CommitFileResponse(version=version_info(outcome.record), unchanged=outcome.unchanged)

    @rpc
    async def CommitFile(self, request: pb.CommitFileRequest, context: Ctx) -> pb.CommitFileResponse:
        path = normalize_path(request.path)
        caller = self._enter(context, "CommitFile", path, write=True)
        return await self._commit(caller, CommitRequest(
            path, commit_manifest_from_message(request),
            if_version=request.if_version if request.HasField("if_version") else None,
            mode=request.mode, mtime_ns=request.mtime_ns,
            signature=request.signature, signer_public_key=request.signer_public_key,
        ))

    @rpc
    async def CommitFiles(self, request: pb.CommitFilesRequest, context: Ctx) -> pb.CommitFilesResponse:
        # Rights are checked per path (service/batches.py); the rate limit takes one token per call.
        return await self.batches.commit_files(self._identify(context, "CommitFiles"), request)

    # ---- delta download -------------------------------------------------------------------------

    @rpc
    async def GetManifest(self, request: pb.GetManifestRequest, context: Ctx) -> pb.GetManifestResponse:
        path = normalize_path(request.path)
        caller = self._enter(context, "GetManifest", path)
        record = await self.repo.resolve(caller.namespace, path, selector_from_message(request.at))
        manifest = await self.repo.manifest(record)
        await show_manifest(self.repo, caller, manifest)
        full = pb.GetManifestResponse(version=version_info(record), manifest=manifest_message(manifest))
        delta = await self._manifest_delta(caller, path, manifest, request.base_manifest_digest)
        if delta is not None:
            delta.version.CopyFrom(full.version)
            if delta.ByteSize() < full.ByteSize():
                return delta
        return full

    async def _manifest_delta(
        self, caller: Caller, path: str, manifest: Manifest, base_digest: bytes
    ) -> pb.GetManifestResponse | None:
        """GetManifest's delta form against ``base_digest`` (without the version), or None when that
        is not the manifest of a version of ``path`` in the caller's namespace: a client learns
        nothing it could not read already (ListVersions), and an unusable base costs the full form."""
        if not self.config.delta_downloads or len(base_digest) != digest.DIGEST_SIZE:
            return None
        try:
            base = await self.repo.manifest(await self.committer.base_record(caller.namespace, path, base_digest))
        except NotFoundError:
            return None
        return pb.GetManifestResponse(
            manifest=pb.Manifest(size=manifest.size, file_digest=manifest.file_digest),
            base_manifest_digest=base_digest, pieces=pieces_message(pieces_between(base.chunks, manifest.chunks)),
        )

    @rpc
    async def GetManifests(self, request: pb.GetManifestsRequest, context: Ctx) -> pb.GetManifestsResponse:
        return await self.batches.get_manifests(self._identify(context, "GetManifests"), request)

    @rpc
    async def GetChunks(self, request: pb.GetChunksRequest, context: Ctx) -> None:
        caller = self._enter_chunks(context, "GetChunks", write=False)
        digests = _check_digests(list(request.digests), self.config.max_find_digests)
        bases = self._proposed_bases(request)
        await self._send_all(context, caller, "GetChunks", self._chunk_batches(caller, digests, bases))

    def _proposed_bases(self, request: pb.GetChunksRequest) -> dict[bytes, tuple[bytes, ...]]:
        """digest -> its proposed delta bases in request order; empty when the server setting
        ``delta_downloads`` is off. Only the form is checked here (INVALID_ARGUMENT for a malformed
        digest or more than MAX_DELTA_BASES bases for one digest); whether the caller holds the
        bases is :meth:`Repository.read_frames`'s business."""
        limit = self.config.max_find_digests
        _check_digests([b.base for b in request.bases], limit)
        _check_digests([b.digest for b in request.bases], limit)
        bases: dict[bytes, tuple[bytes, ...]] = {}
        for proposal in request.bases:
            bases[proposal.digest] = (*bases.get(proposal.digest, ()), proposal.base)
            if len(bases[proposal.digest]) > MAX_DELTA_BASES:
                raise InvalidInputError(f"more than {MAX_DELTA_BASES} delta bases for chunk {proposal.digest.hex()}")
        return bases if self.config.delta_downloads else {}

    def _affordable(
        self, caller: Caller, part: list[bytes], bases: dict[bytes, tuple[bytes, ...]]
    ) -> dict[bytes, tuple[bytes, ...]]:
        """The proposals of one window that the caller's upload chunk budget pays for (one token per
        base), all or none: when the budget is short the window goes out in plain frames."""
        proposals = {d: bases[d] for d in part if d in bases}
        cost = sum(len(b) for b in proposals.values())
        if cost and self.chunk_rate.acquire(caller.share, cost) > 0:
            return {}
        return proposals

    async def _chunk_batches(
        self, caller: Caller, digests: list[bytes], bases: dict[bytes, tuple[bytes, ...]]
    ) -> AsyncIterator[pb.ChunkBatch]:
        async with self.downloads.slot(caller.share):
            # Read the next windows while the current one is on the wire, so disk, metadata
            # round trips and network overlap; at most READ_AHEAD + 1 windows are in memory.
            window = max(1, self.config.batch_bytes // self.config.chunk_avg_size)
            parts = [digests[i:i + window] for i in range(0, len(digests), window)]

            def read(part: list[bytes]) -> asyncio.Future:
                proposals = self._affordable(caller, part, bases)
                return asyncio.ensure_future(self.repo.read_frames(caller.namespace, part, caller.view, proposals))

            reads = (read(p) for p in parts)
            ahead: collections.deque[asyncio.Future] = collections.deque(itertools.islice(reads, READ_AHEAD))
            try:
                for part in parts:
                    answers = await ahead.popleft()
                    ahead.extend(itertools.islice(reads, 1))
                    chunks = [pb.ChunkData(digest=d, frame=f, base=b) for d, (f, b) in zip(part, answers, strict=True)]
                    yield pb.ChunkBatch(chunks=chunks)
            finally:
                for future in ahead:
                    if future.done() and not future.cancelled():
                        future.exception()  # the stream ended first: nothing waits for this one
                    future.cancel()

    @rpc
    async def ReportDamagedChunks(
        self, request: pb.ReportDamagedChunksRequest, context: Ctx
    ) -> pb.ReportDamagedChunksResponse:
        caller = self._enter_chunks(context, "ReportDamagedChunks", write=False)
        digests = _check_digests(list(request.digests), self.config.max_find_digests)
        # Re-verifying a chunk costs what verifying an uploaded one does: paid from the same budget,
        # for every digest named (whether the caller holds it or not, so the cost shows nothing).
        await self._paced(caller.share, self.config.admission_wait_s)
        self.chunk_rate.charge(caller.share, len(digests))
        damaged = await self.repo.report_damaged(caller.namespace, digests, caller.view)
        note(damaged=sum(damaged))
        return pb.ReportDamagedChunksResponse(damaged=damaged)

    # ---- byte streams for thin clients -------------------------------------------------------

    @rpc
    async def Upload(self, request_iterator: AsyncIterator[pb.UploadRequest], context: Ctx) -> pb.CommitFileResponse:
        messages = self._arriving(request_iterator, "Upload")
        first = await anext(messages, None)
        if first is None or first.WhichOneof("msg") != "header":
            raise InvalidInputError("the first Upload message must be the header")
        header = first.header
        path = normalize_path(header.path)
        caller = self._enter(context, "Upload", path, write=True)
        spool_dir = self.config.data_dir / "spool"
        spool_dir.mkdir(parents=True, exist_ok=True)
        async with self.uploads.slot(caller.share), _deadline("Upload", self.config.upload_call_timeout_s):
            # Spooling to disk keeps memory flat whatever the size; the chunker then reads it back.
            fd, spool = tempfile.mkstemp(dir=spool_dir, prefix="upload-")
            try:
                with os.fdopen(fd, "wb") as out:
                    async for message in messages:
                        if message.WhichOneof("msg") != "data":
                            raise InvalidInputError("only data messages may follow the Upload header")
                        await self.repo.run_blocking(out.write, message.data)
                manifest = await self._ingest_spool(caller, Path(spool))
            finally:
                os.unlink(spool)
        return await self._commit(caller, CommitRequest(
            path, manifest, if_version=header.if_version if header.HasField("if_version") else None,
            mode=header.mode, mtime_ns=header.mtime_ns,
        ))

    async def _ingest_spool(self, caller: Caller, spool: Path) -> Manifest:
        """Chunk, hash and compress a spooled upload (server-side chunking) and store it."""
        builder, hasher = ManifestBuilder(), digest.new_hasher()

        def batches() -> Iterator[list[tuple[bytes, bytes]]]:
            with Pipeline(self.config.chunk_params, self.config.compression_level) as pipe, open(spool, "rb") as f:
                batch, size = [], 0
                for chunk in pipe.process_stream(f, hasher):
                    builder.add(chunk.digest, chunk.length)
                    batch.append((chunk.digest, chunk.frame))
                    size += len(chunk.frame)
                    if size >= self.config.batch_bytes:
                        yield batch
                        batch, size = [], 0
                if batch:
                    yield batch

        source = batches()  # advanced on worker threads, one step at a time
        upload = self.repo.open_upload(caller.namespace, self.config.flush_bytes, caller.view)
        try:
            while (batch := await self.repo.run_blocking(next, source, None)) is not None:
                await upload.add(batch)
            await upload.finish()
        finally:
            upload.discard()
            source.close()
        return builder.build(hasher.digest())

    @rpc
    async def Download(self, request: pb.DownloadRequest, context: Ctx) -> None:
        path = normalize_path(request.path)
        caller = self._enter(context, "Download", path)
        record = await self.repo.resolve(caller.namespace, path, selector_from_message(request.at))
        if request.offset > record.size:
            raise InvalidInputError(f"offset {request.offset} is past the end of {path} ({record.size} bytes)")
        manifest = await self.repo.manifest(record)
        await self._send_all(context, caller, "Download", self._pieces(record, manifest, request.offset, caller))

    async def _pieces(
        self, record: VersionRecord, manifest: Manifest, offset: int, caller: Caller
    ) -> AsyncIterator[pb.DownloadResponse]:
        yield pb.DownloadResponse(version=version_info(record))
        async with self.downloads.slot(caller.share):
            position, piece = 0, bytearray()
            for ref in manifest.chunks:
                end = position + ref.length
                if end > offset:
                    data = await self.repo.read_data(ref.digest)
                    piece += data[max(0, offset - position):]
                    if len(piece) >= DOWNLOAD_PIECE:
                        yield pb.DownloadResponse(data=bytes(piece))
                        piece.clear()
                position = end
            if piece:
                yield pb.DownloadResponse(data=bytes(piece))

    # ---- browsing ---------------------------------------------------------------------------

    @rpc
    async def Stat(self, request: pb.StatRequest, context: Ctx) -> pb.VersionInfo:
        path = normalize_path(request.path)
        caller = self._enter(context, "Stat", path)
        return version_info(await self.repo.resolve(caller.namespace, path, selector_from_message(request.at)))

    @rpc
    async def ListFiles(self, request: pb.ListFilesRequest, context: Ctx) -> pb.ListFilesResponse:
        prefix = normalize_prefix(request.prefix)
        caller, prefixes = self._enter_listing(context, "ListFiles", prefix)
        size = min(request.page_size or self.config.default_page_size, self.config.max_page_size)
        records, last = await list_within(
            self.repo, caller.namespace, prefixes, after=_decode_token(request.page_token), limit=size,
            as_of_ms=request.as_of_ms, include_deleted=request.include_deleted,
        )
        return pb.ListFilesResponse(files=[version_info(r) for r in records], next_page_token=_encode_token(last))

    @rpc
    async def ListVersions(self, request: pb.ListVersionsRequest, context: Ctx) -> pb.ListVersionsResponse:
        path = normalize_path(request.path)
        caller = self._enter(context, "ListVersions", path)
        records = await self.repo.versions(caller.namespace, path, limit=request.limit)
        if not records:
            raise NotFoundError(f"{path}: no such file")
        return pb.ListVersionsResponse(versions=[version_info(r) for r in records])

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: Ctx) -> pb.VersionInfo:
        path = normalize_path(request.path)
        caller = self._enter(context, "Delete", path, write=True)
        record = await self.repo.delete(
            caller.namespace, path, identity=caller.identity,
            if_version=request.if_version if request.HasField("if_version") else None,
        )
        return version_info(record)

    @rpc
    async def Forget(self, request: pb.ForgetRequest, context: Ctx) -> AsyncIterator[pb.ForgetPathResult]:
        # Forgetting rewrites history: write access to the whole prefix, as for a commit under it.
        prefix = normalize_prefix(request.prefix)
        caller = self._enter(context, "Forget", prefix, write=True)
        policy = policy_from_message(request.policy)
        if policy.is_empty():
            raise InvalidPolicyError("no retention rule given: set at least one keep rule (nothing was removed)")
        paths = removed = 0
        async for outcome in forget_prefix(self.repo, caller.namespace, prefix, policy, identity=caller.identity,
                                           dry_run=request.dry_run):
            paths += 1
            removed += outcome.removed
            note(paths=paths, removed=removed, dry_run=request.dry_run)
            yield _forget_result(outcome)

    @rpc
    async def Diff(self, request: pb.DiffRequest, context: Ctx) -> pb.DiffResponse:
        path = normalize_path(request.path)
        caller = self._enter(context, "Diff", path)
        base, to, delta = await self.repo.diff(caller.namespace, path, request.from_version, request.to_version)
        return pb.DiffResponse(
            to=version_info(to), changed=[pb.ByteRange(offset=o, length=n) for o, n in delta.changed],
            shared_chunks=delta.shared_chunks, new_chunks=delta.new_chunks,
            shared_bytes=delta.shared_bytes, new_bytes=delta.new_bytes,
            **({"from": version_info(base)} if base else {}),
        )

    # ---- change feed --------------------------------------------------------------------------

    @rpc
    async def Changes(self, request: pb.ChangesRequest, context: Ctx) -> pb.ChangesResponse:
        prefix = normalize_prefix(request.prefix)
        caller, prefixes = self._enter_listing(context, "Changes", prefix)
        limit = min(request.limit or self.config.default_page_size, self.config.max_page_size)
        events, cursor = await self.repo.changes(caller.namespace, request.since, limit, prefixes)
        return pb.ChangesResponse(events=[event_message(e) for e in events], cursor=cursor)

    # ---- maintenance --------------------------------------------------------------------------

    @rpc
    async def CheckStore(self, request: pb.CheckStoreRequest, context: Ctx) -> pb.CheckStoreResponse:
        caller = self._identify(context, "CheckStore")
        if not caller.admin:
            raise PermissionDeniedError(f"identity {caller.identity!r} does not hold the admin role")
        result = await self.repo.check_store(request.read_data)
        note(damaged=result.damaged, missing=result.missing)
        return pb.CheckStoreResponse(
            chunks_checked=result.checked, bytes_checked=result.checked_bytes, damaged=result.damaged,
            missing=result.missing, awaiting_repair=len(result.awaiting_repair),
            damaged_digests=result.awaiting_repair[:1000],
        )

    @rpc
    async def CollectGarbage(
        self, request: pb.CollectGarbageRequest, context: Ctx
    ) -> pb.CollectGarbageResponse:
        caller = self._identify(context, "CollectGarbage")
        if not caller.admin:
            raise PermissionDeniedError(f"identity {caller.identity!r} does not hold the admin role")
        if self.collector is None:
            raise InvalidInputError("this server was started without garbage collection")
        r = await self.collector.run(dry_run=request.dry_run)
        note(freed_bytes=r.freed_bytes, dry_run=r.dry_run)
        return pb.CollectGarbageResponse(**{
            f.name: getattr(r, f.name) for f in pb.CollectGarbageResponse.DESCRIPTOR.fields
        })

    @rpc
    async def Watch(self, request: pb.WatchRequest, context: Ctx) -> AsyncIterator[pb.Event]:
        prefix = normalize_prefix(request.prefix)
        caller, prefixes = self._enter_listing(context, "Watch", prefix)
        async for event in self.repo.watch(caller.namespace, request.since, prefixes):
            yield event_message(event)


def _forget_result(outcome: PathForget) -> pb.ForgetPathResult:
    """The message of one path's forget outcome (its failure as an ItemError)."""
    return pb.ForgetPathResult(
        path=outcome.path, removed=outcome.removed,
        versions=[pb.VersionVerdict(version=version_info(r), keep=v.keep, reasons=v.reasons)
                  for r, v in outcome.verdicts],
        error=item_error(outcome.error, "Forget") if outcome.error is not None else None,
    )
