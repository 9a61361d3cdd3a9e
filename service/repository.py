"""The server's repository: chunk bytes on disk, manifests, and the Redis metadata, together.

This is the layer between the gRPC handlers and the storage pieces. It knows nothing of
protobuf; it takes and returns :mod:`cas` objects and :class:`service.metadata.VersionRecord`.
CPU-heavy and blocking work (zstd, BLAKE3, disk I/O) runs on a thread pool so the event loop
stays free for thousands of idle watchers; the native libraries release the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cas import codec
from cas.chunker import ChunkParams
from cas.diff import ManifestDiff, diff_manifests
from cas.digest import digest as blake3
from cas.errors import (
    ChunkNotFoundError,
    ChunkTooLargeError,
    CorruptChunkError,
    InvalidInputError,
    NotFoundError,
)
from cas.manifest import EMPTY_FILE_DIGEST, Manifest
from cas.packstore import Hints, LocationIndex, PackChunkStore
from cas.store import ChunkStore, LocalChunkStore, Staged, StoreStats
from service.config import ConfigError
from service.deltadownload import DeltaFrames
from service.journal import Journal
from service.manifests import ManifestStore, from_inline, inline_form, open_manifest_store
from service.metadata import Event, MetadataStore, NamespaceStats, VersionRecord
from service.metadata.store import HeadMoved, PutVersion

log = logging.getLogger("stratus.server")
T = TypeVar("T")
PACKS, FILES = "packs", "files"
MIGRATING = "MIGRATING"  # in the data dir while a migration to packs is unfinished


def store_layout(data_dir: Path, wanted: str) -> str:
    """The chunk layout of ``data_dir``: the one it already has, else ``wanted`` (a new data dir).

    A data dir holding ``chunks/`` (one file per chunk, the layout before packs) keeps it until it
    is migrated (``stratus admin migrate``, service/migrate.py); one holding ``packs/`` refuses to
    be served as files (its chunks would vanish), and one whose migration has not finished
    (``MIGRATING``) refuses to be served at all.
    """
    if (data_dir / MIGRATING).exists():
        raise ConfigError(f"data dir {data_dir} is being migrated to packs; run `stratus admin migrate "
                          f"--data-dir {data_dir}` again to finish it")
    if (data_dir / "packs").is_dir():
        if wanted == FILES:
            raise ConfigError(f"store_format is 'files' but data dir {data_dir} holds packs; "
                              "remove the setting to serve it")
        return PACKS
    return FILES if (data_dir / "chunks").is_dir() else wanted


def open_chunk_store(
    data_dir: Path, layout: str, params: ChunkParams, index: Callable[[], LocationIndex], pack_size: int
) -> ChunkStore:
    """The chunk store of ``data_dir`` in ``layout``; ``index`` makes the location index of packs."""
    if layout == FILES:
        return LocalChunkStore(data_dir / "chunks", max_chunk_size=params.max_size)
    return PackChunkStore(data_dir, index(), max_chunk_size=params.max_size, max_pack_size=pack_size)


def open_stores(
    data_dir: Path, layout: str, params: ChunkParams, index: Callable[[str], LocationIndex], pack_size: int
) -> tuple[ChunkStore, ManifestStore]:
    """The chunk and manifest stores of ``data_dir`` in ``layout`` (blocking: opening packs cuts
    torn tails). ``index(name)`` makes a pack location index: "chunks" or "manifests"."""
    chunks = open_chunk_store(data_dir, layout, params, lambda: index("chunks"), pack_size)
    packs = layout == PACKS
    return chunks, open_manifest_store(data_dir, packs, index("manifests") if packs else None)


def _indexed(store: ChunkStore | ManifestStore, read: Callable[..., T], key: object, *args: object) -> T:
    """``read(key, *args)`` of chunks or a manifest the metadata names (``key`` is a digest or a
    list of them): an absence from the disk is data loss, so that chunk is marked damaged
    (repaired when it is stored again) and reported corrupt, unless garbage collection removed
    it on purpose (a read that raced it: NotFoundError)."""
    try:
        return read(key, *args)
    except ChunkNotFoundError as exc:
        if store.was_collected(exc.digest):  # a reader that raced a garbage collection: gone on purpose
            raise NotFoundError(f"chunk {exc.digest.hex()} was removed by garbage collection") from None
        store.mark_damaged(exc.digest)
        raise CorruptChunkError(exc.digest, "its file is missing from the store") from None


def _published_lost(store: ChunkStore, staged: Sequence[Staged]) -> set[bytes]:
    """Publish ``staged`` (blocking); the digests garbage collection removed meanwhile, which the
    caller must not name (see :meth:`cas.packstore.PackChunkStore.publish`)."""
    store.publish(*staged)
    return set().union(*(batch.lost for batch in staged))


@dataclass(frozen=True)
class IngestResult:
    """What one verified batch of uploaded chunks did to the store."""

    received: int
    stored: int  # new to the uploader's chunk index (or view); never about other namespaces
    frame_bytes: int


@dataclass(frozen=True)
class StoreCheck:
    """The result of :meth:`Repository.check_store`."""

    checked: int
    checked_bytes: int
    damaged: int  # found damaged by this check
    missing: int  # named by an index, without a file, found by this check
    awaiting_repair: list[bytes]  # every chunk marked damaged or missing, after the check


@dataclass(frozen=True)
class Selector:
    """Which version of a path: explicit number, else newest at or before ``as_of_ms``, else head."""

    version: int = 0
    as_of_ms: int = 0


class Repository:
    """Chunks, manifests and versions of every namespace, behind one small async interface."""

    def __init__(
        self,
        data_dir: Path,
        metadata: MetadataStore,
        params: ChunkParams,
        *,
        verify_reads: bool = False,
        threads: int = 0,
        chunks: ChunkStore | None = None,
        manifests: ManifestStore | None = None,
        delta_hints: bool = True,
    ) -> None:
        self.params = params
        self.metadata = metadata
        self.chunks = chunks or LocalChunkStore(data_dir / "chunks", max_chunk_size=params.max_size)
        self.manifests = manifests or open_manifest_store(data_dir, packs=False)
        self.verify_reads = verify_reads
        # Only pack stores keep delta records; the files layout stores every chunk whole.
        self.takes_hints = delta_hints and isinstance(self.chunks, PackChunkStore)
        self.deltas = DeltaFrames(self.chunks, params.max_size)
        self.store_parallelism = max(2, os.cpu_count() or 2)
        self.pool = ThreadPoolExecutor(threads or 2 * (os.cpu_count() or 2), thread_name_prefix="stratus-io")
        self._disk_count: asyncio.Future[StoreStats] | None = None
        self.journal = Journal(data_dir / "journal", self.run_blocking)

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking or CPU-heavy ``fn(*args)`` on the repository's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Stop the worker threads (after in-flight work finishes), then close the chunk store."""
        self.pool.shutdown(wait=True)
        self.journal.close()
        self.chunks.close()
        self.manifests.close()

    async def disk_stats(self, wait: float) -> StoreStats | None:
        """Chunks and bytes on disk (all namespaces), without ever blocking the event loop.

        The first call starts the one full count of the store on a thread of its own (a large
        store takes a while; the pool stays free) and waits at most ``wait`` seconds for it;
        None means it is still counting (or the count failed: logged, and tried again by the next
        call). Afterwards the store keeps counters and this is instant.
        """
        known = self.chunks.known_stats()
        if known is not None:
            return known
        if self._disk_count is None:
            self._disk_count = self._count_in_background()
        count = self._disk_count
        try:
            return await asyncio.wait_for(asyncio.shield(count), wait)
        except TimeoutError:
            return None
        except Exception:
            log.exception("counting the chunk store failed")
            if self._disk_count is count:
                self._disk_count = None
            return None

    def _count_in_background(self) -> asyncio.Future[StoreStats]:
        """Run ``chunks.stats()`` on a daemon thread (shutdown never waits for a count)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreStats] = loop.create_future()

        def deliver(outcome: StoreStats | BaseException) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        def count() -> None:
            try:
                outcome: StoreStats | BaseException = self.chunks.stats()
            except Exception as exc:  # handed to the awaiting call
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(deliver, outcome)

        threading.Thread(target=count, name="stratus-store-count", daemon=True).start()
        return future

    # ---- chunks ---------------------------------------------------------------------------

    def verify(self, digest: bytes, frame: bytes) -> bytes:
        """Decode and BLAKE3-check a frame; returns the chunk's bytes."""
        return codec.decode_verified(digest, frame, self.params.max_size)

    def open_upload(self, ns: str, flush_bytes: int, view: str | None = None) -> ChunkUpload:
        """Start taking a stream of uploaded chunk batches into namespace ``ns`` (and ``view``)."""
        return ChunkUpload(self, ns, flush_bytes, view)

    async def missing(self, ns: str, digests: list[bytes], view: str | None = None) -> list[bytes]:
        """Digests that ``ns`` has not uploaded, that are not in ``view``, or whose stored copy is
        known damaged (request order, no duplicates): a client sends those, and a damaged copy
        heals from what it sends."""
        absent = await self._not_held(ns, digests, view)
        absent.update(self.chunks.damaged_among(digests))
        return [d for d in dict.fromkeys(digests) if d in absent]

    async def _not_held(self, ns: str, digests: list[bytes], view: str | None) -> set[bytes]:
        """The digests missing from ``ns``'s chunk index or, for a confined caller, from ``view``."""
        absent = set(await self.metadata.missing_chunks(ns, digests))
        if view is not None:
            absent.update(await self.metadata.missing_chunks(ns, digests, view))
        return absent

    async def read_frames(
        self, ns: str, digests: list[bytes], view: str | None = None,
        bases: Mapping[bytes, tuple[bytes, ...]] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(frame, base) of chunks that ``ns`` (and ``view``) may read; NotFoundError names any it may not.

        The error is the same whether a chunk is stored nowhere, only in other namespaces or only
        outside ``view``. Every frame is at least header-checked (fully verified with
        ``verify_reads``); a damaged or missing copy is marked damaged and raises
        CorruptChunkError (DATA_LOSS). ``bases`` proposes, per digest, chunks to send it as a delta
        against (service/deltadownload.py); the answer's base is then the first of them. A proposal
        is used only when all its bases are in ``ns``'s chunk index (and ``view``) and none is the
        digest itself, else it is dropped whole without a trace, so the answer is the plain frame
        with base ``b""`` exactly as without it.
        """
        not_held = await self._not_held(ns, digests, view)
        absent = [d for d in dict.fromkeys(digests) if d in not_held]
        if absent:
            raise NotFoundError(f"{len(absent)} requested chunk(s) are not in this namespace, e.g. {absent[0].hex()}")
        usable = await self._held_bases(ns, bases or {}, view)
        # A few slices on the worker threads, the plain frames of each read with one index query:
        # not a task and a metadata round trip per chunk.
        step = max(1, -(-len(digests) // self.store_parallelism))
        parts = await asyncio.gather(*(
            self.run_blocking(self._answers, digests[i:i + step], usable) for i in range(0, len(digests), step)
        ))
        return [answer for part in parts for answer in part]

    def _answers(self, digests: list[bytes], usable: Mapping[bytes, tuple[bytes, ...]]) -> list[tuple[bytes, bytes]]:
        """:meth:`_answer` of each digest, in order; those without usable bases in one index query."""
        plain = [d for d in digests if not usable.get(d)]
        frames = dict(zip(plain, _indexed(self.chunks, self.chunks.get_frames, plain, self.verify_reads), strict=True))
        return [(frames[d], b"") if d in frames else self._answer(d, usable[d]) for d in digests]

    async def _held_bases(
        self, ns: str, bases: Mapping[bytes, tuple[bytes, ...]], view: str | None
    ) -> dict[bytes, tuple[bytes, ...]]:
        """The proposals whose bases ``ns`` (and ``view``) all hold, none of them the chunk itself."""
        proposals = {d: b for d, b in bases.items() if b and d not in b}
        if not proposals:
            return {}
        not_held = await self._not_held(ns, list({x for b in proposals.values() for x in b}), view)
        return {d: b for d, b in proposals.items() if not not_held.intersection(b)}

    def _answer(self, digest: bytes, bases: tuple[bytes, ...] | None) -> tuple[bytes, bytes]:
        """(frame, first base) for one chunk on a worker thread: a delta against ``bases`` when it pays."""
        if bases and not self.verify_reads and (stored := self.deltas.stored(digest, bases)) is not None:
            return stored, bases[0]
        frame = _indexed(self.chunks, self.chunks.get_frame, digest, self.verify_reads)
        if bases:
            found = self.deltas.frame(digest, bases, frame)
            if found is not None:
                return found, bases[0]
        return frame, b""

    async def report_damaged(self, ns: str, digests: list[bytes], view: str | None = None) -> list[bool]:
        """Re-verify the chunks a client found damaged; per digest (request order), True if its
        stored copy is now marked damaged.

        Only digests in ``ns``'s chunk index (and ``view``) are looked at: any other answers False
        without a disk access, exactly like a copy that verifies, so nothing about other namespaces
        shows. Each copy looked at is decoded and BLAKE3-checked in full on the worker threads; one
        that fails, or whose file is gone, is marked damaged (:meth:`ChunkStore.mark_damaged`
        checks it once more), and one that verifies is never marked.
        """
        unique = list(dict.fromkeys(digests))
        absent = await self._not_held(ns, unique, view)
        held = [d for d in unique if d not in absent]
        step = max(1, -(-len(held) // self.store_parallelism))
        parts = [held[i:i + step] for i in range(0, len(held), step)]
        found = await asyncio.gather(*(self.run_blocking(self._damaged_now, part) for part in parts))
        damaged = {d for part in found for d in part}
        return [d in damaged for d in digests]

    def _damaged_now(self, digests: list[bytes]) -> list[bytes]:
        """The digests (all indexed by the caller) whose stored copy fails a full verification now,
        which marks it, or was marked damaged before."""
        bad = []
        for d in digests:
            try:
                _indexed(self.chunks, self.chunks.get_frame, d, True)
            except CorruptChunkError:
                bad += self.chunks.damaged_among([d])  # empty if a verified upload repaired it meanwhile
        return bad

    async def read_data(self, digest: bytes) -> bytes:
        """Decoded, verified bytes of one chunk of a committed version (CorruptChunkError as above)."""
        return await self.run_blocking(_indexed, self.chunks, self.chunks.get, digest)

    async def check_store(self, read_data: bool) -> StoreCheck:
        """Verify every stored chunk and that every chunk a namespace names is stored; marks what fails.

        See :meth:`cas.store.LocalChunkStore.check`, :meth:`cas.packstore.PackChunkStore.check`
        and :meth:`ChunkStore.mark_damaged`.
        """
        store = self.chunks
        assert isinstance(store, (LocalChunkStore, PackChunkStore))
        report = await self.run_blocking(store.check, read_data)
        missing: list[bytes] = []
        async for batch in self.metadata.indexed_chunk_batches():
            missing += await self.run_blocking(self._mark_missing, batch)
        return StoreCheck(
            report.checked, report.checked_bytes, len(report.damaged), len(set(missing)), store.iterate_damaged()
        )

    def _mark_missing(self, digests: list[bytes]) -> list[bytes]:
        """Mark (and return) the digests, not yet known damaged, that the store does not hold (one
        index round trip per batch for packs)."""
        known = set(self.chunks.damaged_among(digests))
        held = self.chunks.has_many(digests)
        return [d for d, ok in zip(digests, held, strict=True)
                if d not in known and not ok and self.chunks.mark_damaged(d)]

    # ---- metadata: what the handlers ask of it (they reach storage and metadata only through here) ----

    async def namespace_stats(self, ns: str) -> NamespaceStats:
        """Counters of a namespace (chunks, bytes, files, versions)."""
        return await self.metadata.stats(ns)

    async def head(self, ns: str, path: str) -> VersionRecord | None:
        """The head version record of ``path`` (a delete marker included), or None."""
        return await self.metadata.head(ns, path)

    async def versions(self, ns: str, path: str, limit: int = 0) -> list[VersionRecord]:
        """Versions of ``path``, newest first (``limit`` 0: all)."""
        return await self.metadata.list_versions(ns, path, limit=limit)

    async def list_files(
        self, ns: str, prefix: str, *, after: str, limit: int, as_of_ms: int, include_deleted: bool
    ) -> tuple[list[VersionRecord], str]:
        """One page of the files under ``prefix`` after ``after``; (records, last path or "")."""
        return await self.metadata.list_files(
            ns, prefix, after=after, limit=limit, as_of_ms=as_of_ms, include_deleted=include_deleted
        )

    async def delete(self, ns: str, path: str, *, identity: str, if_version: int | None) -> VersionRecord:
        """Write a delete marker (one atomic script: head check, marker, event), journaled before it
        returns (service/journal.py)."""
        record = await self.metadata.delete(ns, path, identity=identity, if_version=if_version)
        await self.journal_versions(ns, [record])
        return record

    async def forget_versions(
        self, ns: str, path: str, *, head_version: int, identity: str, versions: Sequence[VersionRecord]
    ) -> list[Event]:
        """Remove versions of a path (one atomic script: head still ``head_version``, else
        VersionConflictError and nothing removed; a ``forgotten`` event each), then journal the
        removals before it returns (service/journal.py), so a rebuild never brings them back. The
        two steps are shielded from cancellation (a client going away, the server stopping): a
        removal the script made is always journaled unless the process dies in between."""

        async def remove_and_journal() -> list[Event]:
            events = await self.metadata.forget(ns, path, head_version=head_version, identity=identity,
                                                versions=versions)
            await self.journal.append_forgotten(ns, events)
            return events

        return await asyncio.shield(remove_and_journal())

    async def commit_group(self, ns: str, puts: Sequence[PutVersion]) -> list[VersionRecord | HeadMoved | Exception]:
        """Append versions of distinct paths, each on its own (one script call: chunks present with
        their lengths, head checks, events); see :meth:`MetadataStore.commit_group`."""
        return await self.metadata.commit_group(ns, puts)

    async def journal_versions(self, ns: str, records: Sequence[VersionRecord]) -> None:
        """Make committed versions durable in the data dir's journal (one barrier for all of them);
        a commit is acknowledged only after this returns."""
        await self.journal.append(ns, records)

    async def changes(
        self, ns: str, since: str, limit: int, prefixes: str | tuple[str, ...]
    ) -> tuple[list[Event], str]:
        """Change-feed events after cursor ``since`` under ``prefixes``; (events, next cursor)."""
        return await self.metadata.changes(ns, since, limit, prefixes)

    def watch(self, ns: str, since: str, prefixes: str | tuple[str, ...]) -> AsyncIterator[Event]:
        """Change-feed events as they happen (from ``since``)."""
        return self.metadata.watch(ns, since, prefixes)

    def damaged_among(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests whose stored copy is known damaged or missing (in order)."""
        return self.chunks.damaged_among(digests)

    async def show_chunks(self, ns: str, refs: Sequence[tuple[bytes, int]], view: str) -> None:
        """Add chunks (digest, length) to a confined caller's chunk view (service/scoped.py)."""
        await self.metadata.add_chunks(ns, list(refs), view)

    async def missing_in_view(self, ns: str, digests: Sequence[bytes], view: str) -> list[bytes]:
        """The digests a confined caller's chunk view lacks (request order)."""
        return await self.metadata.missing_chunks(ns, list(digests), view)

    async def save_manifests(self, manifests: Sequence[Manifest]) -> list[tuple[bytes, bytes]]:
        """(digest, inline encoding or b"") per manifest, in order (service/manifests.py).

        The manifests too large to travel inline are stored first, with one durability barrier
        for all of them, so a version record never names a manifest a crash could lose."""
        encoded = [m.to_bytes() for m in manifests]
        inline = [inline_form(raw) for raw in encoded]
        stored = [m for m, kept in zip(manifests, inline, strict=True) if not kept]
        if stored:
            await self.run_blocking(self.manifests.put_many, stored)
        return [(blake3(raw), kept) for raw, kept in zip(encoded, inline, strict=True)]

    async def reclaim_manifests(self, manifests: Sequence[Manifest]) -> int:
        """After a commit: claim the stored (non-inline) ``manifests`` back from garbage collection
        and store again any it dropped (:meth:`service.manifests.ManifestStore.reclaim`); how many."""
        stored = [m for m in manifests if not inline_form(m.to_bytes())]
        if not stored:
            return 0
        return await self.run_blocking(self.manifests.reclaim, stored)

    async def stored_manifests(self) -> list[bytes]:
        """Digests of the manifests kept as files in ``DATA/manifests/`` (a files-layout store, or
        one written before packs held manifests): what garbage collection deletes one by one."""
        folder = self.manifests.legacy if self.manifests.legacy is not None else self.manifests.store
        if not isinstance(folder, LocalChunkStore):
            return []
        return await self.run_blocking(lambda: list(folder.iterate()))

    async def remove_manifests(self, digests: Sequence[bytes], saved_before: float) -> int:
        """Delete the manifest files of ``digests`` older than ``saved_before`` (epoch seconds);
        returns how many went. The caller guarantees no version references them (service/gc.py);
        new saves go to the store (packs), never to this folder, so no save races the delete."""
        folder = self.manifests.legacy if self.manifests.legacy is not None else self.manifests.store
        if not isinstance(folder, LocalChunkStore):
            return 0

        def remove() -> int:
            removed = 0
            for d in digests:
                with contextlib.suppress(FileNotFoundError):
                    if folder.path_for(d).stat().st_mtime < saved_before and folder.delete(d):
                        removed += 1
            return removed

        return await self.run_blocking(remove)

    async def load_manifest(self, digest: bytes) -> Manifest:
        """Load and verify the stored manifest named by ``digest`` (not an inline one)."""
        raw = await self.run_blocking(_indexed, self.manifests, self.manifests.get, digest)
        return Manifest.from_bytes(raw)

    async def manifest(self, record: VersionRecord) -> Manifest:
        """The verified manifest of a version that is not a delete marker: inline in the record,
        else stored."""
        if record.manifest:
            return from_inline(record.manifest_digest, record.manifest)
        return await self.load_manifest(record.manifest_digest)

    async def manifest_of(self, record: VersionRecord | None) -> Manifest | None:
        """The manifest of a version, or None for no version or a delete marker."""
        if record is None or record.deleted:
            return None
        return await self.manifest(record)

    # ---- versions ---------------------------------------------------------------------------

    async def resolve(self, ns: str, path: str, at: Selector, *, allow_deleted: bool = False) -> VersionRecord:
        """The version ``at`` selects; NotFoundError (with the reason) when there is none."""
        if at.version:
            record = await self.metadata.get_version(ns, path, at.version)
            if record is None:
                raise NotFoundError(f"{path}: no version {at.version}")
        elif at.as_of_ms:
            record = await self.metadata.version_as_of(ns, path, at.as_of_ms)
            if record is None:
                raise NotFoundError(f"{path}: did not exist at that time")
        else:
            record = await self.metadata.head(ns, path)
            if record is None:
                raise NotFoundError(f"{path}: no such file")
        if record.deleted and not allow_deleted:
            raise NotFoundError(f"{path}: deleted (version {record.version} is a delete marker)")
        return record

    async def diff(self, ns: str, path: str, from_version: int, to_version: int) -> tuple[
        VersionRecord | None, VersionRecord, ManifestDiff
    ]:
        """Compare two versions of a path; ``from_version`` 0 means the newest one before ``to``."""
        to = await self.resolve(ns, path, Selector(version=to_version), allow_deleted=True)
        if from_version and from_version >= to.version:
            raise InvalidInputError(f"{path}: FROM ({from_version}) must be older than TO ({to.version})")
        if from_version:
            base = await self.resolve(ns, path, Selector(version=from_version), allow_deleted=True)
        else:  # the newest remaining version before ``to`` (a forget may have removed to - 1)
            base = await self.metadata.version_before(ns, path, to.version)
        old, new = await self.manifest_of(base), await self.manifest_of(to)
        empty = Manifest(chunks=(), size=0, file_digest=EMPTY_FILE_DIGEST)
        return base, to, diff_manifests(old, new or empty)

    def check_manifest_limits(self, manifest: Manifest, max_chunks: int) -> None:
        """Refuse manifests with absurd chunk counts or chunk sizes before any work is done."""
        if len(manifest.chunks) > max_chunks:
            raise ChunkTooLargeError(f"manifest has {len(manifest.chunks)} chunks; the limit is {max_chunks}")
        for ref in manifest.chunks:
            if not 0 < ref.length <= self.params.max_size:
                raise InvalidInputError(
                    f"manifest chunk length {ref.length} is outside 1..{self.params.max_size}"
                )


class ChunkUpload:
    """The chunks of one PutChunks stream on their way into the store.

    Each batch is decoded and BLAKE3-checked in full before any of it is written, so a batch
    with one bad chunk changes nothing. Verified frames go to temp files right away (memory
    stays flat) and are published, with one durability barrier for all of them, every
    ``flush_bytes`` and at the end; only then are they added to the namespace's chunk index,
    so the index never names a chunk that a crash could lose.

    Temp files never outlive the stream: :meth:`discard` removes what is staged, and a batch
    whose staging thread finishes after that (the call was cancelled while it ran) removes its
    own files, so a stream that ends in any way leaves nothing in ``.staging``.

    A publish made because ``flush_bytes`` gathered runs in the background while the next
    batches are verified and staged (its barrier is the slow part); at most one runs at a time,
    each indexes only what it published, and its failure is raised by the next flush or by
    :meth:`finish`, so the stream never reports success for chunks that were not indexed.
    """

    def __init__(self, repo: Repository, ns: str, flush_bytes: int, view: str | None = None) -> None:
        self.repo = repo
        self.ns = ns
        self.view = view
        self.flush_bytes = flush_bytes
        self._staged: list[Staged] = []
        self._lock = threading.Lock()  # _staged and _closed are shared with the staging threads
        self._closed = False
        self._index: list[tuple[bytes, int]] = []
        self._pending_bytes = 0
        self._publishing: asyncio.Task | None = None
        self.received = self.stored = self.frame_bytes = 0

    async def add(self, chunks: Sequence[tuple[bytes, bytes]], hints: Hints | None = None) -> None:
        """Verify and stage one batch; publish what is staged once enough has gathered.

        ``hints`` (digest -> base digests) are passed to the store only where the caller's own
        chunk index (and view) holds the base, see :meth:`_own_hints`.
        """
        loop = asyncio.get_running_loop()
        pool = self.repo.pool
        items = [(d, bytes(f)) for d, f in chunks]
        # A few slices per batch, not one task per chunk: the event loop's cost stays per batch.
        step = max(1, -(-len(items) // self.repo.store_parallelism))
        slices = [items[i:i + step] for i in range(0, len(items), step)]
        verified = await asyncio.gather(*(loop.run_in_executor(pool, self._verify, part) for part in slices))
        data = [b for part in verified for b in part]
        lengths = [len(b) for b in data]
        bases = await self._own_hints(hints or {})
        # The bytes the check decoded, for the chunks a delta may be encoded for (not decoded twice).
        decoded = {d: b for (d, _), b in zip(items, data, strict=True) if d in bases}
        del data, verified
        await asyncio.gather(*(loop.run_in_executor(pool, self._stage, part, bases, decoded) for part in slices))
        if self._closed:  # discarded meanwhile: what was staged is gone, so nothing may be indexed
            return
        self._index += [(d, n) for (d, _), n in zip(chunks, lengths, strict=True)]
        size = sum(len(f) for _, f in items)
        self.received += len(items)
        self.frame_bytes += size
        self._pending_bytes += size
        if self._pending_bytes >= self.flush_bytes:
            await self._settle()
            self._publishing = asyncio.ensure_future(self._publish(*self._take()))

    def _verify(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        return [self.repo.verify(d, f) for d, f in items]

    async def _own_hints(self, hints: Hints) -> Hints:
        """The hints whose base is in the caller's own chunk index (and chunk view): one batched
        metadata check per message, whatever the hints name. Any other hint is dropped without a
        trace: whether a digest is stored for another namespace must not change what the caller
        sees, and a hint it may use only names content it could read anyway."""
        if not hints or not self.repo.takes_hints:
            return {}
        named = list(dict.fromkeys(b for bases in hints.values() for b in bases))
        not_held = await self.repo._not_held(self.ns, named, self.view)
        own = {d: [b for b in bases if b not in not_held] for d, bases in hints.items()}
        return {d: bases for d, bases in own.items() if bases}

    def _stage(self, items: Sequence[tuple[bytes, bytes]], bases: Hints, decoded: Mapping[bytes, bytes]) -> None:
        """Write ``items`` (on a worker thread), as deltas against ``bases`` where that pays, and
        record them, unless discarded."""
        staged = self.repo.chunks.stage(items, bases=bases, decoded=decoded)
        with self._lock:
            if not self._closed:
                self._staged.append(staged)
                return
        self.repo.chunks.discard(staged)

    async def flush(self) -> None:
        """Publish everything staged so far and add it to the namespace's chunk index (after a
        background publish still running, whose failure is raised here)."""
        await self._settle()
        await self._publish(*self._take())

    async def _settle(self) -> None:
        """Wait for the background publish, if any; its failure is raised here."""
        task, self._publishing = self._publishing, None
        if task is not None:
            await task

    def _take(self) -> tuple[asyncio.Future | None, list[tuple[bytes, int]]]:
        """Hand what is staged over to a publish, started now on a worker thread (so it runs
        even if the call is cancelled: staged files never stay in ``.staging``), and return it
        with the index entries to add once it is done."""
        with self._lock:
            staged, self._staged = self._staged, []
        index, self._index = self._index, []
        self._pending_bytes = 0
        if not index:
            return None, index
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.repo.pool, _published_lost, self.repo.chunks, staged), index

    async def _publish(self, barrier: asyncio.Future | None, index: list[tuple[bytes, int]]) -> None:
        """Wait for the ``barrier`` publish, then add ``index`` to the namespace's chunk index."""
        if barrier is not None:
            # Shielded: cancelling the call must not drop the publish's outcome unseen.
            lost = await asyncio.shield(barrier)
            # A chunk a garbage collection removed after it was staged as already stored is not
            # named: the commit reports it missing and the client uploads it again.
            if lost:
                index = [(d, n) for d, n in index if d not in lost]
            # "stored" counts what is new to the uploader's own index: whether the disk already
            # held a chunk (for another namespace, say) must never show.
            added = await self.repo.metadata.add_chunks(self.ns, index)
            if self.view is not None:
                added = await self.repo.metadata.add_chunks(self.ns, index, self.view)
            self.stored += added

    async def finish(self) -> IngestResult:
        """Publish the rest and report what the whole stream did."""
        await self.flush()
        return IngestResult(received=self.received, stored=self.stored, frame_bytes=self.frame_bytes)

    def discard(self) -> None:
        """Drop whatever is staged and unpublished; batches still being staged drop themselves.

        A background publish is cancelled: its barrier still completes (shielded), but what it
        published is not indexed, as for a stream cancelled during a flush.
        """
        task, self._publishing = self._publishing, None
        if task is not None and not task.done():
            task.cancel()
        elif task is not None and not task.cancelled():
            task.exception()  # the stream fails anyway; retrieved so that it is not logged as lost
        with self._lock:
            self._closed = True
            staged, self._staged, self._index = self._staged, [], []
        for batch in staged:
            self.repo.chunks.discard(batch)
