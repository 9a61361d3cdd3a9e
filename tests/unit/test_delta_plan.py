"""Delta downloads on the client, without a server: which chunks of the old local copy are proposed
as delta bases of each fetched chunk, what indexing the old copy records for that, and how a delta
frame that does not decode to its digest is reported."""

from __future__ import annotations

import os

import pytest

from cas import delta
from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest
from cas.errors import CorruptChunkError
from cas.manifest import ChunkRef
from cli.fetch import decode_chunk
from cli.localfile import index_local_file
from cli.plan import BaseRef, OldChunks, Source, fetch_windows, plan_files


def d(n: int) -> bytes:
    return digest(n.to_bytes(4, "big"))


def old_chunks(*spec: tuple[int, int, int]) -> OldChunks:
    old = OldChunks()
    for offset, length, name in spec:
        old.add(offset, length, d(name))
    return old


def plan(chunks: list[ChunkRef], local: dict, old: OldChunks | None) -> list:
    return list(plan_files([(chunks, local, old)], repeat_from_output=True, window_bytes=1 << 20, window_chunks=100))


def test_old_chunks_covering_finds_the_chunk_holding_a_position():
    old = old_chunks((0, 100, 1), (100, 50, 2), (300, 10, 3))  # a gap: 150..300 is a reused chunk
    assert old.covering(0) == BaseRef(d(1), 0, 100)
    assert old.covering(149) == BaseRef(d(2), 100, 50)
    assert old.covering(150) is None and old.covering(299) is None and old.covering(310) is None
    assert old.covering(305) == BaseRef(d(3), 300, 10)
    assert len(old) == 3 and old.nbytes == 160 and list(old)[2] == BaseRef(d(3), 300, 10)
    assert old.overlapping(50, 320, 4) == (BaseRef(d(1), 0, 100), BaseRef(d(2), 100, 50), BaseRef(d(3), 300, 10))
    assert old.overlapping(100, 300, 4) == (BaseRef(d(2), 100, 50),)  # ranges are half-open
    assert old.overlapping(0, 400, 2) == (BaseRef(d(1), 0, 100), BaseRef(d(2), 100, 50))
    assert old.overlapping(150, 300, 4) == ()


def test_an_edited_chunk_gets_the_old_chunk_at_its_place_as_base():
    # old: A B C; new: A B' C (B edited in place, same length)
    chunks = [ChunkRef(d(1), 100), ChunkRef(d(20), 200), ChunkRef(d(3), 300)]
    local = {d(1): (0, 100), d(3): (300, 300)}
    steps = plan(chunks, local, old_chunks((100, 200, 2)))
    assert [s.source for s in steps] == [Source.LOCAL, Source.FETCH, Source.LOCAL]
    assert steps[1].bases == (BaseRef(d(2), 100, 200),)
    (window,) = fetch_windows(iter(steps))
    assert window.bases == {d(20): (0, (BaseRef(d(2), 100, 200),))}


def test_a_chunk_made_of_two_edited_old_chunks_gets_both_as_bases():
    # old: A B C D; an edit moved the cut between B and C: new A BC' D.
    chunks = [ChunkRef(d(1), 100), ChunkRef(d(23), 250), ChunkRef(d(4), 100)]
    local = {d(1): (0, 100), d(4): (350, 100)}
    steps = plan(chunks, local, old_chunks((100, 120, 2), (220, 130, 3)))
    assert steps[1].bases == (BaseRef(d(2), 100, 120), BaseRef(d(3), 220, 130))


def test_an_insertion_keeps_the_track_through_reused_chunks():
    # old: A(0..100) B(100..200) C(200..300) D(300..400); new: A X B' C D' where X is inserted (50
    # bytes) and B, D edited: B' must get B, D' must get D although offsets moved by 50.
    chunks = [ChunkRef(d(1), 100), ChunkRef(d(9), 50), ChunkRef(d(20), 100), ChunkRef(d(3), 100),
              ChunkRef(d(40), 100)]
    local = {d(1): (0, 100), d(3): (200, 100)}
    steps = plan(chunks, local, old_chunks((100, 100, 2), (300, 100, 4)))
    bases = [s.bases for s in steps]
    assert bases[2] == (BaseRef(d(2), 100, 100),)  # expected at old 150..250: B holds its start
    assert bases[4] == (BaseRef(d(4), 300, 100),)  # re-aligned by C, reused from old offset 200


def test_no_old_copy_means_no_base_and_plans_stay_equal():
    chunks = [ChunkRef(d(i), 100) for i in range(5)]
    assert all(s.bases == () for s in plan(chunks, {}, None))
    assert all(s.bases == () for s in plan(chunks, {}, OldChunks()))
    old = old_chunks((0, 500, 7))
    assert plan(chunks, {}, old) == plan(chunks, {}, old)  # deterministic: two threads walk it


def test_index_local_file_records_the_chunks_not_wanted_in_order(tmp_path):
    params = ChunkParams(min_size=1024, avg_size=4096, max_size=16384)
    data = os.urandom(100_000)
    (tmp_path / "old").write_bytes(data)
    chunks = list(chunk_bytes(data, params))
    wanted = {digest(chunks[1].data)}
    others = OldChunks()
    fd = os.open(tmp_path / "old", os.O_RDONLY)
    try:
        index = index_local_file(fd, params, wanted, others=others)
    finally:
        os.close(fd)
    assert set(index) == wanted
    expected = [BaseRef(digest(c.data), c.offset, c.length) for i, c in enumerate(chunks) if i != 1]
    assert list(others) == expected


def test_a_delta_frame_decoded_against_other_bytes_is_a_corrupt_chunk():
    base = os.urandom(50_000)
    data = base[:20_000] + os.urandom(4096) + base[24_096:]
    frame = delta.encode(data, base)
    assert decode_chunk(digest(data), frame, 1 << 20, base) == data
    for wrong in (os.urandom(50_000), base[:-1], b"x"):
        with pytest.raises(CorruptChunkError):
            decode_chunk(digest(data), frame, 1 << 20, wrong)
    with pytest.raises(CorruptChunkError):  # a delta frame taken for a plain one
        decode_chunk(digest(data), frame, 1 << 20)
