"""Repacking: the pure planner, and rewrites of real pack stores (live records kept, delta
chains intact, dead records -- discarded batches, torn copies -- gone, pack bytes down)."""

from __future__ import annotations

import os

import pytest

from cas import codec
from cas.digest import digest
from cas.pack import RecordType, list_packs, pack_path
from cas.packstore import PackChunkStore
from cas.repack import PACK_OVERHEAD, PackUsage, live_entries, pack_usage, plan_repack, repack


def usage(pack: str, live: int, records: int = 1000) -> PackUsage:
    return PackUsage(pack, records + PACK_OVERHEAD, live)


def test_plan_removes_empty_packs_and_rewrites_sparse_ones_emptiest_first():
    packs = [usage("full", 1000), usage("empty", 0), usage("half", 500), usage("tenth", 100), usage("most", 900)]
    plan = plan_repack(packs, 0.6)
    assert plan.remove == ("empty",)
    assert plan.rewrite == ("tenth", "half")
    assert plan.reclaimable == 1000 + 500 + 900 + 100
    assert plan.planned == (1000 + PACK_OVERHEAD) + 900 + 500


def test_plan_with_full_fraction_rewrites_every_pack_with_a_dead_record_and_nothing_else():
    plan = plan_repack([usage("full", 1000), usage("one-dead", 999)], 1.0)
    assert plan.rewrite == ("one-dead",) and plan.remove == ()


def test_plan_below_minimum_reclaim_rewrites_nothing_but_still_removes_empty_packs():
    packs = [usage("half", 500), usage("empty", 0, records=10)]
    plan = plan_repack(packs, 0.9, min_reclaim_bytes=10_000)
    assert plan.rewrite == () and plan.remove == ("empty",)
    assert plan_repack(packs, 0.9, min_reclaim_bytes=100).rewrite == ("half",)


def test_plan_refuses_a_fraction_outside_zero_to_one():
    with pytest.raises(ValueError):
        plan_repack([], 1.5)


def item(data: bytes) -> tuple[bytes, bytes]:
    return digest(data), codec.encode(data)


def pack_bytes(store: PackChunkStore) -> int:
    return sum(pack_path(store.root, p).stat().st_size for p in list_packs(store.root))


def test_repack_drops_dead_records_and_keeps_every_live_one(tmp_path):
    store = PackChunkStore(tmp_path, fsync=False, max_pack_size=64 * 1024)
    live = [item(os.urandom(3000)) for _ in range(40)]
    dead = [item(os.urandom(3000)) for _ in range(60)]
    for i in range(0, 100, 10):  # live and dead records interleaved in every pack
        store.put_many(live[i * 4 // 10:(i + 10) * 4 // 10])
        store.discard(store.stage(dead[i * 6 // 10:(i + 10) * 6 // 10]))
    store.close()
    before = pack_bytes(store)
    by_pack = live_entries(store)
    plan = plan_repack(pack_usage(store, by_pack), 0.9)
    assert plan.rewrite and plan.planned > 60 * 3000
    result = repack(store, plan)
    assert before - pack_bytes(store) == result.freed_bytes >= 60 * 3000
    assert all(store.get(d) == codec.decode(f, 1 << 20) for d, f in live)
    assert not any(store.has(d) for d, _ in dead)
    assert store.check(read_data=True).damaged == []
    # a second plan finds nothing left to do
    again = live_entries(store)
    assert plan_repack(pack_usage(store, again), 0.9).rewrite == ()
    reopened = PackChunkStore(tmp_path, fsync=False)  # the packs alone rebuild the same index
    assert all(reopened.get(d) == codec.decode(f, 1 << 20) for d, f in live)


def test_repack_keeps_delta_chains_readable(tmp_path):
    store = PackChunkStore(tmp_path, fsync=False, max_pack_size=64 * 1024)
    base = bytearray(os.urandom(20_000))
    digests, prev = [], None
    for n in range(12):
        base[n * 100:n * 100 + 50] = os.urandom(50)
        d, frame = item(bytes(base))
        store.put_many([(d, frame)], {d: prev} if prev else None)
        store.discard(store.stage([item(os.urandom(9000))]))
        digests.append((d, bytes(base)))
        prev = d
    store.close()
    assert any(e.base for _, e in store.index.iterate())  # the chain is made of delta records
    by_pack = live_entries(store)
    repack(store, plan_repack(pack_usage(store, by_pack), 1.0))
    assert all(store.get(d) == data for d, data in digests)
    assert any(e.base for _, e in store.index.iterate())


def test_the_open_pack_is_never_repacked(tmp_path):
    store = PackChunkStore(tmp_path, fsync=False)
    store.discard(store.stage([item(os.urandom(5000))]))
    store.put_many([item(os.urandom(5000))])
    assert pack_usage(store, live_entries(store)) == []  # unsealed, still being written


def _shared_stores(root) -> tuple[PackChunkStore, PackChunkStore]:
    """A chunk store and a manifest store writing to one pack folder (as service/manifests.py has it)."""
    chunks = PackChunkStore(root, fsync=False, max_pack_size=64 * 1024)
    manifests = PackChunkStore(root, fsync=False, max_pack_size=64 * 1024, kind=RecordType.MANIFEST)
    return chunks, manifests


def _fill(store: PackChunkStore, live: int, dead: int) -> list[tuple[bytes, bytes]]:
    kept = [item(os.urandom(3000)) for _ in range(live)]
    for i in range(0, live, 4):  # live and dead records interleaved in every pack
        store.put_many(kept[i:i + 4])
        store.discard(store.stage([item(os.urandom(3000)) for _ in range(dead * 4 // live)]))
    store.close()
    return kept


def test_repack_copies_live_manifest_records_and_switches_them_in_their_own_index(tmp_path):
    chunks, manifests = _shared_stores(tmp_path)
    live_chunks, live_manifests = _fill(chunks, 20, 40), _fill(manifests, 20, 40)
    before = pack_bytes(chunks)
    stores = [chunks, manifests]
    plan = plan_repack(pack_usage(stores, live_entries(stores)), 0.9)
    result = repack(stores, plan)
    assert result.copied_records == 40 and before - pack_bytes(chunks) == result.freed_bytes >= 80 * 3000
    assert all(manifests.get(d) == codec.decode(f, 1 << 20) for d, f in live_manifests)
    assert all(chunks.get(d) == codec.decode(f, 1 << 20) for d, f in live_chunks)
    assert plan_repack(pack_usage(stores, live_entries(stores)), 0.9).rewrite == ()
    again = _shared_stores(tmp_path)  # the packs alone rebuild both indexes (no dead record left)
    assert sorted(d for d, _ in again[1].index.iterate()) == sorted(d for d, _ in live_manifests)
    assert all(again[1].get(d) == codec.decode(f, 1 << 20) for d, f in live_manifests)
    assert all(again[0].get(d) == codec.decode(f, 1 << 20) for d, f in live_chunks)


def test_a_repack_that_knows_only_chunks_leaves_manifest_packs_alone(tmp_path):
    chunks, manifests = _shared_stores(tmp_path)
    live_manifests = _fill(manifests, 20, 40)
    before = pack_bytes(chunks)
    plan = plan_repack(pack_usage(chunks, live_entries(chunks)), 1.0)
    assert plan.remove  # no chunk index entry names the manifest packs
    result = repack(chunks, plan)
    assert result.removed == 0 and pack_bytes(chunks) == before
    assert all(manifests.get(d) == codec.decode(f, 1 << 20) for d, f in live_manifests)
