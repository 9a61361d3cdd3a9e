"""The version journal on a real disk: records round-trip, a torn tail is cut on open, group commit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service.journal import Journal, encode_entry, read_all, scan, segments
from service.metadata import VersionRecord


def record(path: str, version: int, *, deleted: bool = False) -> VersionRecord:
    return VersionRecord(
        path=path, version=version, manifest_digest=b"" if deleted else bytes([version]) * 32,
        size=0 if deleted else 100 * version, created_ms=1_700_000_000_000 + version, identity="alice",
        deleted=deleted, mode=0o644, mtime_ns=5, file_digest=b"" if deleted else b"\x02" * 32, chunk_count=1,
        new_chunks=1, new_bytes=100, signature=b"\x07" * 64 if version == 2 else b"",
        signer_public_key=b"\x08" * 32 if version == 2 else b"", event_id=f"{1_700_000_000_000 + version}-0",
    )


async def blocking(fn, *args):
    return await asyncio.to_thread(fn, *args)


def test_records_round_trip_with_every_field(tmp_path: Path):
    written = [record("a/ü b.txt", 1), record("a/ü b.txt", 2), record("a/ü b.txt", 3, deleted=True)]

    async def go() -> None:
        journal = Journal(tmp_path, blocking)
        await journal.append("team", written[:2])
        await journal.append("other", written[2:])
        journal.close()

    asyncio.run(go())
    entries, problems = read_all(tmp_path)
    assert problems == []
    assert [e.ns for e in entries] == ["team", "team", "other"]
    assert [e.record for e in entries] == written
    assert [e.event_id for e in entries] == [r.event_id for r in written]
    assert entries[1].record.signature == b"\x07" * 64


def test_torn_tail_is_cut_on_open_and_appends_continue(tmp_path: Path):
    async def go() -> Journal:
        journal = Journal(tmp_path, blocking)
        await journal.append("ns", [record("f", 1), record("f", 2)])
        return journal

    asyncio.run(go()).close()
    seg = segments(tmp_path)[-1]
    whole = seg.stat().st_size
    torn = encode_entry("ns", record("f", 3))[:-7]  # a crash in the middle of an append
    with open(seg, "ab") as f:
        f.write(torn)
    assert scan(seg.read_bytes())[2] == "a torn record"

    async def reopen() -> Journal:
        journal = Journal(tmp_path, blocking)
        assert journal.cut_bytes == len(torn)
        assert seg.stat().st_size == whole
        await journal.append("ns", [record("f", 3)])
        return journal

    asyncio.run(reopen()).close()
    entries, problems = read_all(tmp_path)
    assert problems == []
    assert [e.record.version for e in entries] == [1, 2, 3]


def test_bad_checksum_in_an_older_segment_is_reported(tmp_path: Path):
    (tmp_path / "00000001.log").write_bytes(encode_entry("ns", record("f", 1)) + encode_entry("ns", record("f", 2)))
    (tmp_path / "00000002.log").write_bytes(encode_entry("ns", record("f", 3)))
    data = bytearray((tmp_path / "00000001.log").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "00000001.log").write_bytes(bytes(data))
    entries, problems = read_all(tmp_path)
    assert [e.record.version for e in entries] == [1, 3]
    assert len(problems) == 1 and "00000001.log" in problems[0] and "checksum" in problems[0]


def test_concurrent_appends_share_write_barriers(tmp_path: Path):
    writes: list[int] = []

    async def go() -> None:
        journal = Journal(tmp_path, blocking)
        original = journal.write_durably

        def counted(blobs):
            writes.append(len(blobs))
            original(blobs)

        journal.write_durably = counted  # type: ignore[method-assign]
        await asyncio.gather(*(journal.append("ns", [record(f"p{n}", 1)]) for n in range(50)))
        journal.close()

    asyncio.run(go())
    assert sum(writes) == 50
    assert len(writes) < 50  # appends waiting while a write runs join the next one
    assert len(read_all(tmp_path)[0]) == 50
    assert os.path.getsize(segments(tmp_path)[-1]) > 0


def test_removals_round_trip_and_hide_their_versions_from_the_rebuild(tmp_path: Path):
    from service.metadata import Event
    from service.rebuild import forgotten_events, latest_records

    removal = Event(cursor="1700000000100-0", kind="forgotten", path="a/ü b.txt", version=1, size=100,
                    time_ms=1_700_000_000_100, identity="retention-schedule", manifest_digest=b"\x01" * 32)

    async def go() -> None:
        journal = Journal(tmp_path, blocking)
        await journal.append("team", [record("a/ü b.txt", 1), record("a/ü b.txt", 2)])
        await journal.append_forgotten("team", [removal])
        await journal.append("team", [record("a/ü b.txt", 3)])
        journal.close()

    asyncio.run(go())
    entries, problems = read_all(tmp_path)
    assert problems == []
    assert forgotten_events(entries) == [("team", removal)]
    assert sorted(latest_records(entries)["team"]["a/ü b.txt"]) == [2, 3]
