"""The pack chunk store: ChunkStore semantics, delta chains, index rebuilds, damage and repair,
torn tails on open, and a store killed with SIGKILL while it puts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import codec, delta
from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest
from cas.errors import ChunkNotFoundError, ChunkTooLargeError, CorruptChunkError
from cas.pack import PackWriter, Record, RecordType, encode_header, is_sealed, list_packs, pack_path
from cas.packstore import IndexEntry, MemoryIndex, PackChunkStore
from cas.store import StoreStats

ROOT = Path(__file__).resolve().parent.parent
SMALL = ChunkParams(min_size=64, avg_size=256, max_size=1024)


def item(data: bytes) -> tuple[bytes, bytes]:
    return digest(data), codec.encode(data)


def history(seed: int, versions: int, size: int = 48 * 1024) -> list[bytes]:
    """Successive versions of one chunk, each a few small edits away from the previous one."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size // 2) + b"log line %d\n" * (size // 24))
    out = []
    for _ in range(versions):
        for _ in range(3):
            at = rng.randrange(len(data))
            data[at:at + 8] = rng.randbytes(8)
        out.append(bytes(data))
    return out


def put_chain(store: PackChunkStore, versions: list[bytes]) -> list[bytes]:
    digests, prev = [], None
    for data in versions:
        d, frame = item(data)
        store.put_many([(d, frame)], {d: prev} if prev else None)
        digests.append(d)
        prev = d
    return digests


@pytest.fixture
def store(tmp_path):
    s = PackChunkStore(tmp_path / "store", fsync=False, max_pack_size=64 * 1024)
    yield s
    s.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=10_000))
def test_round_trip_arbitrary_bytes(store, data):
    chunks = [c.data for c in chunk_bytes(data, SMALL)]
    store.put_many([item(c) for c in chunks])
    assert b"".join(store.get(digest(c)) for c in chunks) == data


def test_chunk_store_semantics(store):
    d, frame = item(b"hello" * 100)
    assert store.put(d, frame) is True
    assert store.put(d, frame) is False
    assert store.put_many([item(b"a"), item(b"a"), (d, frame)]) == [True, False, False]
    assert store.get(d) == b"hello" * 100
    assert store.get_frame(d) == frame
    assert store.has(d) and store.has_many([d, digest(b"absent")]) == [True, False]
    with pytest.raises(ChunkNotFoundError):
        store.get(digest(b"absent"))
    with pytest.raises(ChunkNotFoundError):
        store.get_frame(digest(b"absent"))
    assert sorted(store.iterate()) == sorted([d, digest(b"a")])
    assert store.stats() == StoreStats(2, len(frame) + len(codec.encode(b"a")))
    with pytest.raises(NotImplementedError):
        store.delete(d)
    before = sorted(store.iterate())
    with pytest.raises(ChunkTooLargeError):  # the whole batch is refused, nothing is written
        store.put_many([item(b"fine"), (digest(b"big"), b"\0" * (store.max_frame_size + 1))])
    assert sorted(store.iterate()) == before and not store.has(digest(b"fine"))


def test_concurrent_puts_of_one_digest_store_it_once(store):
    items = [item(b"chunk %d" % i * 50) for i in range(40)]
    results: list[list[bool]] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        results.append(store.put_many(items))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [sum(col) for col in zip(*results, strict=True)] == [1] * len(items)
    assert store.stats().chunk_count == len(items)
    assert all(store.get(d) == codec.decode(f, 1 << 20) for d, f in items)


def test_delta_chains_stop_at_the_maximum_depth_and_read_back_exactly(tmp_path):
    policy = delta.DeltaPolicy(max_depth=4)
    store = PackChunkStore(tmp_path / "s", fsync=False, policy=policy, base_cache_bytes=0)
    versions = history(1, 12)
    digests = put_chain(store, versions)
    entries = [store.index.get(d) for d in digests]
    # a hint at the maximum depth is replaced by its own base, one step up the chain
    assert [e.depth for e in entries] == [0, 1, 2, 3, 4] + [4] * 7
    assert [e.base for e in entries[1:5]] == digests[:4]
    assert all(e.base == digests[3] for e in entries[5:])
    assert all(e.type == RecordType.DELTA for e in entries[1:])
    assert [store.get(d) for d in digests] == versions
    assert [codec.decode(store.get_frame(d), 1 << 20) for d in digests] == versions
    assert store.stats().stored_bytes < sum(len(codec.encode(v)) for v in versions) / 2
    store.close()
    reopened = PackChunkStore(tmp_path / "s", fsync=False, policy=policy)  # cold base cache, rebuilt index
    assert [reopened.get(d) for d in reversed(digests)] == list(reversed(versions))
    assert reopened.check(read_data=True).damaged == []
    reopened.close()
    shallower = PackChunkStore(tmp_path / "s", fsync=False, policy=delta.DeltaPolicy(max_depth=2), base_cache_bytes=0)
    assert [shallower.get(d) for d in digests] == versions  # a smaller limit for writes still reads deeper chains


def test_the_smallest_delta_among_the_candidates_wins(store):
    versions = history(6, 2)
    unrelated, base = item(history(7, 1)[0]), item(versions[0])
    store.put_many([unrelated, base])
    target = item(versions[1])
    store.put_many([target], {target[0]: [unrelated[0], base[0]]})
    assert store.index.get(target[0]).base == base[0]
    assert store.get(target[0]) == versions[1]
    only_first = PackChunkStore(store.root / "one", fsync=False, max_candidates=1)
    only_first.put_many([unrelated, base])
    only_first.put_many([target], {target[0]: [unrelated[0], base[0]]})
    assert only_first.index.get(target[0]).type == RecordType.CHUNK


def test_a_good_enough_delta_ends_the_search(tmp_path):
    versions = history(8, 3)  # versions[2] is one edit step from versions[1], two from versions[0]
    far, near, target = item(versions[0]), item(versions[1]), item(versions[2])
    picked = {}
    for good_ratio in (0.0, delta.DEFAULT_GOOD_RATIO):
        s = PackChunkStore(tmp_path / str(good_ratio), fsync=False, policy=delta.DeltaPolicy(good_ratio=good_ratio))
        s.put_many([far, near])
        s.put_many([target], {target[0]: [far[0], near[0]]})
        entry = s.index.get(target[0])
        assert entry.frame_bytes < delta.DEFAULT_GOOD_RATIO * len(target[1])
        assert s.get(target[0]) == versions[2]
        picked[good_ratio] = entry.base
        s.close()
    assert picked == {0.0: near[0], delta.DEFAULT_GOOD_RATIO: far[0]}


def test_hints_that_cannot_help_store_plain_frames(store):
    base = item(os.urandom(40_000))
    store.put(*base)
    unrelated, self_hint, absent = (item(os.urandom(40_000)) for _ in range(3))
    store.put_many([unrelated, self_hint, absent],
                   {unrelated[0]: base[0], self_hint[0]: self_hint[0], absent[0]: digest(b"not stored")})
    for d, frame in (unrelated, self_hint, absent):
        assert store.index.get(d).type == RecordType.CHUNK
        assert store.get_frame(d) == frame


def test_delta_record_with_a_wrong_base_is_refused(store):
    versions = history(2, 2)
    right, wrong = item(versions[0]), item(history(3, 1)[0])
    store.put_many([right, wrong])
    target = digest(versions[1])
    frame = delta.encode(versions[1], versions[0])
    # a record that claims the wrong base (the index agrees with the record, as a rebuild would)
    loc = store.writer.append(Record(RecordType.DELTA, target, frame, delta.METHOD_DELTA, wrong[0], 1))
    store.writer.flush()
    store.index.put_many([(target, IndexEntry(*loc, RecordType.DELTA, delta.METHOD_DELTA, 1, wrong[0]))])
    with pytest.raises(CorruptChunkError):
        store.get(target)
    assert store.damaged_among([target]) == [target] and not store.has(target)
    # the next verified copy repairs it
    assert store.put_many([item(versions[1])], {target: right[0]}) == [True]
    assert store.get(target) == versions[1] and store.damaged_among([target]) == []
    assert store.index.get(target).type == RecordType.CHUNK  # repairs are stored plain


def flip(store: PackChunkStore, d: bytes, at: int = -5) -> None:
    entry = store.index.get(d)
    path = pack_path(store.root, entry.pack)
    raw = bytearray(path.read_bytes())
    raw[entry.offset + entry.length + at if at < 0 else entry.offset + at] ^= 0x10
    path.write_bytes(raw)
    store.reader.forget(entry.pack)


def test_flipped_byte_is_detected_marked_and_repaired_by_the_next_put(tmp_path):
    store = PackChunkStore(tmp_path / "s", fsync=True)
    items = [item(b"record %d " % i * 300) for i in range(5)]
    store.put_many(items)
    victim, frame = items[2]
    flip(store, victim)
    with pytest.raises(CorruptChunkError):
        store.get_frame(victim, verify=False)  # the record checksum catches it without decoding
    assert not store.has(victim) and store.damaged_among([victim, items[0][0]]) == [victim]
    assert store.stats().chunk_count == 4
    assert all(store.get(d) == codec.decode(f, 1 << 20) for d, f in items if d != victim)
    store.close()
    reopened = PackChunkStore(tmp_path / "s", fsync=True)  # the mark survives, the rebuild agrees
    assert reopened.damaged_among([victim]) == [victim]
    assert reopened.put(victim, frame) is True
    assert reopened.get(victim) == codec.decode(frame, 1 << 20) and reopened.has(victim)
    reopened.close()
    again = PackChunkStore(tmp_path / "s", fsync=True)
    assert again.damaged_among([victim]) == [] and again.get(victim) == codec.decode(frame, 1 << 20)
    assert again.check(read_data=True).damaged == []


def test_check_finds_damage_and_a_damaged_base_marks_its_deltas(tmp_path):
    store = PackChunkStore(tmp_path / "s", fsync=False, base_cache_bytes=0)  # every read decodes its chain
    versions = history(4, 3)
    digests = put_chain(store, versions)
    assert store.check(read_data=True).damaged == []
    flip(store, digests[0], at=100)  # the plain base of the chain
    report = store.check(read_data=False)
    assert report.damaged == [digests[0]] and report.checked == 3
    with pytest.raises(CorruptChunkError, match="delta base"):
        store.get(digests[2])
    assert store.damaged_among(digests) == digests
    store.put_many([item(v) for v in versions])
    assert [store.get(d) for d in digests] == versions


def test_rebuilt_index_equals_the_original(tmp_path):
    store = PackChunkStore(tmp_path / "s", fsync=False, max_pack_size=32 * 1024)
    put_chain(store, history(5, 9))
    store.put_many([item(os.urandom(5000)) for _ in range(20)])
    original = dict(store.index.iterate())
    assert len({e.pack for e in original.values()}) > 3
    store.close()
    fresh = MemoryIndex()
    rebuilt = PackChunkStore(tmp_path / "s", index=fresh, fsync=False)
    assert len(fresh) == 0
    report = rebuilt.rebuild_index()
    assert report.damaged == [] and report.indexed == len(original)
    assert dict(fresh.iterate()) == original
    assert {IndexEntry.from_bytes(e.to_bytes()) for e in original.values()} == set(original.values())
    assert rebuilt.stats() == store.stats()


def test_manifest_store_indexes_only_manifests(tmp_path):
    chunks = PackChunkStore(tmp_path / "s", fsync=False)
    manifests = PackChunkStore(tmp_path / "s", fsync=False, kind=RecordType.MANIFEST)
    chunks.put(*item(b"chunk"))
    manifests.put(*item(b"manifest"))
    chunks.close()
    manifests.close()
    assert list(PackChunkStore(tmp_path / "s", fsync=False).iterate()) == [digest(b"chunk")]
    assert list(PackChunkStore(tmp_path / "s", fsync=False, kind=RecordType.MANIFEST).iterate()) == [
        digest(b"manifest")
    ]


def test_torn_tail_is_cut_when_the_store_opens(tmp_path):
    store = PackChunkStore(tmp_path / "s", fsync=False)
    items = [item(b"x%d" % i * 2000) for i in range(6)]
    store.put_many(items)
    pack = store.index.get(items[-1][0]).pack
    store.close()
    path = pack_path(tmp_path / "s", pack)
    entry = PackChunkStore(tmp_path / "s", fsync=False).index.get(items[-1][0])
    path.write_bytes(path.read_bytes()[:entry.offset + entry.length // 2])  # seal gone, last record torn
    reopened = PackChunkStore(tmp_path / "s", fsync=False)
    assert [r.pack for r in reopened.recoveries] == [pack] and is_sealed(tmp_path / "s", pack)
    assert [reopened.has(d) for d, _ in items] == [True] * 5 + [False]
    assert reopened.check(read_data=True).damaged == []
    assert reopened.put(*items[-1]) is True and reopened.get(items[-1][0]) == b"x5" * 2000


CHILD = textwrap.dedent(
    """
    import random, sys
    from cas import codec
    from cas.digest import digest
    from cas.packstore import PackChunkStore
    root, start = sys.argv[1], int(sys.argv[2])
    store = PackChunkStore(root, fsync=True, max_pack_size=256 * 1024)
    i, prev = start, None
    while True:
        batch, hints = [], {}
        for _ in range(random.randint(1, 8)):
            data = random.Random(i // 4).randbytes(20000) + i.to_bytes(8, "big")  # similar to its neighbours
            d = digest(data)
            batch.append((d, codec.encode(data)))
            if prev:
                hints[d] = prev
            prev = d
            i += 1
        store.put_many(batch, hints)
        print(" ".join(str(n) for n in range(i - len(batch), i)), flush=True)
    """
)


def chunk_of(i: int) -> bytes:
    return random.Random(i // 4).randbytes(20000) + i.to_bytes(8, "big")


def test_sigkill_during_puts_loses_no_acknowledged_chunk(tmp_path):
    acked: set[int] = set()
    start, rng = 0, random.Random(11)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                                 env=env, cwd=ROOT)
        time.sleep(0.5 + rng.random())
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        for line in out.decode().split("\n")[:-1]:
            acked.update(int(n) for n in line.split())
        start = max(acked, default=start) + 1
    assert acked
    store = PackChunkStore(tmp_path, fsync=True)
    assert all(store.get(digest(chunk_of(i))) == chunk_of(i) for i in sorted(acked))
    assert store.check(read_data=True).damaged == [] and store.iterate_damaged() == []
    assert any(e.type == RecordType.DELTA for _, e in store.index.iterate())
    assert all(is_sealed(tmp_path, p) for p in list_packs(tmp_path))


def test_writer_and_store_share_nothing_but_the_folder(tmp_path):
    """Records of another writer (another process, in real use) are indexed by a rebuild."""
    writer = PackWriter(tmp_path, fsync=False)
    d, frame = item(b"from elsewhere")
    writer.append(Record(RecordType.CHUNK, d, frame, frame[3]))
    writer.close()
    assert PackChunkStore(tmp_path, fsync=False).get(d) == b"from elsewhere"


def test_rebuild_marks_a_damaged_record_but_not_a_tail_still_being_written(tmp_path):
    store = PackChunkStore(tmp_path, fsync=False)
    items = [item(b"kept %d " % i * 500) for i in range(4)]
    store.put_many(items)
    store.close()
    flip(store, items[1][0], at=-10)
    busy = PackWriter(tmp_path, fsync=False)  # another writer, mid-append: its pack is locked
    other = item(b"from the busy writer")
    loc = busy.append(Record(RecordType.CHUNK, other[0], other[1], other[1][3]))
    busy.flush()
    in_flight = item(b"still being written " * 100)
    head = encode_header(Record(RecordType.CHUNK, in_flight[0], in_flight[1], in_flight[1][3]))
    with open(pack_path(tmp_path, loc.pack), "ab") as f:
        f.write(head + in_flight[1][:10])  # a record whose payload is only partly written so far
    reopened = PackChunkStore(tmp_path, fsync=False)
    assert reopened.recoveries == []
    assert reopened.damaged_among([d for d, _ in items] + [other[0], in_flight[0]]) == [items[1][0]]
    assert reopened.get(other[0]) == b"from the busy writer"
    assert [reopened.has(d) for d, _ in items] == [True, False, True, True]
    busy.close()


def test_a_chunk_marked_missing_is_repaired_plain_even_with_a_hint(store):
    versions = history(8, 2)
    base, target = item(versions[0]), item(versions[1])
    store.put(*base)
    assert store.mark_damaged(target[0])  # named by some index, absent from the packs
    assert store.put_many([target], {target[0]: base[0]}) == [True]
    assert store.index.get(target[0]).type == RecordType.CHUNK
    assert store.get(target[0]) == versions[1] and store.damaged_among([target[0]]) == []


def test_get_frames_reads_a_batch_in_order_like_get_frame(tmp_path):
    store = PackChunkStore(tmp_path / "s", fsync=False)
    items = [item(b"frame %d " % i * 200) for i in range(6)]
    chain = put_chain(store, history(7, 3))  # delta records come back re-encoded, as from get_frame
    store.put_many(items)
    wanted = [items[3][0], chain[2], items[0][0], items[3][0]]
    assert store.get_frames(wanted) == [store.get_frame(d) for d in wanted]
    absent = digest(b"absent")
    with pytest.raises(ChunkNotFoundError) as missing:
        store.get_frames([items[1][0], absent])
    assert missing.value.digest == absent
    victim = items[4][0]
    flip(store, victim)
    with pytest.raises(CorruptChunkError):
        store.get_frames([items[0][0], victim], verify=False)
    assert store.damaged_among([victim]) == [victim]
    with pytest.raises(CorruptChunkError):  # known damaged: refused before any read
        store.get_frames([victim])
    store.close()


class CountingIndex(MemoryIndex):
    """A real in-memory index that counts its lookups (single and batched)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = self.batches = 0

    def get(self, digest: bytes) -> IndexEntry | None:
        self.gets += 1
        return super().get(digest)

    def get_many(self, digests):
        self.batches += 1
        return super().get_many(digests)


class CountingStore(PackChunkStore):
    """A pack store that counts the records it reads from its packs."""

    reads = 0

    def _read(self, digest: bytes, entry: IndexEntry) -> Record:
        self.reads += 1
        return super()._read(digest, entry)


def file_versions(seed: int, count: int, chunks: int) -> list[list[bytes]]:
    """``count`` versions of a file of ``chunks`` chunks, every chunk edited a little each version."""
    lines = [history(seed + i, count) for i in range(chunks)]
    return [[line[v] for line in lines] for v in range(count)]


def put_versions(store: PackChunkStore, versions: list[list[bytes]]) -> list[list[bytes]]:
    """Each version's chunks in one batch, each hinted at the previous version's chunk at its place."""
    out, prev = [], None
    for chunks in versions:
        items = [item(c) for c in chunks]
        hints = {d: [p] for (d, _), p in zip(items, prev, strict=True)} if prev else None
        store.put_many(items, hints)
        prev = [d for d, _ in items]
        out.append(prev)
    return out


def test_a_batch_resolves_its_bases_with_batched_lookups_only(tmp_path):
    index = CountingIndex()
    store = PackChunkStore(tmp_path / "s", index, fsync=False, base_cache_bytes=0)
    versions = file_versions(7, 7, 12)
    digests = put_versions(store, versions[:6])  # chains reach the maximum depth: bases climb
    index.gets = index.batches = 0
    d, frame = item(versions[6][0])
    hints = {digest(c): [p] for c, p in zip(versions[6], digests[5], strict=True)}
    store.publish(store.stage([item(c) for c in versions[6]], hints))
    assert index.gets == 0  # no round trip per chunk nor per chain step
    assert 1 <= index.batches <= 2 + delta.DEFAULT_MAX_DEPTH
    assert store.get_record(d).type == RecordType.DELTA
    for chunks in versions:
        assert [store.get(digest(c)) for c in chunks] == chunks


def test_a_history_encodes_against_cached_bases_without_reading_packs(tmp_path):
    store = CountingStore(tmp_path / "s", fsync=False)
    versions = file_versions(11, 8, 10)
    put_versions(store, versions[:2])  # the first version's plain chunks are read once, as bases
    store.reads = 0
    digests = put_versions(store, versions[1:])[1:]
    assert store.reads == 0  # each base is the chunk just stored, or the anchor its chain climbs to
    assert max(store.get_record(d).depth for d in digests[-1]) == delta.DEFAULT_MAX_DEPTH
    assert [[store.get(d) for d in ds] for ds in digests] == versions[2:]


def test_staging_encodes_the_decoded_bytes_it_is_given(tmp_path):
    old, new = history(3, 2)
    d, frame = item(new)
    records = []
    for name, decoded in (("plain", None), ("given", {d: new})):
        store = PackChunkStore(tmp_path / name, fsync=False, base_cache_bytes=0)
        base = put_chain(store, [old])[0]
        store.publish(store.stage([(d, frame)], {d: [base]}, decoded=decoded))
        records.append(store.get_record(d))
        assert store.get(d) == new
    assert records[0].type == RecordType.DELTA and records[0].payload == records[1].payload
    # The bytes are trusted (the caller checked them): wrong ones make a record that fails its read.
    store = PackChunkStore(tmp_path / "wrong", fsync=False, base_cache_bytes=0)
    base = put_chain(store, [old])[0]
    store.publish(store.stage([(d, frame)], {d: [base]}, decoded={d: b"x" + new[1:]}))
    with pytest.raises(CorruptChunkError):
        store.get(d)
