"""The server's repository: chunk bytes on disk, manifests, and the Redis metadata, together.

This is the layer between the gRPC handlers and the storage pieces. It knows nothing of
protobuf; it takes and returns :mod:`cas` objects and :class:`service.metadata.VersionRecord`.
CPU-heavy and blocking work (zstd, BLAKE3, disk I/O) runs on a thread pool so the event loop
stays free for thousands of idle watchers; the native libraries release the GIL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cas import codec
from cas.chunker import ChunkParams
from cas.diff import ManifestDiff, diff_manifests
from cas.errors import ChunkTooLargeError, InvalidInputError, NotFoundError
from cas.manifest import EMPTY_FILE_DIGEST, Manifest
from cas.store import ChunkStore, LocalChunkStore
from service.metadata import MetadataStore, VersionRecord

# Manifests are stored as frames too; a manifest of 4M chunks is about 150 MiB.
MAX_MANIFEST_BYTES = 1 << 30
T = TypeVar("T")


@dataclass(frozen=True)
class IngestResult:
    """What one verified batch of uploaded chunks did to the store."""

    received: int
    stored: int
    frame_bytes: int


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
        verify_reads: bool = True,
        threads: int = 0,
    ) -> None:
        self.params = params
        self.metadata = metadata
        self.chunks: ChunkStore = LocalChunkStore(data_dir / "chunks", max_chunk_size=params.max_size)
        self.manifests: ChunkStore = LocalChunkStore(data_dir / "manifests", max_chunk_size=MAX_MANIFEST_BYTES)
        self.verify_reads = verify_reads
        self.pool = ThreadPoolExecutor(threads or 2 * (os.cpu_count() or 2), thread_name_prefix="stratus-io")

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking or CPU-heavy ``fn(*args)`` on the repository's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Stop the worker threads (after in-flight work finishes)."""
        self.pool.shutdown(wait=True)

    # ---- chunks ---------------------------------------------------------------------------

    def _verify(self, digest: bytes, frame: bytes) -> int:
        return len(codec.decode_verified(digest, frame, self.params.max_size))

    async def ingest(self, ns: str, chunks: Sequence[tuple[bytes, bytes]]) -> IngestResult:
        """Verify a batch of (digest, frame) pairs, then store them and index them in ``ns``.

        Every chunk of the batch is decoded and BLAKE3-checked before any is stored, so a batch
        with one bad chunk changes nothing.
        """
        loop = asyncio.get_running_loop()
        lengths = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._verify, d, f) for d, f in chunks)
        )
        written = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self.chunks.put, d, bytes(f)) for d, f in chunks)
        )
        await self.metadata.add_chunks(ns, [(d, n) for (d, _), n in zip(chunks, lengths, strict=True)])
        return IngestResult(
            received=len(chunks), stored=sum(written), frame_bytes=sum(len(f) for _, f in chunks)
        )

    async def missing(self, ns: str, digests: list[bytes]) -> list[bytes]:
        """Digests that ``ns`` has not uploaded (request order, no duplicates)."""
        return await self.metadata.missing_chunks(ns, digests)

    async def read_frames(self, ns: str, digests: list[bytes]) -> list[bytes]:
        """Frames of chunks that ``ns`` may read; NotFoundError names any it may not."""
        absent = await self.metadata.missing_chunks(ns, digests)
        if absent:
            raise NotFoundError(f"{len(absent)} requested chunk(s) are not in this namespace, e.g. {absent[0].hex()}")
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(self.pool, self.chunks.get_frame, d, self.verify_reads) for d in digests)
            )
        )

    async def read_data(self, digest: bytes) -> bytes:
        """Decoded, verified bytes of one chunk."""
        return await self.run_blocking(self.chunks.get, digest)

    # ---- manifests ------------------------------------------------------------------------

    async def save_manifest(self, manifest: Manifest) -> bytes:
        """Store a manifest under its digest (idempotent) and return the digest."""
        raw = manifest.to_bytes()
        digest = manifest.digest()
        frame = await self.run_blocking(codec.encode, raw, 1)
        await self.run_blocking(self.manifests.put, digest, frame)
        return digest

    async def load_manifest(self, digest: bytes) -> Manifest:
        """Load and verify the manifest named by ``digest``."""
        raw = await self.run_blocking(self.manifests.get, digest)
        return Manifest.from_bytes(raw)

    async def manifest_of(self, record: VersionRecord | None) -> Manifest | None:
        """The manifest of a version, or None for no version or a tombstone."""
        if record is None or record.deleted:
            return None
        return await self.load_manifest(record.manifest_digest)

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
        """Compare two versions of a path; ``from_version`` 0 means the one before ``to``."""
        to = await self.resolve(ns, path, Selector(version=to_version), allow_deleted=True)
        if from_version and from_version >= to.version:
            raise InvalidInputError(f"{path}: FROM ({from_version}) must be older than TO ({to.version})")
        base_number = from_version or to.version - 1
        base = await self.resolve(ns, path, Selector(version=base_number), allow_deleted=True) if base_number else None
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
