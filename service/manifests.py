"""Where manifests live: inline in their version record, or as records of the store.

A manifest is named by its digest (BLAKE3 of its canonical encoding) wherever it lives.

* **Inline** (canonical encoding at most ``INLINE_MANIFEST_BYTES``): the bytes travel inside the
  version record (Redis/Valkey, and the version journal, so ``rebuild-index`` recovers them from
  the data dir alone). A small file then costs no manifest file, no pack record and no fsync of
  its own: the record is durable when the commit is (journal barrier). 4 KiB holds about 115
  chunk references (a file of ~7 MiB at 64 KiB chunks), so every file of a tree of small files
  and most documents are inline, while a version record stays below ~5.5 KiB (base64) in Redis
  memory and in listings, and a single read of a large file's manifest stays small next to the
  megabytes of chunks it names.
* **Stored** (larger): in the pack layout a :attr:`cas.pack.RecordType.MANIFEST` record in the packs,
  located through an index of its own (so the chunk index never lists a manifest); in the files
  layout a file in ``DATA/manifests/``. Either way it is published (one durability barrier for a
  whole batch) before the commit script runs, so no version record ever names a manifest a crash
  could lose.

Reading by digest tries the store, then ``DATA/manifests/`` (a store written before packs held
manifests, which keeps reading until ``stratus admin migrate`` moves them into packs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cas import codec
from cas.errors import ChunkNotFoundError, CorruptChunkError
from cas.manifest import Manifest
from cas.pack import RecordType
from cas.packstore import LocationIndex, PackChunkStore
from cas.store import ChunkStore, LocalChunkStore

INLINE_MANIFEST_BYTES = 4096
# A manifest of 4M chunks is about 150 MiB; stored ones are frames like chunks.
MAX_MANIFEST_BYTES = 1 << 30
MANIFEST_FOLDER = "manifests"


def inline_form(raw: bytes) -> bytes:
    """What the version record keeps of a manifest encoded as ``raw``: all of it, or b"" when the
    manifest is stored instead."""
    return raw if len(raw) <= INLINE_MANIFEST_BYTES else b""


def from_inline(digest: bytes, raw: bytes) -> Manifest:
    """Decode an inline manifest, checking it is the one ``digest`` names (CorruptChunkError if not)."""
    manifest = Manifest.from_bytes(raw)
    if manifest.digest() != digest:
        raise CorruptChunkError(digest, "the inline manifest of the version record does not match its digest")
    return manifest


class ManifestStore:
    """Stored (large) manifests: one store written to, plus ``DATA/manifests/`` read as a fallback."""

    def __init__(self, store: ChunkStore, legacy: LocalChunkStore | None = None) -> None:
        self.store = store
        self.legacy = legacy

    def put_many(self, manifests: Sequence[Manifest]) -> list[bytes]:
        """Store the manifests with one durability barrier (idempotent); their digests in order.

        On return every one is indexed and unmarked by garbage collection (a record indexed before
        is claimed, one a collection dropped meanwhile is written again). A collection may still
        condemn and drop it before the commit that names it lands: the committer calls
        :meth:`reclaim` after the commit, which is what protects it (service/gc.py)."""
        digests = [m.digest() for m in manifests]
        unique = {d: m for d, m in zip(digests, manifests, strict=True)}
        items = [(d, codec.encode(m.to_bytes(), 1)) for d, m in unique.items()]
        if not isinstance(self.store, PackChunkStore):
            if items:
                self.store.put_many(items)
            return digests
        while items:
            # a record indexed before is claimed off garbage collection's condemned marks when
            # published; one a collection dropped meanwhile (lost) is written again
            staged = self.store.stage(items)
            self.store.publish(staged)
            items = [(d, f) for d, f in items if d in staged.lost]
        return digests

    def reclaim(self, manifests: Sequence[Manifest]) -> int:
        """After the commit that names them: take the manifests' records off garbage collection's
        condemned marks (one round trip) and store again any a collection dropped meanwhile;
        returns how many were stored again.

        This, not the claim of :meth:`put_many`, is what keeps a committed version's manifest: a
        drop removes only records still condemned after the collection's second mark. A commit
        that landed before that mark read its path is seen by it; one that landed after it runs
        this claim after the condemnation, so either before the drop (the mark is gone and the
        drop skips the record) or after it (the record is found gone and written again before
        the commit is acknowledged). No interval of time is assumed."""
        if not manifests or not isinstance(self.store, PackChunkStore):
            return 0  # the files layout is never collected (DATA/manifests/ gets no new saves)
        unique = list({m.digest(): m for m in manifests}.items())
        held = self.store.index.claim_many([d for d, _ in unique])
        lost = [m for (_, m), ok in zip(unique, held, strict=True) if not ok]
        self.put_many(lost)
        return len(lost)

    def get(self, digest: bytes) -> bytes:
        """The verified canonical encoding of a stored manifest; ChunkNotFoundError if held nowhere."""
        try:
            return self.store.get(digest)
        except ChunkNotFoundError:
            if self.legacy is None:
                raise
            return self.legacy.get(digest)

    def has_many(self, digests: Iterable[bytes]) -> list[bool]:
        """Whether each manifest is held (by the store or the legacy folder)."""
        digests = list(digests)
        held = self.store.has_many(digests)
        if self.legacy is None:
            return held
        return [ok or self.legacy.has(d) for d, ok in zip(digests, held, strict=True)]

    def mark_damaged(self, digest: bytes) -> bool:
        """Mark a manifest the metadata names but no copy holds (see :meth:`ChunkStore.mark_damaged`)."""
        return self.store.mark_damaged(digest)

    def was_collected(self, digest: bytes) -> bool:
        """True if the last garbage collection dropped the manifest's record on purpose."""
        return self.store.was_collected(digest)

    def is_empty(self) -> bool:
        """True when neither the store nor the legacy folder holds anything."""
        return self.store.is_empty() and (self.legacy is None or self.legacy.is_empty())

    def rebuild_index(self) -> None:
        """Recreate the manifest location index from the packs (pack layout only; files need none)."""
        if isinstance(self.store, PackChunkStore):
            self.store.rebuild_index()

    def close(self) -> None:
        """Seal the open pack (pack layout) and close descriptors."""
        self.store.close()


def open_manifest_store(data_dir: Path, packs: bool, index: LocationIndex | None = None) -> ManifestStore:
    """The manifest store of ``data_dir``: pack records (``packs``, with their own location
    ``index``) reading ``DATA/manifests/`` as a fallback when it exists, else the files folder."""
    folder = data_dir / MANIFEST_FOLDER
    if not packs:
        return ManifestStore(LocalChunkStore(folder, max_chunk_size=MAX_MANIFEST_BYTES))
    store = PackChunkStore(data_dir, index, max_chunk_size=MAX_MANIFEST_BYTES, kind=RecordType.MANIFEST)
    legacy = LocalChunkStore(folder, max_chunk_size=MAX_MANIFEST_BYTES) if folder.is_dir() else None
    return ManifestStore(store, legacy)
