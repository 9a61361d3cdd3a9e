"""Recreating the metadata of a store from its data dir alone: ``stratus admin rebuild-index``.

After Redis/Valkey lost its data, the server refuses to start on a data dir that holds chunks
(service/binding.py). The rebuild runs offline, against the stopped server's data dir and an
empty key prefix, and writes back from the version journal (service/journal.py):

* every path, version (with its number, time, identity, mode, mtime, signature and signer key)
  and delete marker of every namespace, and each path's head;
* each namespace's chunk index (digest -> length), from the manifests of the journaled versions;
* the namespace stats (unique and logical bytes, live files, versions);
* the change feed, with every entry under the id its commit had, so cursors clients hold stay
  valid and a client that reads the feed sees the rebuilt versions; ``forgotten`` entries too;
* not the versions a forget removed (journaled as removals): they stay removed;
* the store id binding (``P:store-id``) from ``DATA/STORE_ID``.

Offline, not an RPC: nothing can commit while the index is being rebuilt, and a server cannot
start on the data dir before its index exists anyway. The rebuild refuses a prefix that holds
any data, so it never mixes with or overwrites live metadata.

Nothing is invented. A journaled version whose manifest cannot be read is left out; a chunk a
manifest names that is not in the chunk store is indexed and marked damaged (reads of it fail
with DATA_LOSS and the next upload of the same content repairs it, as after ``admin check``).
Each is listed in the report's problems. Not rebuilt: chunks uploaded but never committed (the
client uploads them again) and the chunk views of confined grantees (service/gate.py), which
they rebuild by uploading.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cas.errors import CasError
from cas.packstore import PackChunkStore
from service.binding import read_store_id, write_store_id
from service.config import ServerConfig
from service.journal import Entry, ForgetEntry, encode_entry, read_all
from service.metadata import Event, VersionRecord
from service.offline import offline_metadata
from service.repository import Repository, open_stores, store_layout


class RebuildRefusedError(CasError):
    """The rebuild would write over existing metadata; nothing was written."""


@dataclass
class NamespaceRebuild:
    """What the rebuild restored in one namespace."""

    paths: int = 0
    versions: int = 0
    delete_markers: int = 0
    chunks: int = 0
    forgotten: int = 0  # versions left out because a forget removed them
    feed_position: str = ""


@dataclass
class RebuildReport:
    """The outcome of :func:`rebuild_index`; ``problems`` lists what could not be recovered."""

    store_id: str = ""
    journal_records: int = 0
    namespaces: dict[str, NamespaceRebuild] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _event_order(event: Event) -> tuple[int, int, int]:
    """Sort key: feed id ("ms-seq"); events without one (re-journaled heads) go last."""
    if not event.cursor:
        return (1, 0, 0)
    ms, _, seq = event.cursor.partition("-")
    return (0, int(ms), int(seq or 0))


def _commit_event(r: VersionRecord) -> Event:
    """The feed entry the commit of ``r`` wrote."""
    return Event(cursor=r.event_id, kind="delete" if r.deleted else "put", path=r.path, version=r.version,
                 size=r.size, time_ms=r.created_ms, identity=r.identity, manifest_digest=r.manifest_digest)


Records = dict[str, dict[str, dict[int, VersionRecord]]]


def journaled_records(entries: list[Entry]) -> Records:
    """ns -> path -> version -> record of every version ever journaled. A version journaled twice
    (an unchanged commit journals its head again) keeps the copy that carries the feed id."""
    out: Records = defaultdict(lambda: defaultdict(dict))
    for e in entries:
        if isinstance(e, ForgetEntry):
            continue
        versions = out[e.ns][e.record.path]
        old = versions.get(e.record.version)
        if old is None or not (old.event_id and not e.record.event_id):
            versions[e.record.version] = e.record
    return out


def latest_records(entries: list[Entry]) -> Records:
    """:func:`journaled_records` without the versions a forget removed (a removed version number is
    never used again, so a removal always applies to the record it names)."""
    out = journaled_records(entries)
    for ns, event in forgotten_events(entries):
        versions = out[ns].get(event.path)
        if versions is not None:
            versions.pop(event.version, None)
    return out


def forgotten_events(entries: list[Entry]) -> list[tuple[str, Event]]:
    """(namespace, ``forgotten`` feed event) of every removal the journal holds, in order."""
    return [(e.ns, e.event) for e in entries if isinstance(e, ForgetEntry)]


async def rebuild_index(repo: Repository, data_dir: Path) -> RebuildReport:
    """Rebuild the metadata under ``repo.metadata``'s prefix from ``data_dir`` (module docstring).

    Raises RebuildRefusedError, writing nothing, when the prefix already holds data or a store id.
    """
    meta = repo.metadata
    if await meta.store_id() is not None or await meta.has_data():
        raise RebuildRefusedError(
            f"metadata prefix {meta.prefix!r} is not empty; rebuild-index writes only into an empty prefix "
            "(stop the server; use a fresh Redis/Valkey or key prefix)"
        )
    report = RebuildReport()
    if isinstance(repo.chunks, PackChunkStore):  # the location indexes, from the packs alone
        await repo.run_blocking(repo.chunks.rebuild_index)
        await repo.run_blocking(repo.manifests.rebuild_index)
    entries, report.problems = await repo.run_blocking(read_all, data_dir / "journal")
    report.journal_records = len(entries)
    on_disk = set(await repo.run_blocking(lambda: list(repo.chunks.iterate())))
    if not entries and on_disk:
        report.problems.append(
            f"the data dir holds {len(on_disk)} chunks but its journal holds no version; no version can be restored"
        )
    removals: dict[str, list[Event]] = defaultdict(list)
    for ns, event in forgotten_events(entries):
        removals[ns].append(event)
    journaled = journaled_records(entries)
    for ns, paths in sorted(latest_records(entries).items()):
        done, restored = await _rebuild_namespace(repo, ns, paths, on_disk, report.problems)
        done.forgotten = len(removals[ns])
        # the feed as it was: the commits of the forgotten versions too, then their removals
        gone = [journaled[ns][e.path][e.version] for e in removals[ns] if e.version in journaled[ns][e.path]]
        feed = [_commit_event(r) for r in restored + gone] + removals[ns]
        done.feed_position = await repo.metadata.restore_feed(ns, sorted(feed, key=_event_order))
        report.namespaces[ns] = done
    store_id = read_store_id(data_dir)
    if store_id is None:
        store_id = str(uuid.uuid4())
        write_store_id(data_dir, store_id)
    report.store_id = await meta.claim_store_id(store_id)
    return report


async def _rebuild_namespace(
    repo: Repository, ns: str, paths: dict[str, dict[int, VersionRecord]], on_disk: set[bytes], problems: list[str]
) -> tuple[NamespaceRebuild, list[VersionRecord]]:
    """Restore one namespace's paths, chunk index and counters; returns what it did and the
    restored versions (their feed entries are written by the caller, with the removals)."""
    out = NamespaceRebuild()
    chunks: dict[bytes, int] = {}
    restored: list[VersionRecord] = []
    live = logical = 0
    for path, versions in sorted(paths.items()):
        kept: list[VersionRecord] = []
        for number in sorted(versions):
            rec = versions[number]
            if not rec.deleted and not await _index_manifest(repo, ns, rec, chunks, on_disk, problems):
                continue
            kept.append(rec)
        if not kept:
            continue
        await repo.metadata.restore_path(ns, path, kept)
        restored += kept
        out.paths += 1
        live += not kept[-1].deleted
        logical += sum(r.size for r in kept if not r.deleted)
        out.delete_markers += sum(r.deleted for r in kept)
    out.versions = len(restored)
    out.chunks = len(chunks)
    await repo.metadata.add_chunks(ns, list(chunks.items()))
    await repo.metadata.restore_counters(ns, logical, live, len(restored))
    return out, restored


async def _index_manifest(
    repo: Repository, ns: str, rec: VersionRecord, chunks: dict[bytes, int], on_disk: set[bytes],
    problems: list[str],
) -> bool:
    """Add the chunks of ``rec``'s manifest to ``chunks``; False (and a problem) if it is unreadable."""
    where = f"{ns}:{rec.path} version {rec.version}"
    try:
        manifest = await repo.manifest(rec)
    except CasError as exc:
        problems.append(f"{where}: manifest {rec.manifest_digest.hex()} cannot be read ({exc}); version not restored")
        return False
    for ref in manifest.chunks:
        if ref.digest not in on_disk and ref.digest not in chunks:
            repo.chunks.mark_damaged(ref.digest)
            problems.append(f"{where}: chunk {ref.digest.hex()} is not in the chunk store; indexed as damaged "
                            "(the next upload of the same content repairs it)")
        chunks.setdefault(ref.digest, ref.length)
    return True


async def seed_journal(repo: Repository) -> int:
    """Journal every version the metadata holds when the journal is still empty (a store written
    before the journal existed); returns how many records were written. Runs at start-up, before
    any commit: afterwards every version of the store is in the journal."""
    if not repo.journal.is_empty() or not await repo.metadata.has_data():
        return 0
    blobs: list[bytes] = []
    for ns in await repo.metadata.namespaces():
        async for record in repo.metadata.all_versions(ns):
            blobs.append(encode_entry(ns, record))
    if blobs:
        await repo.run_blocking(repo.journal.write_seed, blobs)
    return len(blobs)


async def rebuild_offline(config: ServerConfig) -> RebuildReport:
    """Rebuild the metadata of ``config``'s store with the server stopped (service/offline.py)."""
    async with offline_metadata(config) as offline:
        layout = store_layout(config.data_dir, config.store_format)
        chunks, manifests = await asyncio.to_thread(
            open_stores, config.data_dir, layout, config.chunk_params, offline.index, config.pack_size
        )
        repo = Repository(
            config.data_dir, offline.metadata, config.chunk_params, chunks=chunks, manifests=manifests
        )
        try:
            return await rebuild_index(repo, config.data_dir)
        finally:
            repo.close()
