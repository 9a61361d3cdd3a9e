"""Pack files: round trips, sealing, torn tails, flipped bytes, the descriptor cache, and a writer
killed with SIGKILL in the middle of its appends."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from concurrency import run_threads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.digest import digest
from cas.errors import CorruptChunkError
from cas.pack import (
    FILE_HEADER_SIZE,
    Location,
    PackReader,
    PackWriter,
    Record,
    RecordType,
    ScanReport,
    is_sealed,
    list_packs,
    pack_path,
    recover,
    scan,
)

ROOT = Path(__file__).resolve().parent.parent


def record(i: int, size: int = 200, kind: RecordType = RecordType.CHUNK) -> Record:
    payload = random.Random(i).randbytes(size)
    if kind == RecordType.DELTA:
        return Record(kind, digest(payload), payload, 2, digest(b"base%d" % i), 1 + i % 4)
    return Record(kind, digest(payload), payload, i % 2)


def scan_all(root: Path) -> dict[Location, Record]:
    return {loc: rec for pack in list_packs(root) for loc, rec in scan(root, pack)}


record_specs = st.lists(
    st.tuples(st.binary(max_size=3000), st.sampled_from(list(RecordType)[:4]), st.booleans()), max_size=40
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=record_specs)
def test_round_trip_by_location_and_by_scan(tmp_path_factory, specs):
    root = tmp_path_factory.mktemp("packs")
    writer = PackWriter(root, max_pack_size=8 * 1024, fsync=False)
    written: dict[Location, Record] = {}
    durable: list[Location] = []
    for payload, kind, flush in specs:
        rec = Record(kind, digest(payload), payload, 2 if kind == RecordType.DELTA else 1,
                     digest(b"b") if kind == RecordType.DELTA else None, 3 if kind == RecordType.DELTA else 0)
        written[writer.append(rec)] = rec
        if flush:
            durable += writer.flush()
    durable += writer.flush()
    assert sorted(durable) == sorted(written)
    reader = PackReader(root, max_open=2)
    for loc, rec in written.items():
        assert reader.read(loc, rec.digest) == rec
    writer.close()
    assert scan_all(root) == written
    assert all(is_sealed(root, p) for p in list_packs(root))
    reader.close()


def test_flush_returns_each_location_once_and_rotates_packs(tmp_path):
    writer = PackWriter(tmp_path, max_pack_size=1024, fsync=True)
    first = [writer.append(record(i)) for i in range(3)]
    assert writer.flush() == first
    assert writer.flush() == []
    second = writer.append_many([record(i) for i in range(3, 8)])
    assert writer.flush() == second
    packs = {loc.pack for loc in first + second}
    assert len(packs) == 3  # 284-byte records and a 96-byte seal: three fit a 1 KiB pack
    assert all(loc.offset + loc.length <= 1024 for loc in first + second)
    writer.close()
    assert set(list_packs(tmp_path)) == packs
    assert all(is_sealed(tmp_path, p) for p in packs)


def test_record_larger_than_a_pack_gets_a_pack_of_its_own(tmp_path):
    writer = PackWriter(tmp_path, max_pack_size=1024, fsync=False)
    small, big = writer.append(record(1)), writer.append(record(2, size=5000))
    writer.close()
    assert small.pack != big.pack
    assert PackReader(tmp_path).read(big, record(2, size=5000).digest).payload == record(2, size=5000).payload


def sealed_pack(root: Path, count: int, size: int = 200) -> tuple[str, list[Location]]:
    writer = PackWriter(root, fsync=False)
    locations = writer.append_many([record(i, size) for i in range(count)])
    writer.close()
    return locations[0].pack, locations


def test_sealed_pack_is_left_alone(tmp_path):
    pack, _ = sealed_pack(tmp_path, 5)
    before = pack_path(tmp_path, pack).read_bytes()
    result = recover(tmp_path, pack)
    assert not result.cut_bytes and not result.skipped and result.report is None
    assert pack_path(tmp_path, pack).read_bytes() == before


def assert_earlier_records_survive(root: Path, pack: str, locations: list[Location], count: int) -> None:
    reader = PackReader(root)
    for i, loc in enumerate(locations[:count]):
        assert reader.read(loc, record(i).digest) == record(i)
    reader.close()
    report = ScanReport()
    assert [loc for loc, _ in scan(root, pack, report)] == locations[:count]
    assert report.damaged == [] and report.sealed and is_sealed(root, pack)


def test_torn_tail_at_every_byte_of_the_last_record_is_cut(tmp_path):
    source = tmp_path / "source"
    pack, locations = sealed_pack(source, 4)
    last = locations[-1]
    original = pack_path(source, pack).read_bytes()
    for cut in range(1, last.length):
        root = tmp_path / f"cut{cut}"
        path = pack_path(root, pack)
        path.parent.mkdir(parents=True)
        path.write_bytes(original[:last.offset + cut])
        result = recover(root, pack, fsync=False)
        assert result.cut_bytes == cut, cut
        assert_earlier_records_survive(root, pack, locations, 3)
        shutil.rmtree(root)


@pytest.mark.parametrize(
    "garbage", [b"\0" * 4096, b"SVPR" + b"\xff" * 100, os.urandom(300)], ids=["zeros", "magic", "random"]
)
def test_garbage_after_the_last_record_is_cut(tmp_path, garbage):
    pack, locations = sealed_pack(tmp_path, 4)
    path = pack_path(tmp_path, pack)
    intact = path.read_bytes()[:locations[-1].offset + locations[-1].length]  # seal stripped
    path.write_bytes(intact + garbage)
    assert recover(tmp_path, pack, fsync=False).cut_bytes == len(garbage)
    assert_earlier_records_survive(tmp_path, pack, locations, 4)


def test_pack_torn_inside_its_file_header_is_removed(tmp_path):
    pack, _ = sealed_pack(tmp_path, 1)
    path = pack_path(tmp_path, pack)
    path.write_bytes(path.read_bytes()[:FILE_HEADER_SIZE - 3])
    assert recover(tmp_path, pack, fsync=False).removed
    assert list_packs(tmp_path) == []


def test_flipped_byte_anywhere_in_a_record_is_detected_and_the_rest_reads(tmp_path):
    source = tmp_path / "source"
    pack, locations = sealed_pack(source, 5)
    victim = locations[2]
    original = pack_path(source, pack).read_bytes()
    reader = PackReader(source)
    for at in range(victim.length):
        damaged = bytearray(original)
        damaged[victim.offset + at] ^= 0x40
        pack_path(source, pack).write_bytes(damaged)
        reader.forget(pack)
        with pytest.raises(CorruptChunkError):
            reader.read(victim, record(2).digest)
        for i in (0, 1, 3, 4):
            assert reader.read(locations[i], record(i).digest) == record(i)
        report = ScanReport()
        assert [loc for loc, _ in scan(source, pack, report)] == [locations[i] for i in (0, 1, 3, 4)], at
        assert [offset for offset, _ in report.damaged] == [victim.offset], at
        assert report.sealed
    # a damaged record in the middle of an unsealed pack is not a torn tail: nothing is cut
    pack_path(source, pack).write_bytes(damaged[:locations[-1].offset + locations[-1].length])
    assert recover(source, pack, fsync=False).cut_bytes == 0
    assert reader.read(locations[4], record(4).digest) == record(4)


def test_reading_at_a_wrong_location_or_a_missing_pack_is_corruption(tmp_path):
    pack, locations = sealed_pack(tmp_path, 3)
    reader = PackReader(tmp_path)
    with pytest.raises(CorruptChunkError, match="pack record at this location"):
        reader.read(locations[1], record(0).digest)
    with pytest.raises(CorruptChunkError):
        reader.read(Location(pack, locations[1].offset + 1, locations[1].length), record(1).digest)
    with pytest.raises(CorruptChunkError, match="ends inside"):
        reader.read(Location(pack, locations[2].offset, 10_000), record(2).digest)
    with pytest.raises(CorruptChunkError, match="missing"):
        reader.read(Location("00" * 8, 16, 300), record(0).digest)
    bounded = PackReader(tmp_path, max_record_size=1000)
    for length in (10, 1001, 1 << 40):  # from a corrupt index: refused before any allocation
        with pytest.raises(CorruptChunkError, match="impossible"):
            bounded.read(Location(pack, locations[0].offset, length), record(0).digest)


def test_a_pack_being_written_is_never_recovered(tmp_path):
    writer = PackWriter(tmp_path, fsync=False)
    loc = writer.append(record(1))
    assert recover(tmp_path, loc.pack, fsync=False).skipped  # flock held by the writer
    writer.append(record(2))
    writer.close()
    assert [rec for _, rec in scan(tmp_path, loc.pack)] == [record(1), record(2)]


def test_descriptor_cache_is_bounded_and_thread_safe(tmp_path):
    writer = PackWriter(tmp_path, max_pack_size=1024, fsync=False)
    locations = writer.append_many([record(i) for i in range(30)])
    writer.close()
    reader = PackReader(tmp_path, max_open=3)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            i = rng.randrange(len(locations))
            assert reader.read(locations[i], record(i).digest) == record(i)

    assert run_threads(work, 6) == []
    assert len(reader._handles) <= 3
    reader.close()


CHILD = textwrap.dedent(
    """
    import random, sys
    from cas.digest import digest
    from cas.pack import PackWriter, Record, RecordType
    root, start = sys.argv[1], int(sys.argv[2])
    writer = PackWriter(root, max_pack_size=96 * 1024, fsync=True)
    i = start
    while True:
        batch = []
        for _ in range(random.randint(1, 12)):
            payload = random.Random(i).randbytes(random.Random(-i).randint(0, 9000))
            batch.append(Record(RecordType.CHUNK, digest(payload), payload, 1))
            i += 1
        first = i - len(batch)
        writer.append_many(batch)
        for n, loc in enumerate(writer.flush()):
            print(first + n, loc.pack, loc.offset, loc.length, flush=True)
    """
)


def expected_payload(i: int) -> bytes:
    return random.Random(i).randbytes(random.Random(-i).randint(0, 9000))


def test_sigkill_during_appends_loses_no_flushed_record(tmp_path):
    acked: dict[int, Location] = {}
    start = 0
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(6):
        for pack in list_packs(tmp_path):  # what a store does when it opens
            recover(tmp_path, pack)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                                 env=env, cwd=ROOT)
        assert child.stdout is not None
        first = child.stdout.readline()  # the kill lands while appends go on, however loaded the machine
        time.sleep(rng.random() * 0.5)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        lines = (first + out).decode().split("\n")[:-1]  # the last line may be cut by the kill
        assert lines, "the writer acknowledged nothing before it was killed"
        for line in lines:
            i, pack, offset, length = line.split()
            acked[int(i)] = Location(pack, int(offset), int(length))
        start = max(acked) + 1000  # payloads of a dead writer's unacknowledged records are never reused
    cut = [r for r in (recover(tmp_path, p) for p in list_packs(tmp_path))]
    assert all(not r.skipped for r in cut)
    reader = PackReader(tmp_path)
    for i, loc in acked.items():
        payload = expected_payload(i)
        assert reader.read(loc, digest(payload)).payload == payload, i
    scanned = 0
    for pack in list_packs(tmp_path):
        report = ScanReport()
        scanned += sum(1 for _ in scan(tmp_path, pack, report))
        assert report.damaged == [] and report.sealed, pack
    assert scanned >= len(acked)


def test_threads_appending_and_flushing_through_many_rotations(tmp_path):
    writer = PackWriter(tmp_path, max_pack_size=2048, fsync=True)
    appended: dict[Location, int] = {}
    durable: list[Location] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for n in range(25):
            i = k * 1000 + n
            loc = writer.append(record(i, size=100 + n * 30))
            flushed = writer.flush()
            with lock:
                appended[loc] = i
                durable.extend(flushed)

    errors = run_threads(work, 4)
    writer.close()
    assert errors == []
    assert sorted(durable) == sorted(appended) and len(set(durable)) == len(durable) == 100
    found = scan_all(tmp_path)
    assert {loc: rec.digest for loc, rec in found.items()} == {
        loc: record(i, size=100 + (i % 1000) * 30).digest for loc, i in appended.items()
    }
    assert len(list_packs(tmp_path)) > 10 and all(is_sealed(tmp_path, p) for p in list_packs(tmp_path))
