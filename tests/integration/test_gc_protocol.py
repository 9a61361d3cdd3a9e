"""Both sides of the garbage collection protocol, on Redis and Valkey. Location index: a claim
takes a condemned mark off so the drop refuses, a drop makes a later claim fail so the upload
leaves the chunk out, and a repack's switch is a compare-and-set. Namespace chunk index: every
writer touch resurrects a condemned chunk, the sweep drops only untouched ones."""

from __future__ import annotations

import os

import pytest
import redis
from server_fixtures import drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cas.errors import MissingChunksError
from cas.manifest import ChunkRef, Manifest
from cas.packstore import PackChunkStore
from service.manifests import open_manifest_store
from service.metadata.condemned import CondemnedChunks
from service.metadata.keys import manifest_index_prefix
from service.metadata.locations import RedisLocationIndex


@pytest.fixture
def store(redis_url, tmp_path):
    prefix = new_prefix()
    client = redis.Redis.from_url(redis_url)
    store = PackChunkStore(tmp_path, RedisLocationIndex(client, prefix), fsync=False)
    try:
        yield store
    finally:
        store.close()
        client.close()
        drop_prefix(redis_url, prefix)


def item() -> tuple[bytes, bytes]:
    data = os.urandom(5000)
    return digest(data), codec.encode(data)


def test_a_claim_saves_a_condemned_entry_from_the_drop(store):
    d, frame = item()
    store.put_many([(d, frame)])
    index = store.index
    index.condemn_many([d], 7)
    staged = store.stage([(d, frame)])  # already indexed: not written, relied upon
    assert staged.present == [d]
    store.publish(staged)  # claims it
    assert staged.lost == set()
    assert index.drop_condemned([d], 7) == []
    assert store.get(d) == codec.decode(frame, 1 << 20)


def test_an_entry_dropped_after_staging_is_reported_lost_not_named(store):
    d, frame = item()
    store.put_many([(d, frame)])
    index = store.index
    index.condemn_many([d], 3)
    staged = store.stage([(d, frame)])
    assert [x for x, _ in index.drop_condemned([d], 3)] == [d]
    assert index.drop_condemned([d], 3) == []  # once
    store.publish(staged)
    assert staged.lost == {d} and not store.has(d)
    store.put_many([(d, frame)])  # the client's next upload writes it again
    assert store.get(d) == codec.decode(frame, 1 << 20)


def test_only_the_condemning_epoch_drops(store):
    d, frame = item()
    store.put_many([(d, frame)])
    store.index.condemn_many([d], 5)
    assert store.index.drop_condemned([d], 4) == []
    assert store.has(d)


def test_switch_is_compare_and_set(store):
    (d, frame), (e, other) = item(), item()
    store.put_many([(d, frame), (e, other)])
    old, moved = store.index.get(d), store.index.get(e)
    assert store.index.switch_many([(d, old, moved), (e, old, moved)]) == [True, False]
    assert store.index.get(d) == moved and store.index.get(e) == moved


def _commit_fields(digests: list[bytes]) -> dict:
    return dict(manifest_digest=os.urandom(32), size=10 * len(digests), file_digest=os.urandom(32),
                chunk_digests=digests, chunk_count=len(digests), new_chunks=0, new_bytes=0, identity="w",
                mode=0o644, mtime_ns=0)


async def test_every_writer_touch_resurrects_and_the_sweep_drops_only_the_rest(metadata):
    ns = "n"
    asked, uploaded, committed, idle = (os.urandom(32) for _ in range(4))
    await metadata.add_chunks(ns, [(d, 10) for d in (asked, uploaded, committed, idle)])
    marks = CondemnedChunks(metadata.client, metadata.prefix)
    await marks.condemn(ns, [asked, uploaded, committed, idle], 1)
    assert await metadata.missing_chunks(ns, [asked]) == []  # FindMissingChunks
    await metadata.add_chunks(ns, [(uploaded, 10)])  # PutChunks of a chunk it already has
    await metadata.commit(ns, "p", **_commit_fields([committed]))
    assert set(await marks.condemned(ns, 1)) == {idle}
    assert await marks.sweep(ns, [asked, uploaded, committed, idle], 1) == [idle]
    assert await metadata.missing_chunks(ns, [asked, uploaded, committed, idle]) == [idle]
    assert (await metadata.stats(ns)).unique_bytes == 30
    with pytest.raises(MissingChunksError):  # a commit after the sweep: the client uploads it again
        await metadata.commit(ns, "q", **_commit_fields([idle]))
    assert await marks.sweep(ns, [idle], 1) == []  # the sweep is idempotent


@pytest.fixture
def manifests(redis_url, tmp_path):
    prefix = new_prefix()
    client = redis.Redis.from_url(redis_url)
    index = RedisLocationIndex(client, manifest_index_prefix(prefix))
    store = open_manifest_store(tmp_path, packs=True, index=index)
    try:
        yield store, index
    finally:
        store.close()
        client.close()
        drop_prefix(redis_url, prefix)


def big_manifest() -> Manifest:
    data = os.urandom(64)
    refs = [ChunkRef(digest(os.urandom(8)), 65536) for _ in range(200)]
    return Manifest(chunks=tuple(refs), size=200 * 65536, file_digest=digest(data))


def test_saving_a_condemned_manifest_record_claims_it_back_from_the_drop(manifests):
    store, index = manifests
    m = big_manifest()
    [d] = store.put_many([m])
    index.condemn_many([d], 5)
    store.put_many([m])  # the save before a commit that names it
    assert index.drop_condemned([d], 5) == []
    assert Manifest.from_bytes(store.get(d)) == m


def test_saving_a_manifest_whose_record_was_dropped_writes_it_again(manifests):
    store, index = manifests
    m = big_manifest()
    [d] = store.put_many([m])
    index.condemn_many([d], 6)
    assert [x for x, _ in index.drop_condemned([d], 6)] == [d]
    store.put_many([m])
    assert index.get(d) is not None and Manifest.from_bytes(store.get(d)) == m
