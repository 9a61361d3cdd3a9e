"""The local chunk store: round trips, corruption detection, atomic concurrent puts, stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import codec
from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest
from cas.errors import ChunkNotFoundError, CorruptChunkError, InvalidDigestError
from cas.store import LocalChunkStore, StoreStats, put_data

SMALL = ChunkParams(min_size=64, avg_size=256, max_size=1024)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path):
    return LocalChunkStore(tmp_path / "chunks", fsync=False)


def round_trip(store: LocalChunkStore, data: bytes, params: ChunkParams) -> bytes:
    refs = []
    for chunk in chunk_bytes(data, params):
        d = digest(chunk.data)
        frame = codec.encode(chunk.data)
        codec.decode_verified(d, frame, params.max_size)  # what a server does before put
        store.put(d, frame)
        refs.append(d)
    return b"".join(store.get(d) for d in refs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=10_000))
def test_round_trip_arbitrary_bytes(store, data):
    assert round_trip(store, data, SMALL) == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x",
        b"\0" * (256 * 1024),  # exactly one max-size chunk
        os.urandom(1 << 20),  # incompressible: raw frames
        b"compressible text line\n" * 50_000,  # zstd frames
    ],
    ids=["empty", "one-byte", "max-chunk", "incompressible", "compressible"],
)
def test_round_trip_default_params(tmp_path, data):
    store = LocalChunkStore(tmp_path / "s", fsync=True)
    assert round_trip(store, data, ChunkParams()) == data


def test_layout_put_has_delete(store):
    d = put_data(store, b"hello")
    h = d.hex()
    path = store.root / h[:2] / h[2:4] / h
    assert store.path_for(d) == path
    assert path.is_file()
    assert store.has(d)
    assert store.get(d) == b"hello"
    assert store.get_frame(d) == codec.encode(b"hello")
    assert store.put(d, codec.encode(b"hello")) is False
    assert store.has_many([d, digest(b"absent")]) == [True, False]
    assert store.delete(d) is True
    assert store.delete(d) is False
    assert not store.has(d)
    with pytest.raises(ChunkNotFoundError):
        store.get(d)
    with pytest.raises(ChunkNotFoundError):
        store.get_frame(d)


def test_bad_digests_are_refused(store):
    for bad in [b"", b"x" * 31, "00" * 32]:
        with pytest.raises(InvalidDigestError):
            store.put(bad, codec.encode(b"x"))  # type: ignore[arg-type]
        with pytest.raises(InvalidDigestError):
            store.get(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [os.urandom(5000), b"zstd compressible " * 500], ids=["raw", "zstd"])
@pytest.mark.parametrize("where", [0, 3, 5, 8, -1, "middle"])
def test_flipped_byte_is_detected(store, data, where):
    d = put_data(store, data)
    path = store.path_for(d)
    blob = bytearray(path.read_bytes())
    index = len(blob) // 2 if where == "middle" else where
    blob[index] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptChunkError) as info:
        store.get(d)
    assert info.value.digest == d
    # found damaged: moved aside (kept for inspection), never served again, even unverified
    assert store.damaged_among([d]) == [d] and not store.has(d)
    assert (store.quarantine / path.name).read_bytes() == bytes(blob) and not path.exists()
    for verify in (True, False):
        with pytest.raises(CorruptChunkError):
            store.get_frame(d, verify=verify)


def test_chunk_stored_under_wrong_name_is_corrupt(store):
    d = digest(b"expected")
    store.put(d, codec.encode(b"something else"))  # put does not verify, by contract
    with pytest.raises(CorruptChunkError):
        store.get(d)


def test_oversized_chunk_at_rest_is_corrupt(tmp_path):
    big = b"\0" * 2000
    store = LocalChunkStore(tmp_path / "s", max_chunk_size=1000, fsync=False)
    d = digest(big)
    store.put(d, codec.encode(big))
    with pytest.raises(CorruptChunkError, match="limit"):
        store.get(d)


def test_iterate_and_stats(tmp_path):
    root = tmp_path / "s"
    store = LocalChunkStore(root, fsync=False)
    assert store.stats() == StoreStats(0, 0)
    blobs = [os.urandom(100 + i) for i in range(20)]
    digests = [put_data(store, b) for b in blobs]
    total = sum(store.path_for(d).stat().st_size for d in digests)
    assert store.stats() == StoreStats(20, total)
    # Strangers in the tree are ignored.
    (root / "README").write_text("not a chunk")
    (store.path_for(digests[0]).parent / ".tmpfile.tmp").write_bytes(b"x")
    assert sorted(store.iterate()) == sorted(digests)
    store.delete(digests[0])
    assert store.stats() == StoreStats(19, total - store_frame_size(blobs[0]))
    # A fresh instance scans the disk once.
    assert LocalChunkStore(root, fsync=False).stats() == store.stats()


def store_frame_size(data: bytes) -> int:
    return len(codec.encode(data))


def test_concurrent_puts_from_threads_leave_one_file(store):
    frames = [codec.encode(os.urandom(3000)) for _ in range(30)]
    digests = [digest(codec.decode(f, 1 << 20)) for f in frames]
    results: dict[int, list[bool]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def worker(n: int) -> None:
        barrier.wait()
        for d, f in zip(digests, frames, strict=True):
            results[n].append(store.put(d, f))

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a + b for a, b in zip(results[0], results[1], strict=True)] == [1] * len(digests)
    check_one_valid_file_each(store, digests)
    assert store.stats().chunk_count == len(digests)


_PUT_CHILD = """
import json, os, sys, time
from cas.store import LocalChunkStore
root, jobs, go = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
store = LocalChunkStore(root, fsync=True)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
print(json.dumps([store.put(bytes.fromhex(d), bytes.fromhex(f)) for d, f in jobs]))
"""


def test_concurrent_puts_from_processes_leave_one_file(tmp_path):
    root = tmp_path / "shared"
    datas = [os.urandom(2000) for _ in range(40)]
    jobs = [(digest(b).hex(), codec.encode(b).hex()) for b in datas]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUT_CHILD, str(root), str(tmp_path / "jobs.json"), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
    go.touch()  # both are polling now, so their puts overlap
    outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [a + b for a, b in zip(*outputs, strict=True)] == [1] * len(jobs)
    store = LocalChunkStore(root, fsync=False)
    check_one_valid_file_each(store, [bytes.fromhex(d) for d, _ in jobs])


def check_one_valid_file_each(store: LocalChunkStore, digests: list[bytes]) -> None:
    files = files_under(store.root)
    assert sorted(files) == sorted(store.path_for(d) for d in digests)  # no temp files left
    for d in digests:
        store.get(d)  # verifies


def test_opening_a_store_removes_temp_files_of_dead_writers(tmp_path):
    store = LocalChunkStore(tmp_path / "s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = store.staging / f"{'ab' * 32}.{int(dead.stdout)}.0123456789ab.tmp"
    mine = store.staging / f"{'cd' * 32}.{os.getpid()}.0123456789ab.tmp"
    orphan.write_bytes(b"half a chunk")
    mine.write_bytes(b"in progress")
    LocalChunkStore(tmp_path / "s")
    assert not orphan.exists() and mine.exists()


def test_batched_put_matches_single_puts_and_survives_duplicates(tmp_path):
    store = LocalChunkStore(tmp_path / "s")
    blobs = [os.urandom(1000 + n) for n in range(20)]
    items = [(digest(b), codec.encode(b)) for b in blobs]
    assert store.put(*items[3]) is True
    flags = store.put_many(items + items[:2])
    assert flags == [True] * 3 + [False] + [True] * 16 + [False, False]
    assert all(store.get(d) == b for (d, _), b in zip(items, blobs, strict=True))
    assert store.stats().chunk_count == 20
    assert list(store.staging.iterdir()) == []
    staged = store.stage([(digest(b"x" * 10), codec.encode(b"x" * 10))])
    store.discard(staged)
    assert not store.has(digest(b"x" * 10)) and list(store.staging.iterdir()) == []


# ---- self-healing ---------------------------------------------------------------------------


def _flip_middle(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("level", [3, 19], ids=["same-frame", "other-level"])
def test_put_repairs_an_undetected_damaged_copy(tmp_path, level):
    store = LocalChunkStore(tmp_path / "s", fsync=False)
    data = b"heal me " * 3000
    d = put_data(store, data)
    _flip_middle(store.path_for(d))
    before = store.stats()
    # the same chunk arrives again (verified by the caller): the bad copy is found and replaced
    assert store.put(d, codec.encode(data, level)) is True
    assert store.get(d) == data
    assert store.stats().chunk_count == before.chunk_count == 1
    assert store.stats().stored_bytes == store.path_for(d).stat().st_size
    # a good copy is left alone, whatever the frame brought
    assert store.put(d, codec.encode(data, 1)) is False


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_marked_chunk_is_refused_until_a_verified_copy_arrives(tmp_path, how):
    root = tmp_path / "s"
    store = LocalChunkStore(root, fsync=False)
    data = os.urandom(3000)
    d = put_data(store, data)
    if how == "flip":
        _flip_middle(store.path_for(d))
    else:
        store.path_for(d).unlink()
    assert store.mark_damaged(d) is True
    assert store.damaged_among([d, digest(b"other"), d]) == [d]
    with pytest.raises(CorruptChunkError):
        store.get_frame(d, verify=False)
    # the mark survives reopening the store
    reopened = LocalChunkStore(root, fsync=False)
    assert reopened.damaged_among([d]) == [d] and not reopened.has(d)
    assert reopened.put(d, codec.encode(data)) is True
    assert reopened.get(d) == data and reopened.damaged_among([d]) == []
    assert list((root / ".damaged").iterdir()) == []
    assert LocalChunkStore(root, fsync=False).damaged_among([d]) == []


def test_mark_damaged_leaves_a_good_copy(store):
    d = put_data(store, b"fine")
    assert store.mark_damaged(d) is False
    assert store.get(d) == b"fine" and store.damaged_among([d]) == []


def test_check_finds_headers_or_content(store):
    good = put_data(store, b"good " * 1000)
    payload = put_data(store, os.urandom(5000))
    header = put_data(store, os.urandom(5000))
    _flip_middle(store.path_for(payload))
    path = store.path_for(header)
    path.write_bytes(path.read_bytes()[:-10])  # truncated: the header's length no longer matches
    quick = store.check(read_data=False)
    assert (quick.checked, quick.damaged) == (3, [header])
    full = store.check(read_data=True)
    assert (full.checked, full.damaged) == (2, [payload])
    assert store.iterate_damaged() == sorted([payload, header])
    assert store.get(good) == b"good " * 1000
