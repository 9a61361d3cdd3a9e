"""service.deltadownload.DeltaFrames on real stores (packs and files, on disk): the delta frames the
server sends for GetChunks, when it sends none, and what it reuses."""

from __future__ import annotations

import os

import pytest

from cas import codec, delta
from cas.digest import digest
from cas.packstore import PackChunkStore
from cas.store import LocalChunkStore
from service.deltadownload import DeltaFrames

MAX = 1 << 20


def similar() -> tuple[bytes, bytes, bytes]:
    """(base, other base, wanted): wanted is base's first half, 4 KiB new, then other's second half."""
    base, other = os.urandom(60_000), os.urandom(60_000)
    return base, other, base[:30_000] + os.urandom(4096) + other[30_000:]


@pytest.fixture(params=["packs", "files"])
def store(request, tmp_path):
    s = (PackChunkStore(tmp_path / "packs", fsync=False) if request.param == "packs"
         else LocalChunkStore(tmp_path / "chunks", max_chunk_size=MAX))
    yield s
    s.close()


def put(store, data: bytes) -> tuple[bytes, bytes]:
    frame = codec.encode(data, 3)
    store.put(digest(data), frame)
    return digest(data), frame


def test_a_delta_against_the_concatenated_bases_when_it_pays(store):
    base, other, wanted = similar()
    (b1, _), (b2, _), (w, plain) = put(store, base), put(store, other), put(store, wanted)
    frames = DeltaFrames(store, MAX)
    both = frames.frame(w, (b1, b2), plain)
    assert both is not None and len(both) < 5000
    assert delta.decode_verified(w, both, base + other, MAX) == wanted
    one = frames.frame(w, (b1,), plain)  # half the chunk is new against one base: still pays, but less
    assert one is not None and len(both) < len(one) < 0.75 * len(plain)
    assert frames.frame(w, (b1, b2), plain) == both  # from the cache


def test_no_delta_when_it_does_not_pay_or_a_base_is_unreadable(store):
    base, _, wanted = similar()
    (b1, _), (w, plain) = put(store, base), put(store, wanted)
    unrelated, _ = put(store, os.urandom(60_000))
    frames = DeltaFrames(store, MAX)
    assert frames.frame(w, (unrelated,), plain) is None
    assert frames.frame(w, (digest(b"nowhere"),), plain) is None  # not stored: the plain frame, no error
    assert frames.frame(w, (b1, digest(b"nowhere")), plain) is None
    assert frames.frame(digest(b"other bytes"), (b1,), plain) is None  # a plain frame not of that digest


def test_a_pack_delta_record_against_the_proposed_base_goes_out_as_stored(tmp_path):
    store = PackChunkStore(tmp_path / "packs", fsync=False)
    try:
        base, _, _ = similar()
        wanted = base[:20_000] + os.urandom(4096) + base[24_096:]
        b = digest(base)
        store.put(b, codec.encode(base, 3))
        w = digest(wanted)
        store.put_many([(w, codec.encode(wanted, 3))], bases={w: b})
        record = store.get_record(w)
        assert record.base == b  # the store kept it as a delta against b
        frames = DeltaFrames(store, MAX)
        assert frames.stored(w, (b,)) == record.payload
        assert frames.stored(w, (digest(b"x"),)) is None and frames.stored(w, (b, b)) is None
        assert delta.decode_verified(w, record.payload, base, MAX) == wanted
    finally:
        store.close()
