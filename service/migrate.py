"""Converting a files-layout data dir to packs: ``stratus admin migrate`` (server stopped).

The files layout keeps one file per chunk (``DATA/chunks/ab/cd/<digest>``) and per manifest
(``DATA/manifests/...``); the migration moves every one of them into pack records
(:mod:`cas.packstore`: chunks as chunk records, manifests as manifest records with their own
location index, see service/manifests.py). Versions, chunk indexes and the journal do not change:
they name digests, and a digest reads the same from a pack.

Steps, batch by batch (``batch_bytes`` of frames each):

1. ``DATA/MIGRATING`` is written (durably) before the first pack exists. While it exists a server
   refuses to start on the data dir (service/repository.py :func:`store_layout`): its chunks are
   half in files, half in packs.
2. A batch of files is read and each frame verified in full (decoded, BLAKE3-checked); a copy that
   fails, and every chunk the files layout had marked damaged, is marked damaged in the pack store
   (reads report DATA_LOSS and the next upload of the same content repairs it, as before).
3. The batch is appended to packs, made durable (one barrier) and indexed (:meth:`publish`).
4. Only then are its files removed.

Resumable after a crash or kill -9 at any point: a torn pack tail is cut when the packs are
opened, records appended but never indexed are valid and harmless, and a file whose digest is
already indexed is simply removed. Running the command again finishes the job; the last step
removes the emptied folders and ``DATA/MIGRATING``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cas.errors import CasError, CorruptChunkError
from cas.pack import RecordType, fsync_dir
from cas.packstore import LocationIndex, PackChunkStore
from cas.store import LocalChunkStore
from service.binding import read_store_id
from service.config import ServerConfig
from service.manifests import MANIFEST_FOLDER, MAX_MANIFEST_BYTES
from service.offline import offline_metadata
from service.repository import MIGRATING

CHUNK_FOLDER = "chunks"
DEFAULT_BATCH_BYTES = 64 << 20


class MigrationRefusedError(CasError):
    """The data dir cannot be migrated as it is (another store's metadata, nothing to do); nothing changed."""


@dataclass
class MigrationProgress:
    """Where a migration is: files moved into packs so far, of the total when it started."""

    kind: str = "chunks"  # "chunks", then "manifests"
    done: int = 0
    total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass
class MigrationReport:
    """What :func:`migrate` did; ``damaged`` lists the digests carried over as damaged."""

    chunks: int = 0
    chunk_bytes: int = 0
    manifests: int = 0
    manifest_bytes: int = 0
    damaged: list[str] = field(default_factory=list)
    resumed: bool = False


Progress = Callable[[MigrationProgress], None]


def migration_pending(data_dir: Path) -> bool:
    """True while a migration of ``data_dir`` has started and not finished."""
    return (data_dir / MIGRATING).exists()


def _mark_started(data_dir: Path) -> None:
    marker = data_dir / MIGRATING
    with open(marker, "w") as f:
        f.write("files -> packs; run `stratus admin migrate` to finish\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(data_dir)


def _batches(source: LocalChunkStore, batch_bytes: int) -> Iterator[list[tuple[bytes, int]]]:
    """(digest, file size) of every file of ``source``, in batches of about ``batch_bytes``."""
    batch: list[tuple[bytes, int]] = []
    size = 0
    for digest in source.iterate():
        try:
            n = source.path_for(digest).stat().st_size
        except FileNotFoundError:
            continue
        batch.append((digest, n))
        size += n
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _move(
    source: LocalChunkStore, target: PackChunkStore, batch_bytes: int, progress: MigrationProgress,
    report: Progress, damaged: list[str],
) -> None:
    """Move every file of ``source`` into ``target`` (see the module docstring, steps 2-4)."""
    known_bad = set(source.iterate_damaged())
    for batch in _batches(source, batch_bytes):
        frames: list[tuple[bytes, bytes]] = []
        for digest, _ in batch:
            try:
                if digest in known_bad:
                    raise CorruptChunkError(digest, "marked damaged in the files layout")
                frames.append((digest, source.get_frame(digest, verify=True)))
            except CorruptChunkError:
                target.mark_damaged(digest)
                damaged.append(digest.hex())
        target.put_many(frames)  # durable and indexed when it returns
        for digest, _ in batch:
            source.delete(digest)
        progress.done += len(batch)
        progress.bytes_done += sum(n for _, n in batch)
        report(progress)
    for digest in known_bad - set(bytes.fromhex(d) for d in damaged):
        if not target.has(digest):  # damaged with no file left: still damaged in packs
            target.mark_damaged(digest)
            damaged.append(digest.hex())


def _count(source: LocalChunkStore) -> tuple[int, int]:
    stats = source.stats()
    return stats.chunk_count, stats.stored_bytes


def migrate_store(
    data_dir: Path, config: ServerConfig, index: Callable[[str], LocationIndex], progress: Progress,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> MigrationReport:
    """Move the chunk and manifest files of ``data_dir`` into packs (blocking; module docstring)."""
    chunk_dir, manifest_dir = data_dir / CHUNK_FOLDER, data_dir / MANIFEST_FOLDER
    report = MigrationReport(resumed=migration_pending(data_dir))
    if not report.resumed:
        if not chunk_dir.is_dir():
            raise MigrationRefusedError(f"data dir {data_dir} is not in the files layout (no chunks/ folder)")
        _mark_started(data_dir)
    steps = [
        ("chunks", chunk_dir, config.chunk_params.max_size, RecordType.CHUNK, index("chunks")),
        ("manifests", manifest_dir, MAX_MANIFEST_BYTES, RecordType.MANIFEST, index("manifests")),
    ]
    for kind, folder, max_size, record_type, location_index in steps:
        if not folder.is_dir():
            continue
        source = LocalChunkStore(folder, max_chunk_size=max_size, fsync=False)
        target = PackChunkStore(data_dir, location_index, max_chunk_size=max_size,
                                max_pack_size=config.pack_size, kind=record_type)
        try:
            total, total_bytes = _count(source)
            state = MigrationProgress(kind, 0, total, 0, total_bytes)
            progress(state)
            _move(source, target, batch_bytes, state, progress, report.damaged)
        finally:
            target.close()
        if kind == "chunks":
            report.chunks, report.chunk_bytes = state.done, state.bytes_done
        else:
            report.manifests, report.manifest_bytes = state.done, state.bytes_done
        _remove_emptied(folder)
    (data_dir / MIGRATING).unlink()
    fsync_dir(data_dir)
    return report


def _remove_emptied(folder: Path) -> None:
    """Remove a migrated folder: only temp files and empty folders are left (checked first)."""
    left = LocalChunkStore(folder, fsync=False)
    if next(left.iterate(), None) is not None:
        raise MigrationRefusedError(f"{folder} still holds files after the migration; run it again")
    shutil.rmtree(folder)
    fsync_dir(folder.parent)


async def migrate_offline(
    config: ServerConfig, progress: Progress, batch_bytes: int = DEFAULT_BATCH_BYTES
) -> MigrationReport:
    """Migrate ``config``'s data dir with the server stopped (service/offline.py): the pack
    location indexes are written into the store's Redis/Valkey."""
    async with offline_metadata(config) as offline:
        # The location indexes go into this metadata: it must be the data dir's own.
        disk_id, meta_id = read_store_id(config.data_dir), await offline.metadata.store_id()
        if not disk_id or disk_id != meta_id:
            raise MigrationRefusedError(
                f"data dir {config.data_dir} belongs to store {disk_id or '(none)'} but metadata prefix "
                f"{config.redis_prefix!r} to store {meta_id or '(none)'}; give the server's --redis-url and "
                "STRATUS_REDIS_PREFIX (or --config)"
            )
        return await asyncio.to_thread(
            migrate_store, config.data_dir, config, offline.index, progress, batch_bytes
        )
