"""A chunk store over pack files (:mod:`cas.pack`) with a pluggable location index.

Layout under ``root``: ``packs/`` (the records) and ``damaged/`` (an empty file per digest known
damaged or missing). The index maps a digest to its record's location and kind; everything it
holds can be rebuilt from the packs alone (:meth:`PackChunkStore.rebuild_index`).

Invariants:
- The index names only records that are durable: records are appended, one barrier makes the
  batch durable (:meth:`PackChunkStore.publish`), and only then are they indexed.
- A record is never changed. A damaged copy is repaired by appending a new record and pointing
  the index at it; delete is not supported (space comes back when packs are rewritten, later).
- A delta record's base is a chunk the store held, undamaged, when the delta was written, at a
  depth below the policy's maximum, so a read decodes at most ``max_depth`` bases; recently
  decoded bases are kept in a small LRU cache. A repair of a damaged chunk is stored plain, so
  repairs never lengthen a chain nor close a cycle.
- Records appended by a batch that is discarded, or by racing puts of one digest, stay in their
  pack unindexed: valid, verified frames that a rebuild may index (and a repack drops).
- Garbage collection may remove index entries (service/gc.py). In :meth:`PackChunkStore.publish`
  a batch relies on records it did not write (a digest already indexed, a delta base) only after
  :meth:`LocationIndex.claim_many` confirmed them, before it indexes anything, and claims every
  entry it will name after indexing; those a claim finds gone are listed in
  :attr:`PackStaged.lost` and must not be named by the caller (its client uploads them again).
- A repack (:mod:`cas.repack`) moves records to new packs and switches index entries with a
  compare-and-set; a read that finds its pack gone looks the entry up again and follows the move.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from cas import codec, delta
from cas.digest import check_digest
from cas.errors import ChunkNotFoundError, ChunkTooLargeError, CorruptChunkError, InvalidInputError
from cas.pack import (
    DEFAULT_MAX_PACK_SIZE,
    HEADER_SIZE,
    Location,
    PackReader,
    PackWriter,
    Record,
    RecordType,
    ScanReport,
    fsync_dir,
    list_packs,
    recover,
    scan,
)
from cas.store import CheckReport, ChunkStore, StoreStats, check_room

_HEX = frozenset("0123456789abcdef")
_ENTRY = struct.Struct(">8sIIBBB")
Hints = Mapping[bytes, bytes | Sequence[bytes]]
# Writes keep chains within the policy's max_depth; reads only refuse what no write can make (a
# cycle, or a corrupt index), so a store opened with a smaller max_depth still reads everything.
MAX_READ_DEPTH = 255
REENCODE_LEVEL = 3  # zstd level of a record re-encoded plain by a garbage collection (cas/repack.py)
_MAX_MOVES = 4  # a read follows at most this many repacks of one record


class IndexEntry(NamedTuple):
    """Where a chunk's record is and how to decode it."""

    pack: str
    offset: int
    length: int
    type: RecordType
    method: int
    depth: int = 0
    base: bytes | None = None

    @property
    def location(self) -> Location:
        """The record's location in its pack."""
        return Location(self.pack, self.offset, self.length)

    @property
    def frame_bytes(self) -> int:
        """Bytes of the stored frame (the record without its header)."""
        return self.length - HEADER_SIZE

    def to_bytes(self) -> bytes:
        """19 bytes, plus the 32-byte base digest for a delta record."""
        head = _ENTRY.pack(bytes.fromhex(self.pack), self.offset, self.length, self.type, self.method, self.depth)
        return head + (self.base or b"")

    @classmethod
    def from_bytes(cls, raw: bytes) -> IndexEntry:
        """Inverse of :meth:`to_bytes`."""
        pack, offset, length, kind, method, depth = _ENTRY.unpack_from(raw)
        base = bytes(raw[_ENTRY.size:]) or None
        return cls(pack.hex(), offset, length, RecordType(kind), method, depth, base)

    @classmethod
    def of(cls, location: Location, record: Record) -> IndexEntry:
        """The entry of ``record`` written at ``location``."""
        return cls(*location, record.type, record.method, record.depth, record.base)


class LocationIndex(Protocol):
    """Digest -> :class:`IndexEntry`. Implementations must be safe to call from several threads."""

    def get(self, digest: bytes) -> IndexEntry | None:
        """The entry of ``digest``, or None."""

    def get_many(self, digests: Sequence[bytes]) -> list[IndexEntry | None]:
        """:meth:`get` of each digest, in order (one round trip for a remote index)."""

    def put_many(self, entries: Sequence[tuple[bytes, IndexEntry]], replace: bool = False) -> list[bool]:
        """Add entries; an existing entry is kept unless ``replace``. True where one was written."""

    def contains_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Whether each digest has an entry, in order."""

    def iterate(self) -> Iterator[tuple[bytes, IndexEntry]]:
        """Every (digest, entry), in no particular order."""

    def claim_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Take the digests off any garbage collection's condemned marks; True where indexed."""

    def switch_many(self, moves: Sequence[tuple[bytes, IndexEntry, IndexEntry]]) -> list[bool]:
        """Point each digest at its new entry only if it still holds the old one."""


class MemoryIndex:
    """A :class:`LocationIndex` in a dict (rebuilt from the packs when a store opens)."""

    def __init__(self) -> None:
        self._entries: dict[bytes, IndexEntry] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> IndexEntry | None:
        """The entry of ``digest``, or None."""
        return self._entries.get(digest)

    def get_many(self, digests: Sequence[bytes]) -> list[IndexEntry | None]:
        """:meth:`get` of each digest, in order."""
        return [self._entries.get(d) for d in digests]

    def put_many(self, entries: Sequence[tuple[bytes, IndexEntry]], replace: bool = False) -> list[bool]:
        """Add entries; an existing entry is kept unless ``replace``. True where one was written."""
        written = []
        with self._lock:
            for d, entry in entries:
                fresh = replace or d not in self._entries
                if fresh:
                    self._entries[d] = entry
                written.append(fresh)
        return written

    def contains_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Whether each digest has an entry, in order."""
        return [d in self._entries for d in digests]

    def iterate(self) -> Iterator[tuple[bytes, IndexEntry]]:
        """A snapshot of every (digest, entry)."""
        with self._lock:
            items = list(self._entries.items())
        yield from items

    def claim_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Nothing is ever condemned in memory: whether each digest is indexed."""
        return self.contains_many(digests)

    def switch_many(self, moves: Sequence[tuple[bytes, IndexEntry, IndexEntry]]) -> list[bool]:
        """Compare-and-set of each entry."""
        done = []
        with self._lock:
            for d, old, new in moves:
                ok = self._entries.get(d) == old
                if ok:
                    self._entries[d] = new
                done.append(ok)
        return done

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class PackStaged:
    """Records appended by :meth:`PackChunkStore.stage`, not yet durable nor indexed."""

    count: int
    entries: list[tuple[int, bytes, IndexEntry]] = field(default_factory=list)  # item index, digest, entry
    present: list[bytes] = field(default_factory=list)  # indexed already, so not written: claimed on publish
    packs: list[str] = field(default_factory=list)  # the pack of each appended record, until published
    lost: set[bytes] = field(default_factory=set)  # filled by publish: gone meanwhile, must not be named


@dataclass
class RebuildReport:
    """What :meth:`PackChunkStore.rebuild_index` found."""

    packs: int = 0
    records: int = 0
    indexed: int = 0
    damaged: list[bytes] = field(default_factory=list)  # records found damaged, with no intact copy
    unreadable_spans: int = 0  # damaged spans whose header did not say which digest they held


class BaseCache:
    """Decoded chunks (delta bases), bounded by their total size, least recently used evicted
    first; thread-safe.

    A version history is a stream: each new chunk is encoded against the previous version's chunk
    at its offset, then becomes the base the next version hints at. So a base looked up for an
    encode is not made recent (``touch=False``): it has served, and the new chunk put after it is
    what the next version wants. A cache the size of one version's new chunks then always hits.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes, touch: bool = True) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None and touch:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: bytes, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def discard(self, digest: bytes) -> None:
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._size -= len(old)


class PackChunkStore(ChunkStore):
    """Chunk frames as records in pack files, located through a :class:`LocationIndex`.

    ``index=None`` uses a :class:`MemoryIndex` rebuilt from the packs on open; a persistent index
    is trusted as given (call :meth:`rebuild_index` to recreate it). Opening cuts torn tails off
    unsealed packs that no live process is writing. ``kind`` selects what the store holds
    (chunk frames, with deltas, or manifests).
    """

    def __init__(
        self,
        root: str | Path,
        index: LocationIndex | None = None,
        *,
        max_chunk_size: int = 256 * 1024,
        fsync: bool = True,
        max_pack_size: int = DEFAULT_MAX_PACK_SIZE,
        policy: delta.DeltaPolicy = delta.DeltaPolicy(),
        read_level: int = 1,
        base_cache_bytes: int = 64 * 1024 * 1024,
        max_candidates: int = 3,
        max_open_packs: int = 64,
        kind: RecordType = RecordType.CHUNK,
    ) -> None:
        self.root = Path(root)
        self.max_chunk_size = max_chunk_size
        self.policy = policy
        self.read_level = read_level
        self.max_candidates = max_candidates
        self.kind = kind
        self.fsync = fsync
        (self.root / "packs").mkdir(parents=True, exist_ok=True)
        self.quarantine = self.root / "damaged"
        self.quarantine.mkdir(exist_ok=True)
        if fsync:
            fsync_dir(self.root)
        self.recoveries = [r for r in (recover(self.root, p, fsync) for p in list_packs(self.root)) if r.cut_bytes]
        self.writer = PackWriter(self.root, max_pack_size, fsync)
        self._room = threading.Lock()  # the free-space check and the append it allows are one step
        # Generous (a zstd frame of incompressible bytes is a little larger than the raw one), and
        # enforced by stage(): a read never refuses what a put wrote, nor allocates much more.
        self.max_frame_size = 2 * max_chunk_size + 65536
        self.reader = PackReader(self.root, max_open_packs, HEADER_SIZE + self.max_frame_size)
        self._bases = BaseCache(base_cache_bytes)
        self._lock = threading.Lock()
        self._stats: StoreStats | None = None
        self._collected: frozenset[bytes] = frozenset()
        self._unpublished: Counter[str] = Counter()
        self._damaged = {
            bytes.fromhex(e.name) for e in os.scandir(self.quarantine) if len(e.name) == 64 and _HEX.issuperset(e.name)
        }
        self.index: LocationIndex = index if index is not None else MemoryIndex()
        if index is None:
            self.rebuild_index()

    def kinds(self) -> tuple[RecordType, ...]:
        """The record types this store's index holds."""
        return (RecordType.CHUNK, RecordType.DELTA) if self.kind == RecordType.CHUNK else (self.kind,)

    # ---- writing ---------------------------------------------------------------------------

    def put(self, digest: bytes, frame: bytes) -> bool:
        """Store ``frame`` under ``digest``; True if newly written, False if already present."""
        return self.put_many([(digest, frame)])[0]

    def put_many(self, items: Sequence[tuple[bytes, bytes]], bases: Hints | None = None) -> list[bool]:
        """Store a batch with one durability barrier; ``bases`` maps a digest to likely
        predecessors' digests (hints: see :meth:`stage`)."""
        return self.publish(self.stage(items, bases))

    def stage(
        self, items: Sequence[tuple[bytes, bytes]], bases: Hints | None = None,
        decoded: Mapping[bytes, bytes] | None = None,
    ) -> PackStaged:
        """Append records for the frames not yet stored (or stored damaged), without a barrier.

        ``bases`` maps a digest to one candidate base digest or a sequence of them. Of the
        candidates the store holds undamaged, below the maximum depth (at most
        ``max_candidates``, in the given order), the one giving the smallest delta frame is used
        when :func:`cas.delta.encode_if_smaller` says it pays; otherwise the frame is stored as
        is. Frames are trusted to be verified by the caller (as for :meth:`ChunkStore.put`), and so
        are ``decoded`` (digest -> the frame's bytes, which the caller's check had in hand: the
        store then need not decode the frame again to encode a delta). A batch
        that would leave less than the free-space reserve is refused whole (StorageFullError, see
        :func:`cas.store.check_room`).
        """
        too_large = next((len(f) for _, f in items if len(f) > self.max_frame_size), None)
        if too_large is not None:
            raise ChunkTooLargeError(f"frame of {too_large} bytes, the store takes at most {self.max_frame_size}")
        staged = PackStaged(len(items))
        indexed = self.index.contains_many([check_digest(d) for d, _ in items])
        wanted: list[tuple[int, bytes, bytes, list[bytes]]] = []
        seen: set[bytes] = set()
        for i, ((d, frame), known) in enumerate(zip(items, indexed, strict=True)):
            if d in seen or (known and d not in self._damaged):
                if d not in seen:
                    staged.present.append(d)
                seen.add(d)
                continue
            seen.add(d)
            # A repair is stored plain: a delta could make a cycle with a record based on it.
            hint = (bases or {}).get(d) if not known and d not in self._damaged else None
            candidates = [hint] if isinstance(hint, bytes) else list(hint or [])
            wanted.append((i, d, frame, list(dict.fromkeys(candidates[:self.max_candidates]))))
        usable = self._usable_bases({h for *_, hs in wanted for h in hs}) if self.kind == RecordType.CHUNK else {}
        chains = self._chain_entries(usable.values())
        records, owners = [], []
        for i, d, frame, candidates in wanted:
            found = [usable[h] for h in candidates if usable.get(h) is not None and usable[h][0] != d]
            records.append(self._record(d, frame, found, chains, (decoded or {}).get(d)))
            owners.append((i, d))
        # A batch that would eat into the free-space reserve is refused whole; the check and the
        # append are one step, or concurrent batches could each see room that only one of them has.
        with self._room:
            if records:
                check_room(self.root / "packs", sum(HEADER_SIZE + len(r.payload) for r in records))
            locations = self.writer.append_many(records)
            self._hold(staged, [loc.pack for loc in locations])  # in the same step as the append
        for (i, d), record, loc in zip(owners, records, locations, strict=True):
            staged.entries.append((i, d, IndexEntry.of(loc, record)))
        return staged

    def _hold(self, staged: PackStaged, packs: list[str]) -> None:
        """Count records appended but not yet published (or discarded) per pack: a repack must not
        remove a pack whose records may still be indexed."""
        with self._lock:
            for pack in packs:
                self._unpublished[pack] += 1
        staged.packs += packs

    def _release(self, staged: PackStaged) -> None:
        with self._lock:
            for pack in staged.packs:
                self._unpublished[pack] -= 1
                if not self._unpublished[pack]:
                    del self._unpublished[pack]
        staged.packs = []

    def busy_packs(self) -> set[str]:
        """Packs holding records appended but not yet published or discarded (taken in one step
        with appends, so a record is never appended without its pack counted here)."""
        with self._room, self._lock:
            return set(self._unpublished)

    def _record(
        self, digest: bytes, frame: bytes, candidates: Sequence[tuple[bytes, IndexEntry]],
        chains: Mapping[bytes, IndexEntry], data: bytes | None = None,
    ) -> Record:
        """The record for a verified frame: the smallest worthwhile delta against one of the
        candidate bases (in order, stopping at one under ``policy.good_ratio``), else the frame itself.

        The chunk's decoded bytes, once decoded, go to the base cache: the next version of the
        file hints at this chunk, so its delta encode finds its base without a read."""
        best: Record | None = None
        for base, entry in candidates:
            try:
                base_data = self._candidate_data(base, entry, chains)
                data = codec.decode(frame, self.max_chunk_size) if data is None else data
            except (CorruptChunkError, InvalidInputError):
                continue
            frame_delta = delta.encode_if_smaller(data, base_data, entry.depth, len(frame), self.policy)
            if frame_delta is None or (best is not None and len(frame_delta) >= len(best.payload)):
                continue
            if delta.decode(frame_delta, base_data, self.max_chunk_size) == data:
                best = Record(RecordType.DELTA, digest, frame_delta, delta.METHOD_DELTA, base, entry.depth + 1)
                if len(frame_delta) < self.policy.good_ratio * len(frame):
                    break  # good enough: the other candidates cost an encode each
        if data is not None and (best is None or best.depth < self.policy.max_depth):
            # Verified bytes (the caller checked the frame's digest). A record at the maximum depth
            # is never a base itself (the next version re-anchors on its base), so is not kept.
            self._bases.put(digest, data)
        if best is not None:
            return best
        method = frame[3] if len(frame) > 3 else 0
        return Record(self.kind, digest, bytes(frame), method)

    def _usable_bases(self, hints: Iterable[bytes]) -> dict[bytes, tuple[bytes, IndexEntry]]:
        """hint -> the base to use for it: the hinted chunk, or when it is at the maximum depth its
        own base (similar content one step up its chain, so long histories keep delta-coding
        instead of restarting plain). Hints with no usable base are left out. One batched index
        lookup per chain step, whatever the number of hints."""
        current = {h: h for h in hints}
        found: dict[bytes, tuple[bytes, IndexEntry]] = {}
        for _ in range(MAX_READ_DEPTH):  # bounded even if a corrupt index made a cycle
            names = list(dict.fromkeys(current.values()))
            entries = dict(zip(names, self.index.get_many(names), strict=True)) if names else {}
            climb: dict[bytes, bytes] = {}
            for hint, base in current.items():
                entry = entries[base]
                if entry is not None and entry.depth >= self.policy.max_depth and entry.base is not None:
                    climb[hint] = entry.base
                elif entry is not None and entry.depth < self.policy.max_depth and base not in self._damaged:
                    found[hint] = (base, entry)
            if not climb:
                break
            current = climb
        return found

    def _chain_entries(self, bases: Iterable[tuple[bytes, IndexEntry]]) -> dict[bytes, IndexEntry]:
        """The index entries a decode of ``bases`` needs (their chains, down to a cached or plain
        record): one batched lookup per chain step, so a read of a delta base costs no round trip
        of its own. A missing entry is left out (the decode then looks it up and fails as usual)."""
        known: dict[bytes, IndexEntry] = {}
        step = [entry.base for _, entry in bases if entry.base is not None]
        for _ in range(self.policy.max_depth):
            names = [d for d in dict.fromkeys(step) if d not in known and self._bases.get(d) is None]
            if not names:
                break
            found = [(d, e) for d, e in zip(names, self.index.get_many(names), strict=True) if e is not None]
            known.update(found)
            step = [e.base for _, e in found if e.base is not None]
        return known

    def _candidate_data(self, base: bytes, entry: IndexEntry, chains: Mapping[bytes, IndexEntry]) -> bytes:
        """A candidate base's bytes for an encode. A base one below the maximum depth is where
        chains at the maximum re-anchor (see :meth:`_usable_bases`): every later version is encoded
        against it, so it is kept and made recent; any other base has served once it is used."""
        anchor = entry.depth == self.policy.max_depth - 1
        data = self._bases.get(base, touch=anchor)
        if data is None:
            data = self._data(base, entry, 0, chains)
            if anchor:
                self._bases.put(base, data)
        return data

    def _base_data(self, digest: bytes, entry: IndexEntry, known: Mapping[bytes, IndexEntry], depth: int = 0) -> bytes:
        """A base's decoded, verified bytes: from the cache, else decoded (then cached); the
        entries of its chain are taken from ``known`` where there, else looked up."""
        data = self._bases.get(digest)
        if data is None:
            data = self._data(digest, entry, depth, known)
            self._bases.put(digest, data)
        return data

    def publish(self, *batches: PackStaged) -> list[bool]:
        """Make the staged records durable (one barrier for all batches), then index them.

        Returns, per staged item in order, True if it was newly stored (or repaired a damaged copy).
        """
        self.writer.flush()
        results: list[bool] = []
        for batch in batches:
            self._claim(batch)
            flags = [False] * batch.count
            repairs = [(i, d, e) for i, d, e in batch.entries if d in self._damaged]
            fresh = [(i, d, e) for i, d, e in batch.entries if d not in self._damaged]
            written = self.index.put_many([(d, e) for _, d, e in fresh])
            if repairs:
                self.index.put_many([(d, e) for _, d, e in repairs], replace=True)
                self._clear_damaged([d for _, d, _ in repairs])
            # Every entry the caller will name is claimed too (one round trip): a copy another upload
            # indexed first, or a repaired entry, may carry an older collection's condemned mark.
            named = [d for _, d, _ in batch.entries]
            batch.lost |= {d for d, ok in zip(named, self.index.claim_many(named), strict=True) if not ok}
            for (i, _, e), ok in zip(fresh, written, strict=True):
                flags[i] = ok
                if ok:
                    self._count(1, e.frame_bytes)
            for i, _, e in repairs:
                flags[i] = True
                self._count(1, e.frame_bytes)
            self._release(batch)
            results += flags
        return results

    def _claim(self, batch: PackStaged) -> None:
        """Before indexing: confirm the records the batch relies on without having written them
        (already indexed digests, delta bases) with one claim; what a collection removed meanwhile goes to
        ``batch.lost``, and a delta record on a lost base is not indexed (lost too)."""
        bases = [e.base for _, _, e in batch.entries if e.base is not None]
        wanted = list(dict.fromkeys([*batch.present, *bases]))
        if not wanted:
            return
        gone = {d for d, ok in zip(wanted, self.index.claim_many(wanted), strict=True) if not ok}
        if not gone:
            return
        batch.lost |= gone & set(batch.present)
        kept = []
        for i, d, e in batch.entries:
            if e.base is not None and e.base in gone:
                batch.lost.add(d)
            else:
                kept.append((i, d, e))
        batch.entries = kept

    def discard(self, staged: PackStaged) -> None:
        """Forget a staged batch: its records stay in their pack, unindexed (see the module doc)."""
        staged.entries.clear()
        self._release(staged)

    def close(self) -> None:
        """Seal the open pack and close every descriptor."""
        self.writer.close()
        self.reader.close()

    def note_collected(self, dropped: Sequence[tuple[bytes, IndexEntry]]) -> None:
        """Take the entries a garbage collection removed off the counters, and remember their
        digests (replacing the previous list): a read that looked one up just before finds it
        gone on purpose, not lost."""
        self._collected = frozenset(d for d, _ in dropped)
        counted = [e for d, e in dropped if d not in self._damaged]
        self._count(-len(counted), -sum(e.frame_bytes for e in counted))

    def note_reencoded(self, switched: Sequence[tuple[IndexEntry, IndexEntry]]) -> None:
        """Count the (old, new) entries a garbage collection switched to re-encoded records."""
        self._count(0, sum(new.frame_bytes - old.frame_bytes for old, new in switched))

    def was_collected(self, digest: bytes) -> bool:
        """True if the last garbage collection removed ``digest``."""
        return digest in self._collected

    def _count(self, chunks: int, size: int) -> None:
        with self._lock:
            if self._stats is not None:
                self._stats.chunk_count += chunks
                self._stats.stored_bytes += size

    # ---- reading ---------------------------------------------------------------------------

    def _entry(self, digest: bytes, known: Mapping[bytes, IndexEntry] | None = None) -> IndexEntry:
        d = check_digest(digest)
        entry = None if d in self._damaged or not known else known.get(d)
        if entry is None and d not in self._damaged:
            entry = self.index.get(d)
        return self._usable_entry(d, entry)

    def _usable_entry(self, digest: bytes, entry: IndexEntry | None) -> IndexEntry:
        """``entry`` (the index's answer for ``digest``), unless the copy is damaged or absent."""
        if digest in self._damaged:
            raise CorruptChunkError(
                digest, "the stored copy is damaged; it is repaired when the chunk is uploaded again"
            )
        if entry is None:
            raise ChunkNotFoundError(digest)
        return entry

    def _read(self, digest: bytes, entry: IndexEntry) -> Record:
        for _ in range(_MAX_MOVES):
            try:
                record = self.reader.read(entry.location, digest)
                break
            except CorruptChunkError:
                fresh = self.index.get(digest)
                if fresh is None or fresh == entry:
                    raise
                entry = fresh  # a repack moved the record after it was looked up: follow it
        else:
            raise CorruptChunkError(digest, "its record kept moving while it was read")
        if record.type != entry.type or record.base != entry.base or record.depth != entry.depth:
            raise CorruptChunkError(digest, "pack record does not match its index entry")
        return record

    def _data(
        self, digest: bytes, entry: IndexEntry, depth: int = 0, known: Mapping[bytes, IndexEntry] | None = None
    ) -> bytes:
        """Decoded, verified bytes (bases decoded recursively, at most ``policy.max_depth`` deep;
        their entries from ``known`` where there, else looked up)."""
        record = self._read(digest, entry)
        if record.type != RecordType.DELTA:
            return self._decode(digest, record.payload)
        if depth >= MAX_READ_DEPTH:
            raise CorruptChunkError(digest, f"delta chain deeper than {MAX_READ_DEPTH} (a cycle?)")
        assert record.base is not None
        base_data = self._bases.get(record.base)
        if base_data is None:
            try:
                base_data = self._base_data(record.base, self._entry(record.base, known), known or {}, depth + 1)
            except ChunkNotFoundError:
                fresh = self.index.get(digest)
                if fresh is None or fresh == entry:
                    self.mark_damaged(record.base)
                    raise CorruptChunkError(digest, "its delta base is missing") from None
                # a collection re-encoded this record and dropped its old base after the lookup
                return self._data(digest, fresh, depth + 1)
            except CorruptChunkError as exc:
                self.mark_damaged(record.base)
                raise CorruptChunkError(digest, f"its delta base is unreadable: {exc}") from None
        try:
            return delta.decode_verified(digest, record.payload, base_data, self.max_chunk_size)
        except InvalidInputError as exc:
            raise CorruptChunkError(digest, str(exc)) from None

    def get(self, digest: bytes) -> bytes:
        """Decoded, verified bytes; a copy that fails is marked damaged before the error."""
        entry = self._entry(digest)
        try:
            return self._data(digest, entry)
        except CorruptChunkError:
            self.mark_damaged(digest)
            raise

    def get_frame(self, digest: bytes, verify: bool = True) -> bytes:
        """The chunk as a :mod:`cas.codec` frame: the stored frame, or for a delta record the
        decoded bytes re-encoded at ``read_level`` (always verified: decoding checks the digest).

        Every record's checksums are checked; ``verify`` also decodes and hashes a plain frame.
        """
        return self._frame(digest, self._entry(digest), verify)

    def get_frames(self, digests: Sequence[bytes], verify: bool = True) -> list[bytes]:
        """:meth:`get_frame` of each digest, in order, with one index query for all of them."""
        checked = [check_digest(d) for d in digests]
        entries = self.index.get_many(checked)
        return [self._frame(d, self._usable_entry(d, e), verify) for d, e in zip(checked, entries, strict=True)]

    def _frame(self, digest: bytes, entry: IndexEntry, verify: bool) -> bytes:
        """The frame of ``digest`` whose index entry is ``entry`` (see :meth:`get_frame`)."""
        try:
            if entry.type == RecordType.DELTA:
                return codec.encode(self._data(digest, entry), self.read_level)
            record = self._read(digest, entry)
            if verify:
                self._decode(digest, record.payload)
            return record.payload
        except CorruptChunkError:
            self.mark_damaged(digest)
            raise

    def reencode(self, digest: bytes, entry: IndexEntry, base: bytes | None) -> Record:
        """A new record of the data ``entry`` (``digest``'s record) holds that does not depend on
        its current base: a delta against ``base`` when it pays, else a plain frame.

        ``base`` must be an ancestor on ``entry``'s chain (or None), so the new record is no deeper
        than the old one and records based on it keep within their recorded depth."""
        data = self._data(digest, entry)
        found = []
        if base is not None and base not in self._damaged:
            held = self.index.get(base)
            if held is not None and held.depth < self.policy.max_depth:
                found = [(base, held)]
        return self._record(digest, codec.encode(data, REENCODE_LEVEL), found, self._chain_entries(found), data)

    def get_record(self, digest: bytes) -> Record:
        """The stored record as is (checksums checked, a delta not decoded)."""
        return self._read(digest, self._entry(digest))

    def has(self, digest: bytes) -> bool:
        """True if ``digest`` is indexed and not known to be damaged."""
        return self.has_many([digest])[0]

    def has_many(self, digests: Iterable[bytes]) -> list[bool]:
        """:meth:`has` for each digest, with one index call."""
        digests = list(digests)
        damaged = self._damaged
        return [ok and d not in damaged for d, ok in zip(digests, self.index.contains_many(digests), strict=True)]

    def delete(self, digest: bytes) -> bool:
        """Not supported: records never change, and a chunk may be the base of delta records."""
        raise NotImplementedError("pack stores do not delete single chunks; packs are rewritten instead")

    def iterate(self) -> Iterator[bytes]:
        """Every indexed digest."""
        for d, _ in self.index.iterate():
            yield d

    def is_empty(self) -> bool:
        """True if no pack exists: the packs, not the index, tell (an index can be lost)."""
        return not list_packs(self.root)

    def known_stats(self) -> StoreStats | None:
        """The counters once :meth:`stats` has counted the index, else None."""
        with self._lock:
            return None if self._stats is None else StoreStats(self._stats.chunk_count, self._stats.stored_bytes)

    def stats(self) -> StoreStats:
        """Chunk count and stored frame bytes (from the index once, then kept as counters)."""
        with self._lock:
            if self._stats is None:
                count = size = 0
                for d, entry in self.index.iterate():
                    if d in self._damaged:
                        continue
                    count += 1
                    size += entry.frame_bytes
                self._stats = StoreStats(count, size)
            return StoreStats(self._stats.chunk_count, self._stats.stored_bytes)

    # ---- damage ----------------------------------------------------------------------------

    def mark_damaged(self, digest: bytes) -> bool:
        """Record that ``digest``'s copy is damaged or missing, unless it now verifies."""
        d = check_digest(digest)
        if d in self._damaged:
            return True
        entry = self.index.get(d)
        if entry is not None:
            try:
                self._data(d, entry)
                return False
            except CorruptChunkError:
                pass
        self._bases.discard(d)
        (self.quarantine / d.hex()).touch()
        if self.fsync:
            fsync_dir(self.quarantine)
        with self._lock:
            self._damaged.add(d)
            if entry is not None and self._stats is not None:
                self._stats.chunk_count -= 1
                self._stats.stored_bytes -= entry.frame_bytes
        return True

    def _clear_damaged(self, digests: list[bytes]) -> None:
        for d in digests:
            (self.quarantine / d.hex()).unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.quarantine)
        with self._lock:
            self._damaged.difference_update(digests)

    def damaged_among(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests, first-seen order without duplicates, known damaged or missing."""
        damaged = self._damaged
        return list(dict.fromkeys(d for d in digests if d in damaged)) if damaged else []

    def iterate_damaged(self) -> list[bytes]:
        """Every digest marked damaged or missing (sorted)."""
        with self._lock:
            return sorted(self._damaged)

    def check(self, read_data: bool = False) -> CheckReport:
        """Read every indexed record (checksums); with ``read_data`` also decode and hash it.

        Records that fail are marked damaged and listed in the report.
        """
        report = CheckReport()
        for d, entry in self.index.iterate():
            if d in self._damaged:
                continue
            report.checked += 1
            report.checked_bytes += entry.frame_bytes
            try:
                self._data(d, entry) if read_data else self._read(d, entry)
            except CorruptChunkError:
                if self.mark_damaged(d):
                    report.damaged.append(d)
        return report

    # ---- rebuilding ------------------------------------------------------------------------

    def rebuild_index(self) -> RebuildReport:
        """Recreate the index from the packs alone (existing entries are replaced).

        Of several intact records of one digest, the one with the shortest delta chain wins (a
        plain frame first). A digest seen only in damaged records is marked damaged (the tail of a
        pack another process is still appending to is in flight, not damaged).
        """
        report = RebuildReport()
        best: dict[bytes, IndexEntry] = {}
        damaged: set[bytes] = set()
        kinds = self.kinds()
        self.writer.close()  # every pack stable while it is scanned
        for pack in list_packs(self.root):
            report.packs += 1
            scanned = ScanReport()
            for location, record in scan(self.root, pack, scanned):
                report.records += 1
                if record.type not in kinds:
                    continue
                old = best.get(record.digest)
                if old is None or record.depth <= old.depth:
                    best[record.digest] = IndexEntry.of(location, record)
            for offset, record in scanned.damaged:
                if offset >= scanned.end and not scanned.sealed:
                    continue  # the tail of a pack another process is appending to: in flight, not damage
                if record is None:
                    report.unreadable_spans += 1
                elif record.type in kinds:
                    damaged.add(record.digest)
        self.index.put_many(list(best.items()), replace=True)
        report.indexed = len(best)
        report.damaged = sorted(damaged - best.keys())
        with self._lock:
            self._stats = None
        for d in report.damaged:
            self.mark_damaged(d)
        return report

