"""Content-defined chunking: coverage, boundaries, shift resistance and determinism."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest
from cli_helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codec
from cas.chunker import Chunk, ChunkParams, chunk_bytes, chunk_file, chunk_stream
from cas.digest import digest

SMALL = ChunkParams(min_size=64, avg_size=256, max_size=1024)


def random_bytes(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def check_cover(chunks: list[Chunk], data: bytes, params: ChunkParams) -> None:
    offset = 0
    for c in chunks:
        assert c.offset == offset
        assert c.length == len(c.data) > 0
        assert c.length <= params.max_size
        assert isinstance(c.data, bytes)
        offset += c.length
    assert offset == len(data)
    assert b"".join(c.data for c in chunks) == data
    # Only the last chunk may be shorter than the minimum.
    assert all(c.length >= params.min_size for c in chunks[:-1])


def test_params_defaults_and_validation():
    p = ChunkParams()
    assert (p.min_size, p.avg_size, p.max_size) == (16 * 1024, 64 * 1024, 256 * 1024)
    for bad in [
        dict(min_size=100_000),  # min > avg
        dict(max_size=32 * 1024),  # max < avg
        dict(min_size=10),
        dict(avg_size=100, min_size=64, max_size=1024),
        dict(max_size=64 << 20),
        dict(avg_size=65536.0),
    ]:
        with pytest.raises(ValueError):
            ChunkParams(**bad)


def test_empty_input_yields_nothing(tmp_path):
    assert list(chunk_bytes(b"")) == []
    assert list(chunk_stream(io.BytesIO(b""))) == []
    (tmp_path / "empty").write_bytes(b"")
    assert list(chunk_file(tmp_path / "empty")) == []


def test_one_byte():
    assert list(chunk_bytes(b"x")) == [Chunk(0, 1, b"x")]
    assert list(chunk_stream(io.BytesIO(b"x"))) == [Chunk(0, 1, b"x")]


def test_exactly_max_size_and_constant_data():
    params = ChunkParams()
    one = list(chunk_bytes(b"\0" * params.max_size))
    assert [c.length for c in one] == [params.max_size]
    many = list(chunk_bytes(b"\0" * (3 * params.max_size + 5)))
    assert [c.length for c in many] == [params.max_size] * 3 + [5]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20_000))
def test_stream_bytes_and_file_agree(tmp_path_factory, data):
    by_bytes = list(chunk_bytes(data, SMALL))
    check_cover(by_bytes, data, SMALL)
    assert list(chunk_stream(io.BytesIO(data), SMALL)) == by_bytes
    path = tmp_path_factory.mktemp("f") / "data"
    path.write_bytes(data)
    assert list(chunk_file(path, SMALL)) == by_bytes


class Trickle(io.RawIOBase):
    """A stream that returns at most 7 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._data.readinto(memoryview(b)[:7])


def test_short_reads_do_not_change_boundaries():
    data = random_bytes(50_000)
    assert list(chunk_stream(Trickle(data), SMALL)) == list(chunk_bytes(data, SMALL))


def test_chunk_data_is_owned():
    data = random_bytes(2 << 20)
    chunks = list(chunk_stream(io.BytesIO(data)))  # kept past the next chunk on purpose
    assert len(chunks) > 5
    check_cover(chunks, data, ChunkParams())


def test_mean_chunk_size_is_near_target():
    data = random_bytes(8 << 20)
    chunks = list(chunk_bytes(data))
    mean = len(data) / len(chunks)
    assert 48 * 1024 < mean < 128 * 1024


def digests(data: bytes, params: ChunkParams = ChunkParams()) -> list[bytes]:
    return [digest(c.data) for c in chunk_bytes(data, params)]


def test_insert_at_front_keeps_most_chunks():
    data = random_bytes(8 << 20)
    before = digests(data)
    after = digests(b"!" + data)
    shared = set(before) & set(after)
    assert len(shared) >= 0.9 * len(after), (len(shared), len(after))


def test_insert_in_middle_changes_only_nearby_chunks():
    data = random_bytes(8 << 20)
    before = digests(data)
    after = digests(data[: 4 << 20] + b"inserted" + data[4 << 20 :])
    assert len(set(after) - set(before)) <= 3


def test_append_keeps_all_but_the_last_chunk():
    data = random_bytes(8 << 20)
    before = digests(data)
    after = digests(data + random_bytes(100_000, seed=9))
    assert after[: len(before) - 1] == before[:-1]


_CHILD = """
import json, random, sys
from cas import codec
from cas.chunker import chunk_bytes
from cas.digest import digest
data = random.Random(42).randbytes(3 << 20) + b"log line with words\\n" * 50000
print(json.dumps([[c.offset, c.length, digest(c.data).hex(), digest(codec.encode(c.data)).hex()]
                  for c in chunk_bytes(data)]))
"""


def test_deterministic_within_and_across_processes():
    data = random.Random(42).randbytes(3 << 20) + b"log line with words\n" * 50000
    here = [[c.offset, c.length, digest(c.data).hex(), digest(codec.encode(c.data)).hex()] for c in chunk_bytes(data)]
    again = [[c.offset, c.length, digest(c.data).hex(), digest(codec.encode(c.data)).hex()] for c in chunk_bytes(data)]
    assert here == again
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert json.loads(out) == here
    assert len(here) > 20
