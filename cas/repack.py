"""Repacking: rewrite packs that hold mostly dead records, so their space comes back.

A record is *live* when the store's index points at its exact location; everything else in a
pack (records whose entry a garbage collection removed, copies of racing uploads, the tail of a
discarded batch, a torn or orphaned record) is dead. :func:`plan_repack` (pure) picks the packs
worth rewriting; :func:`repack` copies their live records, unchanged (a delta record keeps its
base digest, and the base stays indexed because it is live), into new packs.

Crash safety, in this order, so a kill at any point loses nothing:
1. the copies are appended and made durable (one barrier) before any index entry names them;
2. each entry is switched with a compare-and-set (only if it still names the old location: a
   repair or a concurrent move wins) -- a crash in between leaves both copies, either indexed;
3. the old pack is removed only once no entry names any of its records and none of its records
   awaits publishing (:meth:`cas.packstore.PackChunkStore.busy_packs`); a reader that looked the entry up before
   the switch and finds the pack gone looks it up again (:class:`cas.packstore.PackChunkStore`).
An interrupted repack leaves at worst an unindexed copy (dead, reclaimed by a later repack) and an
old pack with fewer live records (rewritten or removed by a later repack).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cas.duty import DutyCycle
from cas.pack import (
    FILE_HEADER_SIZE,
    HEADER_SIZE,
    SEAL_SIZE,
    PackWriter,
    Record,
    RecordType,
    fsync_dir,
    is_sealed,
    list_packs,
    pack_path,
    scan,
)
from cas.packstore import IndexEntry, PackChunkStore

Checkpoint = Callable[[str], None]
PACK_OVERHEAD = FILE_HEADER_SIZE + SEAL_SIZE  # bytes of a sealed pack that are no record


@dataclass(frozen=True)
class PackUsage:
    """One sealed pack: its size on disk and the bytes of its live records."""

    pack: str
    size: int
    live: int

    @property
    def dead(self) -> int:
        """Bytes of dead records (what a rewrite gives back; a new pack has a header and seal too)."""
        return max(0, self.size - PACK_OVERHEAD - self.live)

    @property
    def live_fraction(self) -> float:
        """Live bytes per record byte (1.0 for a pack of live records only)."""
        return self.live / max(1, self.size - PACK_OVERHEAD)


@dataclass(frozen=True)
class RepackPlan:
    """Packs to remove (nothing live) and to rewrite (live fraction below the threshold)."""

    remove: tuple[str, ...] = ()
    rewrite: tuple[str, ...] = ()
    reclaimable: int = 0  # dead bytes in every sealed pack
    planned: int = 0  # bytes the plan gives back


def plan_repack(
    usage: Sequence[PackUsage], min_live_fraction: float, min_reclaim_bytes: int = 0
) -> RepackPlan:
    """Which packs to remove and which to rewrite (pure).

    A pack with no live record is removed. A pack whose live bytes are below ``min_live_fraction``
    of its record bytes is rewritten, emptiest first (with 1.0: every pack holding a dead record).
    Nothing is rewritten when the plan would give back less than ``min_reclaim_bytes`` (empty packs
    are removed whatever the total).
    """
    if not 0 <= min_live_fraction <= 1:
        raise ValueError(f"min_live_fraction {min_live_fraction} is outside [0, 1]")
    remove = tuple(sorted(u.pack for u in usage if u.live == 0))
    sparse = sorted((u for u in usage if u.live and u.dead and u.live_fraction < min_live_fraction),
                    key=lambda u: (u.live_fraction, u.pack))
    freed = sum(u.size for u in usage if u.live == 0)
    rewrite: tuple[str, ...] = ()
    if freed + sum(u.dead for u in sparse) >= max(1, min_reclaim_bytes):
        rewrite = tuple(u.pack for u in sparse)
        freed += sum(u.dead for u in sparse)
    return RepackPlan(remove, rewrite, sum(u.dead for u in usage), freed)


@dataclass
class RepackResult:
    """What :func:`repack` did."""

    removed: int = 0  # packs removed
    rewritten: int = 0  # packs rewritten (then removed)
    copied_records: int = 0
    copied_bytes: int = 0
    freed_bytes: int = 0  # bytes of removed packs minus bytes written
    skipped: list[str] = field(default_factory=list)  # packs left as they were
    new_packs: set[str] = field(default_factory=set)


Stores = PackChunkStore | Sequence[PackChunkStore]


def _listed(stores: Stores) -> list[PackChunkStore]:
    """The stores sharing one pack folder (chunks, manifests), each owning some record types."""
    return [stores] if isinstance(stores, PackChunkStore) else list(stores)


def _owner(stores: list[PackChunkStore], kind: RecordType) -> PackChunkStore | None:
    return next((s for s in stores if kind in s.kinds()), None)


def live_entries(stores: Stores, duty: float = 1.0) -> dict[str, list[tuple[bytes, IndexEntry]]]:
    """The index entries of every pack (one pass over each store's index, paced by ``duty``)."""
    by_pack: dict[str, list[tuple[bytes, IndexEntry]]] = defaultdict(list)
    pacer = DutyCycle(duty)
    for store in _listed(stores):
        for d, entry in pacer.paced(store.index.iterate()):
            by_pack[entry.pack].append((d, entry))
    return by_pack


def _busy(stores: list[PackChunkStore]) -> set[str]:
    """Packs a writer of any of the stores holds (open, or with records not yet published)."""
    return set().union(*(s.busy_packs() | {s.writer.open_pack} for s in stores))


def pack_usage(stores: Stores, by_pack: dict[str, list[tuple[bytes, IndexEntry]]]) -> list[PackUsage]:
    """Usage of every sealed pack no writer holds (the open packs, unsealed ones and packs with
    records not yet published are skipped)."""
    listed = _listed(stores)
    root = listed[0].root
    usage = []
    busy = _busy(listed)
    for pack in list_packs(root):
        if pack in busy:
            continue
        try:
            if not is_sealed(root, pack):
                continue
            size = pack_path(root, pack).stat().st_size
        except FileNotFoundError:
            continue
        usage.append(PackUsage(pack, size, sum(e.length for _, e in by_pack.get(pack, ()))))
    return usage


def repack(
    stores: Stores, plan: RepackPlan, checkpoint: Checkpoint = lambda phase: None, duty: float = 1.0,
) -> RepackResult:
    """Carry out ``plan`` (see the module docstring for the order that keeps it crash-safe). Which
    records are live is read afresh from the indexes pack by pack: the plan's snapshot may be stale.
    ``stores`` share one pack folder; each record is live or not in the index of the store owning
    its type, and its copy is switched there.

    ``duty`` < 1 pauses after each pack so the rewrite works at most that fraction of the time
    (the rest of the machine goes to uploads and reads).
    """
    listed = _listed(stores)
    result = RepackResult()
    pacer = DutyCycle(duty)
    writer = PackWriter(listed[0].root, listed[0].writer.max_pack_size, listed[0].fsync)
    try:
        for pack in plan.rewrite:
            _rewrite(listed, writer, pack, result, checkpoint)
            pacer.pause()
    finally:
        writer.close()
    result.freed_bytes -= PACK_OVERHEAD * len(result.new_packs)  # each new pack's header and seal
    for pack in plan.remove:
        records = [record for _, record in scan(listed[0].root, pack)]
        if _unreferenced(listed, pack, records):
            result.freed_bytes += _remove(listed, pack)
            result.removed += 1
        else:
            result.skipped.append(pack)
    return result


def _rewrite(
    stores: list[PackChunkStore], writer: PackWriter, pack: str, result: RepackResult, checkpoint: Checkpoint,
) -> None:
    """Copy the records of ``pack`` an index names now (read afresh, not from the plan's snapshot),
    switch their entries, then remove the pack if nothing names it any more."""
    records = list(scan(stores[0].root, pack))
    if any(_owner(stores, r.type) is None for _, r in records):  # a record no index here owns
        result.skipped.append(pack)
        return
    copies = []  # (owner, digest, old entry, record)
    for store in stores:
        mine = [(loc, r) for loc, r in records if r.type in store.kinds()]
        current = store.index.get_many([r.digest for _, r in mine])
        copies += [(store, r.digest, e, r) for (loc, r), e in zip(mine, current, strict=True)
                   if e is not None and e == IndexEntry.of(loc, r)]
    locations = writer.append_many([r for *_, r in copies])
    writer.flush()  # durable before any entry names the copies
    checkpoint("repack-copied")
    for store in stores:
        moves = [(d, old, IndexEntry.of(loc, r))
                 for (owner, d, old, r), loc in zip(copies, locations, strict=True) if owner is store]
        if moves:
            store.index.switch_many(moves)
    checkpoint("repack-switched")
    result.copied_records += len(copies)
    result.new_packs.update(loc.pack for loc in locations)
    written = sum(loc.length for loc in locations)
    result.copied_bytes += written
    if _unreferenced(stores, pack, [r for _, r in records]):
        result.freed_bytes += _remove(stores, pack) - written
        result.rewritten += 1
    else:
        result.skipped.append(pack)


def _unreferenced(stores: list[PackChunkStore], pack: str, records: list[Record]) -> bool:
    """True if no index entry names ``pack`` and no record of it awaits publishing. ``records`` are
    every record of the pack: only they can ever be indexed there (a sealed pack takes no record);
    a record of a type no store owns keeps the pack."""
    if pack in set().union(*(s.busy_packs() for s in stores)):
        return False
    if any(_owner(stores, r.type) is None for r in records):
        return False
    for store in stores:
        digests = [r.digest for r in records if r.type in store.kinds()]
        if any(e is not None and e.pack == pack for e in store.index.get_many(digests)):
            return False
    return True


def _remove(stores: list[PackChunkStore], pack: str) -> int:
    """Delete a pack file (its folder entry made durable); returns its size."""
    path = pack_path(stores[0].root, pack)
    size = path.stat().st_size
    for store in stores:
        store.reader.forget(pack)
    os.unlink(path)
    if stores[0].fsync:
        fsync_dir(path.parent)
    return size


@dataclass
class RebaseResult:
    """What :func:`rebase` did."""

    rebased: int = 0  # entries switched to a record that no longer needs its dead base
    plain: int = 0  # of those, stored plain (no live ancestor, or a delta did not pay)
    kept_bases: int = 0  # dead bases left in place: re-encoding their dependents would cost more
    written_bytes: int = 0  # the new records and the header and seal of each new pack
    new_packs: set[str] = field(default_factory=set)


def rebase_plan(
    entries: dict[bytes, IndexEntry], keep: set[bytes]
) -> list[tuple[bytes, IndexEntry, bytes | None]]:
    """(digest, entry, new base) of every kept delta record whose base is not kept (pure): the new
    base is the nearest kept ancestor on its chain (so no deeper than the old one), else None."""
    plan = []
    for d in keep:
        entry = entries.get(d)
        if entry is None or entry.base is None or entry.base in keep:
            continue
        ancestor: bytes | None = entry.base
        for _ in range(entry.depth):  # the chain is at most this long
            up = entries.get(ancestor) if ancestor is not None else None
            ancestor = up.base if up is not None else None
            if ancestor is None or ancestor in keep:
                break
        plan.append((d, entry, ancestor if ancestor in keep else None))
    return plan


def rebase(
    store: PackChunkStore, plan: Sequence[tuple[bytes, IndexEntry, bytes | None]],
    entries: Mapping[bytes, IndexEntry], checkpoint: Checkpoint = lambda phase: None, batch: int = 256,
    duty: float = 1.0,
) -> RebaseResult:
    """Re-encode the records of ``plan`` (:func:`rebase_plan`) so their dead bases can be dropped.

    Per dead base, only when it pays: the re-encoded records of every kept record based on it
    must grow by less than the base's own record (``entries``), else the base stays as it is (it
    is then cheaper storage of what kept records need than their plain frames).

    Crash-safe like a rewrite: the new records are durable (one barrier per batch) before any
    entry names them, each entry is switched with a compare-and-set from the exact old entry (a
    concurrent repair or move wins, and the old base then stays, since the caller drops only bases
    no entry names after this), and nothing is deleted here. A kill leaves at worst unindexed new
    records (reclaimed by a later repack).

    ``duty`` < 1 pauses after each base's records are re-encoded and after each batch is written,
    so the step works at most that fraction of the time (as :func:`repack`)."""
    result = RebaseResult()
    pacer = DutyCycle(duty)
    writer = PackWriter(store.root, store.writer.max_pack_size, store.fsync)
    by_base: dict[bytes, list[tuple[bytes, IndexEntry, bytes | None]]] = defaultdict(list)
    for item in plan:
        by_base[item[1].base or b""].append(item)
    pending: list[tuple[bytes, IndexEntry, Record]] = []
    try:
        for base, group in by_base.items():
            records = [store.reencode(d, entry, new) for d, entry, new in group]
            pacer.pause()
            grown = sum(HEADER_SIZE + len(r.payload) - e.length for (_, e, _), r in zip(group, records, strict=True))
            held = entries.get(base)
            if held is None or grown >= held.length:
                result.kept_bases += 1
                continue
            pending += [(d, e, r) for (d, e, _), r in zip(group, records, strict=True)]
            if len(pending) >= batch:
                _switch_reencoded(store, writer, pending, result, checkpoint)
                pending = []
                pacer.pause()
        _switch_reencoded(store, writer, pending, result, checkpoint)
    finally:
        writer.close()
    result.written_bytes += PACK_OVERHEAD * len(result.new_packs)
    return result


def _switch_reencoded(
    store: PackChunkStore, writer: PackWriter, items: list[tuple[bytes, IndexEntry, Record]],
    result: RebaseResult, checkpoint: Checkpoint,
) -> None:
    """Append ``items``' new records, make them durable, then switch each entry (compare-and-set)."""
    if not items:
        return
    locations = writer.append_many([r for _, _, r in items])
    writer.flush()  # durable before any entry names the new records
    checkpoint("rebase-written")
    moves = [(d, old, IndexEntry.of(loc, r)) for (d, old, r), loc in zip(items, locations, strict=True)]
    switched = store.index.switch_many(moves)
    store.note_reencoded([(old, new) for (_, old, new), ok in zip(moves, switched, strict=True) if ok])
    checkpoint("rebase-switched")
    done = [r for (_, _, r), ok in zip(items, switched, strict=True) if ok]
    result.rebased += len(done)
    result.plain += sum(1 for r in done if r.base is None)
    result.written_bytes += sum(loc.length for loc in locations)
    result.new_packs.update(loc.pack for loc in locations)
