"""Where manifests live (service/manifests.py): inline up to the limit, stored beyond it, read back
from packs or from an older store's DATA/manifests/, on a real disk."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest
from test_journal import blocking, record

from cas import codec
from cas.digest import digest
from cas.errors import ChunkNotFoundError, CorruptChunkError
from cas.manifest import ChunkRef, Manifest
from cas.store import LocalChunkStore
from service.journal import Journal, read_all
from service.manifests import INLINE_MANIFEST_BYTES, MAX_MANIFEST_BYTES, from_inline, inline_form, open_manifest_store
from service.metadata.records import decode_record, stored_form


def manifest(chunks: int) -> Manifest:
    refs = tuple(ChunkRef(os.urandom(32), 1000 + n) for n in range(chunks))
    return Manifest(chunks=refs, size=sum(r.length for r in refs), file_digest=os.urandom(32))


def largest_inline() -> Manifest:
    n = 1
    while len(manifest(n + 1).to_bytes()) <= INLINE_MANIFEST_BYTES:
        n += 1
    return manifest(n)


def test_inline_up_to_the_limit_and_stored_beyond():
    small = largest_inline()
    assert len(small.to_bytes()) <= INLINE_MANIFEST_BYTES and inline_form(small.to_bytes()) == small.to_bytes()
    big = manifest(len(small.chunks) + 1)
    assert len(big.to_bytes()) > INLINE_MANIFEST_BYTES and inline_form(big.to_bytes()) == b""
    assert from_inline(small.digest(), inline_form(small.to_bytes())) == small


def test_an_inline_manifest_must_match_its_digest():
    m = manifest(3)
    with pytest.raises(CorruptChunkError):
        from_inline(manifest(3).digest(), m.to_bytes())


def test_records_carry_the_inline_manifest_in_redis_and_the_journal(tmp_path: Path):
    m = manifest(5)
    rec = replace(record("docs/a.txt", 1), manifest_digest=m.digest(), manifest=m.to_bytes())
    assert decode_record(rec.path, stored_form(rec).encode()) == rec
    plain = record("docs/b.txt", 1)
    assert '"manifest"' not in stored_form(plain)  # absent, not empty: older records look the same

    async def go() -> None:
        journal = Journal(tmp_path, blocking)
        await journal.append("team", [rec, plain])
        journal.close()

    asyncio.run(go())
    entries, problems = read_all(tmp_path)
    assert problems == [] and [e.record for e in entries] == [rec, plain]
    assert from_inline(entries[0].record.manifest_digest, entries[0].record.manifest) == m


def test_packs_hold_large_manifests_and_an_older_manifests_folder_is_still_read(tmp_path: Path):
    old = manifest(300)
    legacy = LocalChunkStore(tmp_path / "manifests", max_chunk_size=MAX_MANIFEST_BYTES)
    legacy.put(old.digest(), codec.encode(old.to_bytes(), 1))
    store = open_manifest_store(tmp_path, packs=True)  # a memory index, rebuilt from the packs
    new = manifest(400)
    assert store.put_many([new, new]) == [new.digest()] * 2
    assert Manifest.from_bytes(store.get(new.digest())) == new
    assert Manifest.from_bytes(store.get(old.digest())) == old  # from DATA/manifests/
    assert store.has_many([new.digest(), old.digest(), digest(b"none")]) == [True, True, False]
    with pytest.raises(ChunkNotFoundError):
        store.get(digest(b"none"))
    store.close()
    reopened = open_manifest_store(tmp_path, packs=True)
    assert Manifest.from_bytes(reopened.get(new.digest())) == new
    assert list(reopened.store.iterate()) == [new.digest()]  # manifest records only
    reopened.close()
    assert not (tmp_path / "chunks").exists()
