"""The chunk location index in Redis/Valkey: set-if-absent writes, pipelined lookups, buckets
spread over cluster slots, and a pack store that keeps its index there across reopening."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from server_fixtures import drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cas.pack import RecordType
from cas.packstore import IndexEntry, PackChunkStore
from service.metadata.keys import location_bucket
from service.metadata.locations import RedisLocationIndex


@pytest.fixture
def index(redis_url: str) -> Iterator[RedisLocationIndex]:
    client = redis.Redis.from_url(redis_url)
    prefix = new_prefix()
    try:
        yield RedisLocationIndex(client, prefix)
    finally:
        drop_prefix(redis_url, prefix)
        client.close()


def entry(n: int, base: bytes | None = None) -> IndexEntry:
    kind = RecordType.DELTA if base else RecordType.CHUNK
    return IndexEntry(f"{n:016x}", 16 + n, 100 + n, kind, 1, 1 if base else 0, base)


def test_put_is_set_if_absent_unless_replacing(index: RedisLocationIndex) -> None:
    d1, d2 = digest(b"one"), digest(b"two")
    assert index.put_many([(d1, entry(1)), (d2, entry(2, base=d1))]) == [True, True]
    assert index.put_many([(d1, entry(9)), (digest(b"three"), entry(3))]) == [False, True]
    assert index.get(d1) == entry(1) and index.get(d2) == entry(2, base=d1)
    assert index.put_many([(d1, entry(9))], replace=True) == [True]
    assert index.get_many([d1, digest(b"absent"), d2]) == [entry(9), None, entry(2, base=d1)]
    assert index.contains_many([d2, digest(b"absent"), d1]) == [True, False, True]
    assert index.put_many([]) == [] and index.contains_many([]) == []


def test_buckets_spread_by_digest_prefix_on_distinct_hash_tags(index: RedisLocationIndex) -> None:
    digests = [digest(str(i).encode()) for i in range(300)]
    index.put_many([(d, entry(i)) for i, d in enumerate(digests)])
    assert dict(index.iterate()) == {d: entry(i) for i, d in enumerate(digests)}
    buckets = set(index.buckets())
    assert buckets == {location_bucket(index.prefix, d) for d in digests}
    assert len(buckets) > 250  # 300 random digests rarely share their first two bytes
    tags = {k[k.index(b"{"):] for k in buckets}
    assert len(tags) == len(buckets)
    assert index.memory_bytes() > 0


def test_pack_store_keeps_its_index_in_redis(index: RedisLocationIndex, tmp_path: Path) -> None:
    chunks = [bytes([i]) * 5000 + str(i).encode() for i in range(20)]
    store = PackChunkStore(tmp_path, index, fsync=False)
    assert store.put_many([(digest(c), codec.encode(c)) for c in chunks]) == [True] * 20
    store.close()
    reopened = PackChunkStore(tmp_path, index, fsync=False)  # trusts the index, no rebuild
    assert [reopened.get(digest(c)) for c in chunks] == chunks
    assert reopened.put(digest(chunks[0]), codec.encode(chunks[0])) is False
    assert reopened.stats().chunk_count == 20
    assert reopened.check(read_data=True).damaged == []
