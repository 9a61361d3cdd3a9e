"""Digests and chunk frames: round trips, the decompression-bomb guard, malformed input."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codec
from cas.digest import DIGEST_SIZE, check_digest, digest, from_hex, new_hasher, to_hex
from cas.errors import (
    ChunkTooLargeError,
    DigestMismatchError,
    InvalidDigestError,
    InvalidInputError,
    MalformedFrameError,
)

MAX = 256 * 1024


def header(method: int, length: int, version: int = 1, magic: bytes = b"SV") -> bytes:
    return struct.pack(">2sBBI", magic, version, method, length)


# ---- digest -----------------------------------------------------------------------------------


def test_digest_is_blake3_256():
    assert digest(b"abc") == blake3.blake3(b"abc").digest()
    assert len(digest(b"")) == DIGEST_SIZE
    assert digest(memoryview(b"abc")) == digest(b"abc")
    h = new_hasher()
    h.update(b"a")
    h.update(b"bc")
    assert h.digest() == digest(b"abc")


def test_hex_round_trip_and_validation():
    d = digest(b"x")
    assert from_hex(to_hex(d)) == d
    assert from_hex(to_hex(d).upper()) == d
    for bad in ["", "ab", to_hex(d)[:-1], to_hex(d) + "0", "g" * 64, " " + to_hex(d)[1:], "a b" * 21 + "a"]:
        with pytest.raises(InvalidDigestError):
            from_hex(bad)
    with pytest.raises(InvalidDigestError):
        from_hex(None)  # type: ignore[arg-type]


def test_check_digest():
    d = digest(b"x")
    assert check_digest(d) == d
    assert check_digest(bytearray(d)) == d
    for bad in [b"", d[:31], d + b"\0", "x" * 32, None]:
        with pytest.raises(InvalidDigestError):
            check_digest(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidDigestError):
        to_hex(b"short")


# ---- frames -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([1, 3, 9]))
def test_frame_round_trip(data, level):
    frame = codec.encode(data, level)
    assert codec.frame_length(frame) == len(data)
    assert codec.decode(frame, max_size=len(data)) == data
    assert codec.decode(memoryview(frame), max_size=MAX) == data
    assert codec.decode_verified(digest(data), frame, max_size=MAX) == data
    assert len(frame) <= len(data) + codec.HEADER_SIZE  # never worse than raw


def test_incompressible_is_stored_raw():
    data = os.urandom(100_000)
    frame = codec.encode(data)
    assert frame[3] == codec.METHOD_RAW
    assert len(frame) == len(data) + codec.HEADER_SIZE
    assert codec.decode(frame, MAX) == data


def test_compressible_is_zstd_and_small():
    data = b"stratus " * 20_000
    frame = codec.encode(data)
    assert frame[:4] == b"SV\x01\x01"
    assert len(frame) < len(data) // 50
    assert codec.decode(frame, MAX) == data


def test_empty_frame():
    frame = codec.encode(b"")
    assert frame == header(0, 0)
    assert codec.decode(frame, 0) == b""


def test_encode_is_deterministic_and_level_checked():
    data = b"hello world " * 1000
    assert codec.encode(data) == codec.encode(data)
    with pytest.raises(ValueError):
        codec.encode(data, level=99)


def test_decode_verified_detects_mismatch():
    frame = codec.encode(b"real content")
    with pytest.raises(DigestMismatchError) as info:
        codec.decode_verified(digest(b"other content"), frame, MAX)
    assert info.value.actual == digest(b"real content")
    with pytest.raises(InvalidDigestError):
        codec.decode_verified(b"short", frame, MAX)


# ---- the decompression-bomb guard ---------------------------------------------------------------


def test_declared_length_over_limit_is_refused():
    frame = codec.encode(b"\0" * (MAX + 1))
    with pytest.raises(ChunkTooLargeError):
        codec.decode(frame, MAX)
    assert codec.decode(frame, MAX + 1) == b"\0" * (MAX + 1)  # the limit is inclusive
    with pytest.raises(ChunkTooLargeError):
        codec.decode(header(0, 1 << 31), MAX)  # refused before looking at the (absent) payload


def test_bomb_with_small_declared_length_is_refused():
    # 64 MiB of zeros compress to a few KiB; the header lies and claims 1000 bytes.
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20))
    assert len(bomb) < 10_000
    with pytest.raises(ChunkTooLargeError):
        codec.decode(header(1, 1000) + bomb, MAX)


def test_zstd_without_content_size_is_refused():
    payload = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 5000)
    with pytest.raises(MalformedFrameError, match="content size"):
        codec.decode(header(1, 5000) + payload, MAX)


def test_real_length_must_equal_declared_length():
    payload = zstandard.ZstdCompressor().compress(b"a" * 5000)
    with pytest.raises(MalformedFrameError):
        codec.decode(header(1, 4999) + payload, MAX)
    with pytest.raises(MalformedFrameError):
        codec.decode(header(1, 5001) + payload, MAX)
    with pytest.raises(MalformedFrameError):
        codec.decode(header(0, 10) + b"123456789", MAX)
    with pytest.raises(MalformedFrameError):
        codec.decode(header(0, 10) + b"12345678901", MAX)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"SV\x01",
        b"SV\x01\x00\x00\x00\x00",
        header(0, 0, magic=b"XX"),
        header(0, 0, version=2),
        header(0, 0, version=0),
        header(2, 0),
        header(255, 3) + b"abc",
        header(1, 10) + b"not zstd at all",
        header(1, 0),
    ],
)
def test_malformed_headers(frame):
    with pytest.raises(MalformedFrameError):
        codec.decode(frame, MAX)


def test_frame_length_validates_header():
    assert codec.frame_length(codec.encode(b"abc")) == 3
    with pytest.raises(MalformedFrameError):
        codec.frame_length(b"SV")
    with pytest.raises(MalformedFrameError):
        codec.frame_length(header(7, 3))


def test_corrupt_zstd_payloads():
    data = b"some text that compresses, some text that compresses, " * 200
    frame = codec.encode(data)
    assert frame[3] == codec.METHOD_ZSTD
    with pytest.raises(MalformedFrameError):
        codec.decode(frame[:-3], MAX)  # truncated
    with pytest.raises(MalformedFrameError):
        codec.decode(frame + b"\0", MAX)  # trailing garbage
    with pytest.raises(MalformedFrameError):
        codec.decode(frame + frame[8:], MAX)  # a second zstd frame
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(MalformedFrameError):
        codec.decode(header(1, 4) + skippable, MAX)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_raises_only_typed_errors(blob):
    for frame in (blob, b"SV\x01" + blob, b"SV\x01\x01" + blob[:4].ljust(4, b"\0") + blob[4:]):
        try:
            data = codec.decode(frame, 1 << 16)
        except (MalformedFrameError, ChunkTooLargeError):
            continue
        assert len(data) == codec.frame_length(frame) <= 1 << 16


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.data())
def test_fuzz_mutated_frames_never_decode_to_wrong_bytes(data, draw):
    frame = bytearray(codec.encode(data))
    index = draw.draw(st.integers(0, len(frame) - 1))
    frame[index] ^= draw.draw(st.integers(1, 255))
    try:
        result = codec.decode_verified(digest(data), bytes(frame), MAX)
    except InvalidInputError:
        return
    # A flip zstd ignores may still decode; then it must be to exactly the original bytes.
    assert result == data
