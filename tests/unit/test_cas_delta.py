"""Similarity-delta frames: round trips, the size and depth policy, wrong bases, bombs, threads."""

from __future__ import annotations

import os
import random
import struct

import pytest
import zstandard
from concurrency import run_threads
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codec, delta
from cas.digest import digest
from cas.errors import ChunkTooLargeError, DigestMismatchError, InvalidInputError, MalformedFrameError

MAX = 256 * 1024


def edited(base: bytes, seed: int, edits: int = 3) -> bytes:
    rng = random.Random(seed)
    out = bytearray(base)
    for _ in range(edits):
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 40))
    return bytes(out)


@settings(max_examples=80, deadline=None)
@given(base=st.binary(max_size=4000), data=st.binary(max_size=4000))
def test_round_trip_any_bytes(base, data):
    frame = delta.encode(data, base)
    assert delta.is_delta(frame)
    assert delta.decode_verified(digest(data), frame, base, MAX) == data


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), edits=st.integers(1, 10))
def test_similar_chunk_is_kept_as_delta(seed, edits):
    base = random.Random(seed).randbytes(64 * 1024)
    data = edited(base, seed, edits)
    plain = codec.encode(data)
    frame = delta.encode_if_smaller(data, base, 0, len(plain))
    assert frame is not None and len(frame) < 0.75 * len(plain)
    assert delta.decode(frame, base, MAX) == data


def test_unrelated_base_falls_back_to_plain():
    data = os.urandom(64 * 1024)
    assert delta.encode_if_smaller(data, os.urandom(64 * 1024), 0, len(codec.encode(data))) is None


def test_ratio_threshold_is_configurable():
    base = os.urandom(64 * 1024)
    data = base[:32 * 1024] + os.urandom(32 * 1024)  # half shared: a delta of about half the size
    plain = len(codec.encode(data))
    assert delta.encode_if_smaller(data, base, 0, plain, delta.DeltaPolicy(max_ratio=0.75)) is not None
    assert delta.encode_if_smaller(data, base, 0, plain, delta.DeltaPolicy(max_ratio=0.3)) is None


def test_base_at_max_depth_falls_back_to_plain():
    base = os.urandom(64 * 1024)
    data = edited(base, 1)
    policy = delta.DeltaPolicy(max_depth=4)
    plain = len(codec.encode(data))
    assert delta.encode_if_smaller(data, base, 3, plain, policy) is not None  # the new record: depth 4
    assert delta.encode_if_smaller(data, base, 4, plain, policy) is None
    assert delta.encode_if_smaller(b"", base, 0, 8, policy) is None
    assert delta.encode_if_smaller(data, b"", 0, plain, policy) is None


def test_wrong_base_is_refused_by_the_digest_check():
    base = os.urandom(64 * 1024)
    data = edited(base, 2)
    frame = delta.encode(data, base)
    wrong = bytearray(base)
    wrong[100] ^= 1  # zstd decodes happily against it, to other bytes
    assert delta.decode(frame, bytes(wrong), MAX) != data
    with pytest.raises(DigestMismatchError):
        delta.decode_verified(digest(data), frame, bytes(wrong), MAX)
    with pytest.raises(InvalidInputError):
        delta.decode_verified(digest(data), frame, os.urandom(100), MAX)


def test_bomb_guard_refuses_before_decoding():
    base = os.urandom(1024)
    data = b"\0" * (MAX + 1)
    frame = delta.encode(data, base)
    with pytest.raises(ChunkTooLargeError):
        delta.decode(frame, base, MAX)
    # a header that understates the zstd content size
    small = delta.encode(b"a" * 1000, base)
    lying = small[:4] + struct.pack(">I", 10) + small[8:]
    with pytest.raises(MalformedFrameError):
        delta.decode(lying, base, MAX)
    # a zstd frame with no declared content size
    raw = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000)
    with pytest.raises(MalformedFrameError):
        delta.decode(codec.frame_header(delta.METHOD_DELTA, 1000) + raw, base, MAX)


def test_plain_codec_refuses_delta_frames_and_delta_refuses_plain():
    base = os.urandom(1024)
    frame = delta.encode(b"x" * 500, base)
    with pytest.raises(MalformedFrameError):
        codec.decode(frame, MAX)
    assert not delta.is_delta(codec.encode(b"x" * 500))
    with pytest.raises(MalformedFrameError):
        delta.decode(codec.encode(b"x" * 500), base, MAX)


def test_policy_validation():
    for bad in ({"max_depth": 0}, {"max_ratio": 0}, {"max_ratio": 1.5}, {"level": 0}, {"level": 99}):
        with pytest.raises(ValueError):
            delta.DeltaPolicy(**bad)


def test_threads_encode_and_decode_concurrently():
    pairs = []
    for seed in range(16):
        base = random.Random(seed).randbytes(32 * 1024)
        pairs.append((base, edited(base, seed)))
    def work(offset: int) -> None:
        for i in range(40):
            base, data = pairs[(i + offset) % len(pairs)]
            assert delta.decode_verified(digest(data), delta.encode(data, base), base, MAX) == data

    assert run_threads(work, 6) == []
