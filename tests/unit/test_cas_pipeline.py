"""The parallel pipeline: same output as the serial computation, in order, with bounded memory."""

from __future__ import annotations

import io
import random

import pytest

from cas import codec
from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest, new_hasher
from cas.pipeline import EncodedChunk, HashedChunk, Pipeline

SMALL = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def mixed_data(size: int, seed: int = 3) -> bytes:
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        part = rng.randbytes(5000) if rng.random() < 0.5 else b"line of compressible text\n" * 200
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def serial(data: bytes, params: ChunkParams, level: int = 3) -> list[EncodedChunk]:
    return [
        EncodedChunk(c.offset, c.length, digest(c.data), codec.encode(c.data, level)) for c in chunk_bytes(data, params)
    ]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("in_flight", [1, 20_000, 32 << 20])
def test_process_stream_equals_serial(workers, in_flight):
    data = mixed_data(600_000)
    expected = serial(data, SMALL)
    assert len(expected) > 100
    hasher = new_hasher()
    with Pipeline(SMALL, workers=workers, max_in_flight_bytes=in_flight) as pipe:
        got = list(pipe.process_stream(io.BytesIO(data), hasher))
    assert got == expected
    assert hasher.digest() == digest(data)


def test_hash_stream_then_encode_equals_serial():
    data = mixed_data(400_000)
    expected = serial(data, SMALL, level=5)
    with Pipeline(SMALL, level=5, workers=2, max_in_flight_bytes=50_000) as pipe:
        hasher = new_hasher()
        hashed = list(pipe.hash_stream(io.BytesIO(data), hasher))
        assert [h.offset for h in hashed] == [e.offset for e in expected]
        assert all(h.digest == digest(h.data) for h in hashed)
        assert hasher.digest() == digest(data)
        assert list(pipe.encode(hashed)) == expected
        # Chained lazily, and reusable for a second stream.
        assert list(pipe.encode(pipe.hash_stream(io.BytesIO(data)))) == expected


def test_default_params_and_empty_stream():
    data = mixed_data(3 << 20)
    with Pipeline() as pipe:
        assert list(pipe.process_stream(io.BytesIO(data))) == serial(data, ChunkParams())
        assert list(pipe.process_stream(io.BytesIO(b""))) == []
        assert list(pipe.encode([])) == []
        assert pipe.workers >= 1


class CountingReader(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._data.readinto(b)
        self.position += n
        return n


def test_read_ahead_is_bounded():
    data = mixed_data(2 << 20)
    limit = 64 * 1024
    reader = CountingReader(data)
    with Pipeline(SMALL, workers=2, max_in_flight_bytes=limit) as pipe:
        worst = 0
        for enc in pipe.process_stream(reader):
            worst = max(worst, reader.position - (enc.offset + enc.length))
    # In flight + the batch being filled + the batch being handed back + the chunker's buffer.
    assert worst <= limit + 2 * pipe.batch_bytes + 3 * SMALL.max_size
    assert worst > 0


def test_errors_surface_in_order():
    class Boom(Exception):
        pass

    def chunks():
        yield HashedChunk(0, 3, digest(b"abc"), b"abc")
        yield HashedChunk(3, 3, digest(b"def"), "not bytes")  # type: ignore[arg-type]

    with Pipeline(SMALL, workers=2, max_in_flight_bytes=1) as pipe:
        out = pipe.encode(chunks())
        assert next(out).frame == codec.encode(b"abc")
        with pytest.raises(TypeError):
            next(out)

    class FailingReader(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            raise Boom()

    with Pipeline(SMALL) as pipe, pytest.raises(Boom):
        list(pipe.process_stream(FailingReader()))


def test_abandoned_iteration_does_not_hang():
    data = mixed_data(1 << 20)
    pipe = Pipeline(SMALL, workers=2)
    out = pipe.process_stream(io.BytesIO(data))
    first = next(out)
    assert first.offset == 0
    out.close()
    pipe.close()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Pipeline(workers=0)
    with pytest.raises(ValueError):
        Pipeline(max_in_flight_bytes=0)
