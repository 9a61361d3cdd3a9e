"""Manifests (canonical binary form, strict decoding) and manifest diffs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.diff import ManifestDiff, diff_manifests
from cas.digest import digest
from cas.errors import ManifestError
from cas.manifest import EMPTY_FILE_DIGEST, ChunkRef, Manifest, ManifestBuilder

digests = st.binary(min_size=32, max_size=32)
refs = st.builds(ChunkRef, digests, st.integers(1, 1 << 40))


def make(*pairs: tuple[bytes, int]) -> Manifest:
    builder = ManifestBuilder()
    for d, n in pairs:
        builder.add(d, n)
    return builder.build(digest(b"file"))


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def D(name: str) -> bytes:
    return digest(name.encode())


@settings(max_examples=150, deadline=None)
@given(st.lists(refs, max_size=40), digests)
def test_round_trip(chunks, file_digest):
    m = Manifest(tuple(chunks), sum(c.length for c in chunks), file_digest)
    data = m.to_bytes()
    assert data[:4] == b"SVM1"
    back = Manifest.from_bytes(data)
    assert back == m
    assert back.to_bytes() == data
    assert back.digest() == m.digest() == digest(data)


def test_known_encoding():
    m = make((D("a"), 300), (D("b"), 5))
    assert m.to_bytes() == (b"SVM1" + b"\x02" + D("a") + b"\xac\x02" + D("b") + b"\x05" + b"\xb1\x02" + digest(b"file"))


def test_empty_manifest():
    m = ManifestBuilder().build(EMPTY_FILE_DIGEST)
    assert m == Manifest((), 0, digest(b""))
    assert Manifest.from_bytes(m.to_bytes()) == m
    assert m.offsets() == [] and m.unique_digests() == []


def test_offsets_and_unique_digests():
    m = make((D("a"), 10), (D("b"), 20), (D("a"), 10), (D("c"), 5))
    assert m.offsets() == [0, 10, 30, 40]
    assert m.size == 45
    assert m.unique_digests() == [D("a"), D("b"), D("c")]


def test_builder_and_constructor_validate():
    with pytest.raises(ManifestError):
        ManifestBuilder().add(b"short", 1)
    with pytest.raises(ManifestError):
        ManifestBuilder().add(D("a"), 0)
    with pytest.raises(ManifestError):
        ManifestBuilder().build(b"short")
    with pytest.raises(ManifestError):
        Manifest((ChunkRef(D("a"), 5),), 6, D("f"))
    with pytest.raises(ManifestError):
        Manifest([ChunkRef(D("a"), 5)], 5, D("f"))  # type: ignore[arg-type]
    with pytest.raises(ManifestError):
        Manifest((ChunkRef(b"x", 5),), 5, D("f"))


GOOD = make((D("a"), 100), (D("b"), 200)).to_bytes()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SVM",
        b"SVM2" + GOOD[4:],
        GOOD[:-1],
        GOOD + b"\0",
        GOOD[:40],
        b"SVM1" + b"\x80",  # unterminated varint
        b"SVM1" + b"\xff" * 11,  # varint too long
        b"SVM1" + b"\x80\x00" + varint(0) + EMPTY_FILE_DIGEST,  # non-canonical count
        b"SVM1" + b"\x00" + b"\x80\x00" + EMPTY_FILE_DIGEST,  # non-canonical size
        b"SVM1" + b"\x00" + varint(1) + EMPTY_FILE_DIGEST,  # size != sum
        b"SVM1" + b"\x01" + D("a") + b"\x00" + b"\x00" + EMPTY_FILE_DIGEST,  # zero-length chunk
        b"SVM1" + varint(10**9) + D("a"),  # count far beyond the data
        b"SVM1" + b"\x01" + D("a") + b"\xff" * 9 + b"\x7f" + b"\x00" + D("f"),  # length >= 2**64
    ],
)
def test_malformed(data):
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


def test_limits():
    assert Manifest.from_bytes(GOOD, max_chunks=2, max_chunk_size=200).size == 300
    with pytest.raises(ManifestError, match="limit"):
        Manifest.from_bytes(GOOD, max_chunks=1)
    with pytest.raises(ManifestError, match="limit"):
        Manifest.from_bytes(GOOD, max_chunk_size=199)
    with pytest.raises(ManifestError):
        Manifest.from_bytes("not bytes")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    for blob in (data, b"SVM1" + data):
        try:
            m = Manifest.from_bytes(blob)
        except ManifestError:
            continue
        assert m.to_bytes() == blob  # anything accepted is canonical


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutations_of_valid_manifests(data):
    blob = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(blob)))
        if op == "flip" and i < len(blob):
            blob[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[i : i + data.draw(st.integers(1, 40))]
        else:
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=5))
    try:
        m = Manifest.from_bytes(bytes(blob))
    except ManifestError:
        return
    assert m.to_bytes() == bytes(blob)
    assert m.size == sum(c.length for c in m.chunks)


# ---- diff -------------------------------------------------------------------------------------


def test_diff_against_nothing():
    new = make((D("a"), 10), (D("b"), 20), (D("a"), 10))
    assert diff_manifests(None, new) == ManifestDiff(
        shared_chunks=0,
        new_chunks=3,
        shared_bytes=0,
        new_bytes=40,
        changed=[(0, 40)],
        new_digests=[D("a"), D("b")],
    )


def test_diff_identical():
    m = make((D("a"), 10), (D("b"), 20))
    d = diff_manifests(m, m)
    assert (d.shared_chunks, d.new_chunks, d.shared_bytes, d.new_bytes) == (2, 0, 30, 0)
    assert d.changed == [] and d.new_digests == []


def test_diff_changed_ranges_are_merged_and_placed():
    old = make((D("a"), 10), (D("b"), 20), (D("c"), 30), (D("d"), 40))
    new = make((D("a"), 10), (D("x"), 25), (D("y"), 5), (D("c"), 30), (D("z"), 7), (D("x"), 25))
    d = diff_manifests(old, new)
    assert d.changed == [(10, 30), (70, 32)]
    assert (d.shared_chunks, d.new_chunks) == (2, 4)
    assert (d.shared_bytes, d.new_bytes) == (40, 62)
    assert d.new_digests == [D("x"), D("y"), D("z")]


def test_diff_to_empty_and_from_empty():
    empty = ManifestBuilder().build(EMPTY_FILE_DIGEST)
    m = make((D("a"), 10))
    assert diff_manifests(m, empty) == ManifestDiff(0, 0, 0, 0, [], [])
    assert diff_manifests(empty, m).changed == [(0, 10)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcdefgh"), max_size=15), st.lists(st.sampled_from("abcdefgh"), max_size=15))
def test_diff_invariants(old_names, new_names):
    length = {c: 1 + ord(c) % 5 for c in "abcdefgh"}
    old = make(*((D(c), length[c]) for c in old_names))
    new = make(*((D(c), length[c]) for c in new_names))
    d = diff_manifests(old, new)
    assert d.shared_bytes + d.new_bytes == new.size
    assert d.shared_chunks + d.new_chunks == len(new.chunks)
    assert sum(n for _, n in d.changed) == d.new_bytes
    assert set(d.new_digests) == {D(c) for c in new_names} - {D(c) for c in old_names}
    ends = [o + n for o, n in d.changed]
    assert all(ends[i] < d.changed[i + 1][0] for i in range(len(ends) - 1))  # merged and ordered
