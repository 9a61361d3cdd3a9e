"""Garbage collection: give back the space of chunks and manifests that no version references.

Writers never wait: nothing here takes a lock a writer takes. A collection runs in phases and
relies on atomic scripts at the few points where it and a writer meet:

1. *mark* -- read every version of every namespace and load its manifest: the chunks each
   namespace references (a live delta record's base is live too, transitively).
2. *condemn* (epoch E) -- in each namespace, the chunks of its chunk index that no version
   references (garbage, or an upload not committed yet); in the location index, every entry no
   version references. FindMissingChunks, PutChunks and the commit take the chunks they touch off
   the namespace's condemned hash inside their own scripts; a PutChunks that relies on a stored
   record it did not write (or uses as a delta base) claims it off the location index's
   condemned marks before it adds it to a namespace (:meth:`cas.packstore.PackChunkStore.publish`).
3. wait the grace period (longer than any upload-to-commit window one expects; correctness does
   not depend on it, only how often a slow client must upload a chunk again).
4. *mark again*, then *sweep*: drop from each namespace's index the chunks still condemned by E
   and not referenced now (one script per slice: a commit runs wholly before -- it resurrected
   them -- or wholly after -- it finds them missing, and the client uploads them again).
5. *drop*: remove the location entries still condemned by E (not claimed since) that are neither
   referenced, nor in any namespace's chunk index after the sweep, nor a base of a record that is.
   Manifests: an inline one lives in its version record and goes with it. A manifest pack record
   (own location index, service/manifests.py) no version names is condemned in step 2 and dropped
   here if still condemned and still unnamed. The commit that names it claims it again after its
   commit script (service/commits.py, :meth:`service.manifests.ManifestStore.reclaim`) and
   writes it again if the claim finds it dropped, before the client is answered. A commit that
   landed before the second mark read its path is seen by that mark; one that landed after it
   claims after the condemnation: before the drop (the mark is gone, the drop skips the record)
   or after it (the record is written again). So no timing is assumed. Manifest files of
   ``DATA/manifests/`` (stores written before packs held manifests; new saves never go there) no
   version names are deleted.
6. *repack* (:mod:`cas.repack`): rewrite packs whose live fraction fell below the threshold
   (chunk and manifest records alike, each live by its own index).

Crash safety: the state (epoch, time of condemnation) is in Redis; a collection killed after
step 2 resumes at step 3 with the same epoch, one killed before restarts. Marks are only ever
removed by a writer's touch (always safe) or by a sweep/drop that checks them atomically. The
repack order is in :mod:`cas.repack`. Only chunks are deleted that no version references, so a
kill at any point loses no version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cas import repack as packs
from cas.duty import DutyCycle
from cas.errors import BackendUnavailableError, UnsupportedStoreError
from cas.packstore import IndexEntry, PackChunkStore
from service.metadata.condemned import CondemnedChunks
from service.metadata.locations import RedisLocationIndex
from service.repository import Repository

log = logging.getLogger("stratus.gc")
KILL_ENV = "STRATUS_GC_KILL_AT"  # tests: SIGKILL the server when a collection reaches this phase


@dataclass(frozen=True)
class GcSettings:
    """How a collection behaves (config keys ``gc_*``, see service/config.py)."""

    grace_s: float = 3600.0
    min_live_fraction: float = 0.5
    min_reclaim_bytes: int = 0
    lock_ttl_s: float = 15.0
    repack_duty: float = 0.5  # fraction of the time mark, rebase and repack may work (they pause the rest)


@dataclass
class GcReport:
    """What one collection found and did (a dry run only finds)."""

    dry_run: bool = False
    epoch: int = 0
    resumed: bool = False
    namespaces: int = 0
    manifests_live: int = 0
    chunks_live: int = 0
    chunks_condemned: int = 0  # index entries condemned at the start (store-wide)
    chunks_swept: int = 0  # namespace index entries dropped
    chunks_dropped: int = 0  # location index entries dropped (their records are dead)
    chunks_rebased: int = 0  # kept delta records re-encoded off a dead base
    rebased_bytes: int = 0  # disk bytes their new records took (packs included)
    dropped_bytes: int = 0  # record bytes of those
    manifests_removed: int = 0
    packs_removed: int = 0
    packs_rewritten: int = 0
    copied_bytes: int = 0
    freed_bytes: int = 0  # disk bytes given back by this collection
    reclaimable_bytes: int = 0  # dead bytes left in packs afterwards
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class _Mark:
    refs: dict[str, set[bytes]]  # namespace -> chunks its versions reference
    manifests: set[bytes]

    @property
    def live(self) -> set[bytes]:
        return set().union(*self.refs.values()) if self.refs else set()


def kill_hook(phase: str) -> None:
    """SIGKILL this process when ``$STRATUS_GC_KILL_AT`` names ``phase`` (crash tests)."""
    if os.environ.get(KILL_ENV) == phase:
        log.warning("killing the server at garbage collection phase %s (%s)", phase, KILL_ENV)
        os.kill(os.getpid(), signal.SIGKILL)


def with_bases(digests: Iterable[bytes], entries: dict[bytes, IndexEntry]) -> set[bytes]:
    """``digests`` and, transitively, the delta bases their index entries name."""
    out: set[bytes] = set()
    todo = list(digests)
    while todo:
        d = todo.pop()
        if d in out:
            continue
        out.add(d)
        entry = entries.get(d)
        if entry is not None and entry.base is not None:
            todo.append(entry.base)
    return out


class GarbageCollector:
    """Runs collections of one store (one at a time store-wide, under a Redis lock)."""

    def __init__(self, repo: Repository, settings: GcSettings, checkpoint: Callable[[str], None] = kill_hook) -> None:
        self.repo = repo
        self.settings = settings
        self.marks = CondemnedChunks(repo.metadata.client, repo.metadata.prefix)
        self.checkpoint = checkpoint
        self._running = asyncio.Lock()

    def _store(self) -> tuple[PackChunkStore, RedisLocationIndex]:
        store = self.repo.chunks
        if not isinstance(store, PackChunkStore) or not isinstance(store.index, RedisLocationIndex):
            raise UnsupportedStoreError(
                "garbage collection needs the packs layout; this data dir keeps one file per chunk "
                "(store_format 'files'): nothing was changed"
            )
        return store, store.index

    def _manifest_records(self) -> tuple[PackChunkStore, RedisLocationIndex] | None:
        """The store of the manifests kept as pack records (same pack folder, own index), if any."""
        store = self.repo.manifests.store
        if isinstance(store, PackChunkStore) and isinstance(store.index, RedisLocationIndex):
            return store, store.index
        return None

    def _pack_stores(self) -> list[PackChunkStore]:
        """Every store writing to the pack folder (a repack owes each record to its own index)."""
        manifests = self._manifest_records()
        return [self._store()[0], *([manifests[0]] if manifests else [])]

    async def counters(self) -> tuple[int, int]:
        """(reclaimable, reclaimed) bytes as of the last collection."""
        state = await self.marks.state()
        return state.get("reclaimable_bytes", 0), state.get("reclaimed_bytes", 0)

    async def run(self, dry_run: bool = False) -> GcReport:
        """One collection (see the module docstring); a dry run changes nothing."""
        store, _ = self._store()
        if dry_run:  # changes nothing: needs no lock
            return await self._estimate(store, GcReport(dry_run=True), time.monotonic())
        async with self._running:
            ttl = int(self.settings.lock_ttl_s * 1000)
            await self._take_lock(ttl)
            keeper = asyncio.create_task(self._keep_lock(ttl))
            try:
                return await self._collect()
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self.marks.unlock()

    async def _take_lock(self, ttl_ms: int) -> None:
        deadline = time.monotonic() + 2 * ttl_ms / 1000
        while not await self.marks.lock(ttl_ms):
            if time.monotonic() > deadline:
                raise BackendUnavailableError("gc", "another garbage collection is running on this store",
                                              retry_after_s=ttl_ms / 1000)
            await asyncio.sleep(0.2)

    async def _keep_lock(self, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            if not await self.marks.renew(ttl_ms):
                log.error("garbage collection lost its lock")

    async def _collect(self) -> GcReport:
        store, index = self._store()
        started = time.monotonic()
        report = GcReport()
        state = await self.marks.state()
        if state.get("condemned_ms"):
            report.resumed, report.epoch, condemned_ms = True, state["epoch"], state["condemned_ms"]
            log.info("resuming garbage collection epoch %d", report.epoch)
        else:
            condemned_ms = await self._condemn(index, report)
        self.checkpoint("condemned")
        wait = condemned_ms / 1000 + self.settings.grace_s - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._sweep(store, index, report, condemned_ms)
        await self._repack(store, report)
        report.seconds = time.monotonic() - started
        log.info("garbage collection %d: %s", report.epoch, report)
        return report

    # ---- phases ------------------------------------------------------------------------------

    async def _mark(self, report: GcReport) -> _Mark:
        """Every namespace's referenced chunks (a manifest that cannot be read aborts: its chunks
        would look unreferenced). Paced by ``repack_duty``: decoding manifests runs partly on the
        event loop, which the uploads share."""
        mark = _Mark({}, set())
        pacer = DutyCycle(self.settings.repack_duty)
        for ns in await self._namespaces():
            chunks: set[bytes] = set()
            seen: set[bytes] = set()
            async for record in self.repo.metadata.referenced_manifests(ns):
                if record.manifest_digest in seen:
                    continue
                seen.add(record.manifest_digest)
                if not record.manifest:  # stored, not inline in the record
                    mark.manifests.add(record.manifest_digest)
                manifest = await self.repo.manifest(record)
                chunks.update(ref.digest for ref in manifest.chunks)
                await pacer.apause()
            mark.refs[ns] = chunks
        report.namespaces = len(mark.refs)
        report.manifests_live = len(mark.manifests)
        return mark

    async def _namespaces(self) -> list[str]:
        with_files = set(await self.repo.metadata.namespaces())
        return sorted(with_files | set(await self.marks.chunk_namespaces()))

    async def _entries(self) -> dict[bytes, IndexEntry]:
        """The whole location index (a scan paced by ``repack_duty``: it shares the metadata
        server with uploads)."""
        store, _ = self._store()
        pacer = DutyCycle(self.settings.repack_duty)
        return await self.repo.run_blocking(lambda: dict(pacer.paced(store.index.iterate())))

    async def _condemn(self, index: RedisLocationIndex, report: GcReport) -> int:
        """Phase 2: new epoch, old marks cleared, candidates condemned; returns the time of it."""
        report.epoch = await self.marks.next_epoch()
        await self.marks.clear_state("condemned_ms")
        await self._clear_marks(index)
        t0 = time.monotonic()
        mark = await self._mark(report)
        entries = await self._entries()
        report.chunks_live = len(with_bases(mark.live, entries))
        for ns, refs in mark.refs.items():
            candidates: list[bytes] = []
            async for batch in self.marks.chunk_batches(ns):
                candidates += [d for d in batch if d not in refs]
            await self.marks.condemn(ns, list(dict.fromkeys(candidates)), report.epoch)
        # a record only kept records use as their delta base is condemned too: the sweep re-encodes
        # those records (a delta record that newly uses it claims it back, like any upload)
        dead = [d for d in entries if d not in mark.live]
        report.chunks_condemned = len(dead)
        await self.repo.run_blocking(index.condemn_many, dead, report.epoch)
        await self._condemn_manifests(mark, report.epoch)
        condemned_ms = int(time.time() * 1000)
        await self.marks.set_state(epoch=report.epoch, condemned_ms=condemned_ms)
        report.phases["condemn"] = time.monotonic() - t0
        return condemned_ms

    async def _condemn_manifests(self, mark: _Mark, epoch: int) -> None:
        """Condemn the manifest records no version names (a save claims them back, see
        :meth:`service.manifests.ManifestStore.put_many`)."""
        records = self._manifest_records()
        if records is None:
            return
        store, index = records
        stored = await self.repo.run_blocking(lambda: [d for d, _ in store.index.iterate()])
        await self.repo.run_blocking(index.condemn_many, [d for d in stored if d not in mark.manifests], epoch)

    async def _drop_manifests(self, mark: _Mark, epoch: int) -> int:
        """Drop the manifest records still condemned by ``epoch`` that no version names now;
        returns how many went (their bytes go with the next repack)."""
        records = self._manifest_records()
        if records is None:
            return 0
        store, index = records
        stored = await self.repo.run_blocking(lambda: [d for d, _ in store.index.iterate()])
        dropped = await self.repo.run_blocking(
            index.drop_condemned, [d for d in stored if d not in mark.manifests], epoch
        )
        store.note_collected(dropped)
        return len(dropped)

    async def _clear_marks(self, index: RedisLocationIndex) -> None:
        for ns in await self._namespaces():
            await self.marks.clear(ns)
        await self.repo.run_blocking(index.clear_condemned)
        records = self._manifest_records()
        if records is not None:
            await self.repo.run_blocking(records[1].clear_condemned)

    async def _sweep(
        self, store: PackChunkStore, index: RedisLocationIndex, report: GcReport, condemned_ms: int
    ) -> None:
        """Phases 4-5: sweep namespaces, drop location entries, delete manifests."""
        t0 = time.monotonic()
        mark = await self._mark(report)
        held: set[bytes] = set()
        for ns, refs in mark.refs.items():
            condemned = [d for d in await self.marks.condemned(ns, report.epoch) if d not in refs]
            report.chunks_swept += len(await self.marks.sweep(ns, condemned, report.epoch))
            async for batch in self.marks.chunk_batches(ns):
                held.update(batch)
        self.checkpoint("swept")
        entries = await self._entries()
        if await self._rebase(store, mark.live | held, entries, report):
            entries = await self._entries()  # afresh: a concurrent upload may use a base anew
        protected = with_bases(mark.live | held, entries)
        dead = [d for d in entries if d not in protected]
        dropped = await self.repo.run_blocking(index.drop_condemned, dead, report.epoch)
        report.chunks_dropped = len(dropped)
        report.dropped_bytes = sum(e.length for _, e in dropped)
        store.note_collected(dropped)
        self.checkpoint("dropped")
        report.manifests_removed = await self._drop_manifests(mark, report.epoch)
        unused = [d for d in await self.repo.stored_manifests() if d not in mark.manifests]
        report.manifests_removed += await self.repo.remove_manifests(unused, condemned_ms / 1000)
        await self._clear_marks(index)
        await self.marks.clear_state("condemned_ms")
        report.phases["sweep"] = time.monotonic() - t0

    async def _rebase(
        self, store: PackChunkStore, keep: set[bytes], entries: dict[bytes, IndexEntry], report: GcReport
    ) -> bool:
        """Re-encode the kept delta records whose base nothing else keeps (:func:`cas.repack.rebase`:
        against the nearest kept ancestor, else plain; only where that costs less than the base),
        so the base can be dropped; True if any."""
        plan = packs.rebase_plan(entries, keep)
        if not plan:
            return False
        done = await self.repo.run_blocking(
            packs.rebase, store, plan, entries, self.checkpoint, 256, self.settings.repack_duty
        )
        report.chunks_rebased += done.rebased
        report.rebased_bytes += done.written_bytes
        return done.rebased > 0

    async def _repack(self, store: PackChunkStore, report: GcReport) -> None:
        """Phase 6: rewrite sparse packs, remove empty ones; the counters shown by ``stratus info``."""
        t0 = time.monotonic()
        stores = self._pack_stores()
        by_pack = await self.repo.run_blocking(packs.live_entries, stores, self.settings.repack_duty)
        usage = await self.repo.run_blocking(packs.pack_usage, stores, by_pack)
        plan = packs.plan_repack(usage, self.settings.min_live_fraction, self.settings.min_reclaim_bytes)
        done = await self.repo.run_blocking(
            packs.repack, stores, plan, self.checkpoint, self.settings.repack_duty
        )
        report.packs_removed, report.packs_rewritten = done.removed, done.rewritten
        report.copied_bytes, report.freed_bytes = done.copied_bytes, done.freed_bytes - report.rebased_bytes
        report.reclaimable_bytes = max(0, plan.reclaimable - plan.planned)
        await self.marks.add_to_state("reclaimed_bytes", max(0, report.freed_bytes))
        await self.marks.set_state(reclaimable_bytes=report.reclaimable_bytes)
        report.phases["repack"] = time.monotonic() - t0

    async def _estimate(self, store: PackChunkStore, report: GcReport, started: float) -> GcReport:
        """A dry run: what a collection would condemn now and what the packs hold dead."""
        mark = await self._mark(report)
        entries = await self._entries()
        report.chunks_live = len(with_bases(mark.live, entries))
        dead = [d for d in entries if d not in mark.live]  # bases only: re-encoded off, then dropped
        report.chunks_condemned = len(dead)
        report.dropped_bytes = sum(entries[d].length for d in dead)
        stores = self._pack_stores()
        by_pack = await self.repo.run_blocking(packs.live_entries, stores)
        usage = await self.repo.run_blocking(packs.pack_usage, stores, by_pack)
        report.reclaimable_bytes = sum(u.dead for u in usage) + report.dropped_bytes
        stored = await self.repo.run_blocking(lambda: [d for s in stores[1:] for d, _ in s.index.iterate()])
        stored += await self.repo.stored_manifests()
        report.manifests_removed = sum(1 for d in stored if d not in mark.manifests)
        report.seconds = time.monotonic() - started
        return report


async def run_periodically(collector: GarbageCollector, interval_s: float) -> None:
    """The server's background collection: one every ``interval_s`` (errors are logged, the loop
    goes on); an interrupted one resumes soon after a restart."""
    state = await collector.marks.state()
    delay = 1.0 if state.get("condemned_ms") else interval_s
    while True:
        await asyncio.sleep(delay)
        delay = interval_s
        try:
            await collector.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background garbage collection failed")
