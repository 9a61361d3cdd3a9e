"""MetadataStore against real Redis and Valkey (every test runs on both, see conftest.py)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from contextlib import aclosing

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

import service.metadata.store as metadata_module
from cas.errors import (
    InvalidDigestError,
    InvalidInputError,
    InvalidPathError,
    ManifestError,
    MissingChunksError,
    NotFoundError,
    VersionConflictError,
)
from service.metadata import Event, MetadataStore, VersionRecord
from service.metadata.store import HeadMoved, PutVersion

NS = "team-a"


def rand_digest() -> bytes:
    return os.urandom(32)


async def put(store: MetadataStore, path: str, *, ns: str = NS, size: int = 100, chunks: int = 1,
              if_version: int | None = None, now_ms: int | None = None, **extra) -> VersionRecord:
    """Commit ``path`` with fresh chunks (registered first, as an upload would)."""
    digests = [rand_digest() for _ in range(chunks)]
    await store.add_chunks(ns, [(d, 10) for d in digests])
    fields = dict(
        manifest_digest=rand_digest(), size=size, file_digest=rand_digest(), chunk_digests=digests,
        chunk_count=chunks, new_chunks=chunks, new_bytes=10 * chunks, identity="alice", mode=0o644,
        mtime_ns=1_700_000_000_123_456_789,
    )
    fields.update(extra)
    return await store.commit(ns, path, if_version=if_version, now_ms=now_ms, **fields)


async def put_many(store: MetadataStore, paths: list[str]) -> None:
    """Commit many paths concurrently, in waves below the client's connection pool size (100)."""
    for start in range(0, len(paths), 50):
        await asyncio.gather(*(put(store, p) for p in paths[start:start + 50]))


async def snapshot(store: MetadataStore) -> dict[bytes, bytes]:
    """Every key of the store's prefix with its serialized value."""
    client = store._redis
    keys = [k async for k in client.scan_iter(match=f"{store.prefix}:*", count=1000)]
    return {k: await client.dump(k) for k in keys}


# ---- commit, head, versions ---------------------------------------------------------------


async def test_commit_moves_head_and_keeps_every_version(metadata: MetadataStore):
    assert await metadata.head(NS, "docs/a.txt") is None
    v1 = await put(metadata, "docs/a.txt", size=10)
    v2 = await put(metadata, "docs/a.txt", size=20)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.created_ms >= v1.created_ms > 1_600_000_000_000  # server clock, Unix ms
    assert await metadata.head(NS, "docs/a.txt") == v2
    assert await metadata.get_version(NS, "docs/a.txt", 1) == v1
    assert await metadata.get_version(NS, "docs/a.txt", 3) is None
    assert await metadata.get_version(NS, "docs/a.txt", 0) is None
    assert await metadata.list_versions(NS, "docs/a.txt") == [v2, v1]
    assert await metadata.list_versions(NS, "docs/a.txt", limit=1) == [v2]
    assert await metadata.list_versions(NS, "nope") == []


async def test_every_field_round_trips_exactly(metadata: MetadataStore):
    big = 2**63 - 1  # beyond a Lua double's exact range: the scripts must never do arithmetic on it
    rec = await put(
        metadata, "f", size=2**53 + 1, mtime_ns=big, mode=0o100755, identity="CN=Zoë ✓ 🚀",
        signature=os.urandom(64), signer_public_key=os.urandom(32), new_bytes=2**40 + 3,
    )
    assert rec.size == 2**53 + 1 and rec.mtime_ns == big and rec.new_bytes == 2**40 + 3
    assert await metadata.head(NS, "f") == rec
    assert rec.identity == "CN=Zoë ✓ 🚀" and len(rec.signature) == 64


async def test_if_version_rules(metadata: MetadataStore):
    with pytest.raises(VersionConflictError) as info:
        await put(metadata, "p", if_version=1)
    assert (info.value.expected, info.value.actual) == (1, 0)
    await put(metadata, "p", if_version=0)
    with pytest.raises(VersionConflictError):
        await put(metadata, "p", if_version=0)  # 0 = "must not exist", but it does
    await put(metadata, "p", if_version=1)
    with pytest.raises(VersionConflictError) as info:
        await put(metadata, "p", if_version=1)
    assert info.value.actual == 2
    await metadata.delete(NS, "p", identity="bob")
    await put(metadata, "p", if_version=0)  # a tombstone is not a live head
    assert (await metadata.head(NS, "p")).version == 4


async def test_concurrent_commits_with_same_if_version_exactly_one_wins(metadata: MetadataStore):
    await put(metadata, "race")
    results = await asyncio.gather(*(put(metadata, "race", if_version=1) for _ in range(20)),
                                   return_exceptions=True)
    winners = [r for r in results if isinstance(r, VersionRecord)]
    assert len(winners) == 1 and winners[0].version == 2
    assert all(isinstance(r, VersionConflictError) for r in results if r is not winners[0])
    assert [v.version for v in await metadata.list_versions(NS, "race")] == [2, 1]


async def test_missing_chunks_are_listed_and_nothing_changes(metadata: MetadataStore):
    v1 = await put(metadata, "m")
    known = [rand_digest() for _ in range(3)]
    await metadata.add_chunks(NS, [(d, 5) for d in known])
    absent = [rand_digest() for _ in range(3)]
    before = await snapshot(metadata)
    with pytest.raises(MissingChunksError) as info:
        await metadata.commit(
            NS, "m", manifest_digest=rand_digest(), size=1, file_digest=rand_digest(),
            chunk_digests=[absent[0], known[0], absent[1], absent[0], known[1], absent[2]],
            chunk_count=6, new_chunks=0, new_bytes=0, identity="x", mode=0, mtime_ns=0, if_version=None,
        )
    assert info.value.missing == absent  # request order, no duplicates
    assert await snapshot(metadata) == before
    assert await metadata.head(NS, "m") == v1


async def test_chunk_length_that_contradicts_the_index_is_refused(metadata: MetadataStore):
    v1 = await put(metadata, "len")
    known = [rand_digest() for _ in range(3)]
    await metadata.add_chunks(NS, [(d, 100) for d in known])
    before = await snapshot(metadata)
    fields = dict(manifest_digest=rand_digest(), size=300, file_digest=rand_digest(), chunk_count=3,
                  new_chunks=0, new_bytes=0, identity="x", mode=0, mtime_ns=0)
    with pytest.raises(ManifestError) as info:
        await metadata.commit(NS, "len", chunk_digests=known, chunk_lengths=[100, 99, 100], **fields)
    assert f"chunk {known[1].hex()} a length of 99 bytes but the stored chunk has 100 bytes" in str(info.value)
    # one digest given two lengths is refused before the script runs
    with pytest.raises(ManifestError, match="two lengths"):
        await metadata.commit(NS, "len", chunk_digests=[known[0], known[0]], chunk_lengths=[100, 101], **fields)
    # missing chunks are reported first (the client can fix those by uploading)
    hole = rand_digest()
    with pytest.raises(MissingChunksError) as missing:
        await metadata.commit(NS, "len", chunk_digests=[*known, hole], chunk_lengths=[1, 1, 1, 1], **fields)
    assert missing.value.missing == [hole]
    assert await snapshot(metadata) == before
    assert await metadata.head(NS, "len") == v1
    rec = await metadata.commit(NS, "len", chunk_digests=[*known, known[0]], chunk_lengths=[100] * 4, **fields)
    assert rec.version == v1.version + 1


async def test_conflict_changes_nothing(metadata: MetadataStore):
    await put(metadata, "c")
    before = await snapshot(metadata)
    with pytest.raises(VersionConflictError):
        await metadata.commit(
            NS, "c", manifest_digest=rand_digest(), size=1, file_digest=rand_digest(), chunk_digests=[],
            chunk_count=0, new_chunks=0, new_bytes=0, identity="x", mode=0, mtime_ns=0, if_version=7,
        )
    assert await snapshot(metadata) == before


# ---- deletes ------------------------------------------------------------------------------


async def test_delete_writes_a_tombstone_and_keeps_history(metadata: MetadataStore):
    v1 = await put(metadata, "t/x", size=5)
    tomb = await metadata.delete(NS, "t/x", identity="bob")
    assert tomb.deleted and tomb.version == 2 and tomb.identity == "bob"
    assert tomb.manifest_digest == b"" and tomb.size == 0
    assert await metadata.head(NS, "t/x") == tomb
    assert await metadata.list_versions(NS, "t/x") == [tomb, v1]
    with pytest.raises(NotFoundError):
        await metadata.delete(NS, "t/x", identity="bob")
    with pytest.raises(NotFoundError):
        await metadata.delete(NS, "never/was", identity="bob")
    v3 = await put(metadata, "t/x")
    assert v3.version == 3 and not v3.deleted


async def test_delete_honours_if_version(metadata: MetadataStore):
    await put(metadata, "d")
    await put(metadata, "d")
    before = await snapshot(metadata)
    with pytest.raises(VersionConflictError) as info:
        await metadata.delete(NS, "d", identity="bob", if_version=1)
    assert info.value.actual == 2
    assert await snapshot(metadata) == before
    assert (await metadata.delete(NS, "d", identity="bob", if_version=2)).version == 3


# ---- time travel --------------------------------------------------------------------------


async def test_version_as_of(metadata: MetadataStore):
    await put(metadata, "h", now_ms=1000)
    await put(metadata, "h", now_ms=2000)
    await put(metadata, "h", now_ms=2000)
    await put(metadata, "h", now_ms=3000)
    assert await metadata.version_as_of(NS, "h", 999) is None
    assert (await metadata.version_as_of(NS, "h", 1000)).version == 1
    assert (await metadata.version_as_of(NS, "h", 1999)).version == 1
    assert (await metadata.version_as_of(NS, "h", 2000)).version == 3  # newest of equal times
    assert (await metadata.version_as_of(NS, "h", 2999)).version == 3
    assert (await metadata.version_as_of(NS, "h", 10**13)).version == 4
    assert await metadata.version_as_of(NS, "missing", 10**13) is None


async def test_created_ms_never_goes_backwards(metadata: MetadataStore):
    await put(metadata, "clock", now_ms=5000)
    rec = await put(metadata, "clock", now_ms=4000)  # a server whose clock stepped back
    assert rec.created_ms == 5000


async def test_version_as_of_matches_a_linear_scan(metadata: MetadataStore):
    rng = random.Random(7)
    times, t = [], 10_000
    for _ in range(150):
        t += rng.choice([0, 1, 5, 100])
        times.append(t)
    for ms in times:
        await put(metadata, "many", now_ms=ms)
    for probe in [9_999, *rng.sample(range(10_000, t + 50), 60), t, t + 1]:
        expected = max((i + 1 for i, ms in enumerate(times) if ms <= probe), default=None)
        got = await metadata.version_as_of(NS, "many", probe)
        assert (got.version if got else None) == expected, probe


# ---- listing ------------------------------------------------------------------------------


async def test_list_files_pages_see_every_path_once_under_concurrent_inserts(metadata: MetadataStore):
    originals = [f"data/{i:05d}.bin" for i in range(2500)]
    await put_many(metadata, originals)
    stop = asyncio.Event()
    inserted: list[str] = []

    async def inserter() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            path = f"data/{rng.randrange(2600):05d}.new-{len(inserted)}"
            await put(metadata, path)
            inserted.append(path)

    task = asyncio.create_task(inserter())
    seen: list[str] = []
    after, pages = "", 0
    try:
        while True:
            records, after = await metadata.list_files(NS, "data/", after=after, limit=100)
            assert len(records) == 100 or not after
            seen += [r.path for r in records]
            pages += 1
            await asyncio.sleep(0)  # let the inserter run between pages
            if not after:
                break
    finally:
        stop.set()
        await task
    assert len(inserted) > 20
    counts = Counter(seen)
    assert all(counts[p] == 1 for p in originals), [p for p in originals if counts[p] != 1][:5]
    assert max(counts.values()) == 1
    assert seen == sorted(seen)
    assert pages >= 25


async def test_list_files_prefix_skips_tombstones_but_fills_pages(metadata: MetadataStore):
    paths = [f"p/{i:03d}" for i in range(300)]
    await put_many(metadata, paths)
    await put(metadata, "pa")  # shares the string prefix "p" but not "p/"
    await put(metadata, "o")
    for p in paths[::2] + paths[:150]:
        if (await metadata.head(NS, p)).deleted is False:
            await metadata.delete(NS, p, identity="bob")
    live = [p for i, p in enumerate(paths) if i >= 150 and i % 2]
    got, after, sizes = [], "", []
    while True:
        records, after = await metadata.list_files(NS, "p/", after=after, limit=20)
        got += [r.path for r in records]
        sizes.append(len(records))
        if not after:
            break
    assert got == live
    assert all(s == 20 for s in sizes[:-1]) and sizes[-1] <= 20
    everything, after = await metadata.list_files(NS, "p/", limit=1000, include_deleted=True)
    assert [r.path for r in everything] == paths and after == ""
    assert sum(r.deleted for r in everything) == 225


async def test_list_files_cursor_is_empty_exactly_at_the_end(metadata: MetadataStore):
    await asyncio.gather(*(put(metadata, f"e/{i}") for i in range(4)))
    records, after = await metadata.list_files(NS, "e/", limit=4)
    assert len(records) == 4 and after == ""
    records, after = await metadata.list_files(NS, "e/", limit=3)
    assert len(records) == 3 and after == "e/2"
    records, after = await metadata.list_files(NS, "e/", after=after, limit=3)
    assert [r.path for r in records] == ["e/3"] and after == ""
    assert await metadata.list_files(NS, "zzz/") == ([], "")
    with pytest.raises(InvalidInputError):
        await metadata.list_files(NS, "", limit=0)


async def test_list_files_as_of_shows_each_path_as_it_was(metadata: MetadataStore):
    await put(metadata, "a", now_ms=1000, size=1)
    await put(metadata, "b", now_ms=1000, size=1)
    await put(metadata, "a", now_ms=2000, size=2)
    await metadata.delete(NS, "b", identity="x", now_ms=2000)
    await put(metadata, "c", now_ms=3000, size=3)
    at = {}
    for ms in (500, 1500, 2500, 3500):
        records, _ = await metadata.list_files(NS, "", as_of_ms=ms)
        at[ms] = [(r.path, r.version) for r in records]
    assert at == {500: [], 1500: [("a", 1), ("b", 1)], 2500: [("a", 2)], 3500: [("a", 2), ("c", 1)]}
    records, _ = await metadata.list_files(NS, "", as_of_ms=2500, include_deleted=True)
    assert [(r.path, r.version, r.deleted) for r in records] == [("a", 2, False), ("b", 2, True)]


async def test_odd_paths_stay_in_the_namespace_slot_and_sort_by_utf8(metadata: MetadataStore):
    paths = ["a:b", "{x}", "}{", "f:{other}/v:1", "dir/with space", "日本/語.txt", "emoji/🚀", "é", "z"]
    for p in paths:
        await put(metadata, p)
    records, _ = await metadata.list_files(NS, "", limit=100)
    assert [r.path for r in records] == sorted(paths, key=lambda p: p.encode())
    for p in paths:
        assert (await metadata.head(NS, p)).path == p
    slot = key_slot(NS.encode())
    keys = {k async for k in metadata._redis.scan_iter(match=f"{metadata.prefix}:*")}  # SCAN may repeat keys
    assert len(keys) == 4 + 2 * len(paths)  # files, events, chunks, stats + head and versions per path
    assert {key_slot(k) for k in keys} == {slot}


async def test_bad_names_and_digests_are_refused(metadata: MetadataStore):
    for ns in ["", "a b", "x" * 65, "{ns}", "a:b", "é"]:
        with pytest.raises(InvalidInputError):
            await metadata.head(ns, "p")
    for path in ["bad\x00nul", "tab\there", "del\x7f", "c1\x85", "lone\udc80"]:
        with pytest.raises(InvalidPathError):
            await put(metadata, path)
    with pytest.raises(InvalidPathError):
        await put(metadata, "")
    with pytest.raises(InvalidDigestError):
        await metadata.missing_chunks(NS, [b"short"])
    with pytest.raises(InvalidDigestError):
        await metadata.add_chunks(NS, [(b"x" * 31, 1)])
    with pytest.raises(InvalidDigestError):
        await put(metadata, "p", manifest_digest=b"")


async def test_namespaces_are_isolated(metadata: MetadataStore):
    await put(metadata, "same", ns="one")
    assert await metadata.head("two", "same") is None
    assert (await metadata.stats("two")).file_count == 0
    d = rand_digest()
    await metadata.add_chunks("one", [(d, 1)])
    assert await metadata.missing_chunks("two", [d]) == [d]


# ---- chunk index and stats ----------------------------------------------------------------


async def test_chunk_index(metadata: MetadataStore):
    a, b, c = rand_digest(), rand_digest(), rand_digest()
    assert await metadata.add_chunks(NS, [(a, 10), (b, 20), (a, 10)]) == 2
    assert await metadata.add_chunks(NS, [(a, 10), (c, 30)]) == 1
    d = rand_digest()
    assert await metadata.missing_chunks(NS, [d, a, d, b]) == [d]
    assert await metadata.missing_chunks(NS, []) == []
    assert await metadata.remove_chunks(NS, [a, d]) == 1
    assert await metadata.missing_chunks(NS, [a, b]) == [a]
    stats = await metadata.stats(NS)
    assert (stats.chunk_count, stats.unique_bytes) == (2, 50)


async def test_stats(metadata: MetadataStore):
    empty = await metadata.stats(NS)
    assert (empty.chunk_count, empty.unique_bytes, empty.logical_bytes, empty.file_count,
            empty.version_count) == (0, 0, 0, 0, 0)
    await put(metadata, "a", size=60, chunks=3)
    await put(metadata, "a", size=50, chunks=1)
    await put(metadata, "b", size=7, chunks=1)
    await metadata.delete(NS, "a", identity="x")
    stats = await metadata.stats(NS)
    assert stats.chunk_count == 5 and stats.unique_bytes == 50
    assert stats.logical_bytes == 117  # every version ever committed
    assert stats.file_count == 1 and stats.version_count == 4


async def test_referenced_manifests(metadata: MetadataStore):
    v1 = await put(metadata, "r/1")
    v2 = await put(metadata, "r/1")
    v3 = await put(metadata, "r/2")
    await metadata.delete(NS, "r/2", identity="x")
    got = {d async for d in metadata.referenced_manifests(NS)}
    assert got == {v1.manifest_digest, v2.manifest_digest, v3.manifest_digest}


async def test_commit_of_200k_chunks(metadata: MetadataStore):
    n = 200_000
    digests = [os.urandom(32) for _ in range(n)]
    assert await metadata.add_chunks(NS, [(d, 65536) for d in digests]) == n
    fields = dict(manifest_digest=rand_digest(), size=n * 65536, file_digest=rand_digest(), chunk_count=n,
                  new_chunks=n, new_bytes=n * 65536, identity="big", mode=0, mtime_ns=0)
    rec = await metadata.commit(NS, "huge.img", chunk_digests=digests, chunk_lengths=[65536] * n, **fields)
    assert rec.version == 1 and rec.chunk_count == n
    with pytest.raises(ManifestError, match=digests[-1].hex()):
        await metadata.commit(NS, "huge.img", chunk_digests=digests, chunk_lengths=[*[65536] * (n - 1), 1],
                              **fields)
    hole = os.urandom(32)
    with pytest.raises(MissingChunksError) as info:
        await metadata.commit(NS, "huge.img", chunk_digests=[*digests[:100_000], hole, *digests[100_000:]],
                              **fields)
    assert info.value.missing == [hole]
    assert (await metadata.head(NS, "huge.img")).version == 1
    assert await metadata.missing_chunks(NS, [*digests, hole]) == [hole]


# ---- change feed --------------------------------------------------------------------------


async def test_changes_in_order_and_resumable(metadata: MetadataStore):
    assert await metadata.changes(NS, "", 10) == ([], "")
    await put(metadata, "x/1")
    await put(metadata, "y/1")
    await put(metadata, "x/2")
    await metadata.delete(NS, "x/1", identity="bob")
    first, cursor = await metadata.changes(NS, "", 2)
    assert [(e.kind, e.path, e.version) for e in first] == [("put", "x/1", 1), ("put", "y/1", 1)]
    rest, cursor2 = await metadata.changes(NS, cursor, 10)
    assert [(e.kind, e.path, e.version) for e in rest] == [("put", "x/2", 1), ("delete", "x/1", 2)]
    assert rest[-1].identity == "bob" and rest[-1].manifest_digest == b"" and rest[-1].size == 0
    assert await metadata.changes(NS, cursor2, 10) == ([], cursor2)  # nothing new: cursor unchanged
    only_x, cursor3 = await metadata.changes(NS, "", 10, prefix="x/")
    assert [e.path for e in only_x] == ["x/1", "x/2", "x/1"] and cursor3 == cursor2
    head = await metadata.head(NS, "x/2")
    assert rest[0].manifest_digest == head.manifest_digest and rest[0].time_ms == head.created_ms
    with pytest.raises(InvalidInputError):
        await metadata.changes(NS, "not-a-cursor", 10)


async def test_changes_skip_filtered_events_without_rescanning(metadata: MetadataStore):
    for i in range(30):
        await put(metadata, f"noise/{i}")
    await put(metadata, "want/1")
    events, cursor = await metadata.changes(NS, "", 5, prefix="want/")
    assert [e.path for e in events] == ["want/1"]
    assert cursor == events[0].cursor


async def _next_events(agen, n: int) -> list[Event]:
    return [await agen.__anext__() for _ in range(n)]


async def test_watch_streams_new_events_and_resumes(metadata: MetadataStore):
    await put(metadata, "w/old")
    async with aclosing(metadata.watch(NS, "", block_ms=100)) as live:
        pending = asyncio.ensure_future(_next_events(live, 3))
        await asyncio.sleep(0.3)  # the watcher has taken its starting point
        await put(metadata, "w/1")
        await put(metadata, "other/1")
        await metadata.delete(NS, "w/1", identity="bob")
        events = await asyncio.wait_for(pending, 10)
    assert [(e.kind, e.path) for e in events] == [("put", "w/1"), ("put", "other/1"), ("delete", "w/1")]
    async with aclosing(metadata.watch(NS, events[0].cursor, block_ms=100)) as resumed:
        assert await asyncio.wait_for(_next_events(resumed, 2), 10) == events[1:]
    async with aclosing(metadata.watch(NS, "0", prefix="w/", block_ms=100)) as replay:
        got = await asyncio.wait_for(_next_events(replay, 3), 10)
    assert [(e.kind, e.path) for e in got] == [("put", "w/old"), ("put", "w/1"), ("delete", "w/1")]


async def test_watch_cancels_promptly(metadata: MetadataStore):
    async def consume() -> None:
        async for _ in metadata.watch(NS, "", block_ms=5000):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 1.0
    assert (await put(metadata, "after-cancel")).version == 1  # the client is still usable


async def test_many_watchers_share_one_connection(metadata: MetadataStore):
    # one blocking XREAD per watcher would need 300 connections; the client's pool allows 100
    started = [asyncio.Event() for _ in range(300)]
    # From a fixed cursor, not "" (= from whenever the watch is established, which on a loaded
    # machine can come after the first put below).
    _, cursor = await metadata.changes(NS, "", 1000)

    async def watcher(i: int) -> list[str]:
        got = []
        async with aclosing(metadata.watch(NS, cursor, block_ms=100)) as feed:
            first = asyncio.ensure_future(feed.__anext__())
            await asyncio.sleep(0.5)
            started[i].set()
            got.append((await first).path)
            got.append((await feed.__anext__()).path)
        return got

    tasks = [asyncio.create_task(watcher(i)) for i in range(300)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
    await put(metadata, "fan/1")
    await put(metadata, "fan/2")
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert all(r == ["fan/1", "fan/2"] for r in results)


async def test_slow_watcher_is_dropped_and_catches_up_without_gaps(metadata: MetadataStore, monkeypatch):
    feed_ = metadata._feed
    feed_.max_batches = 1  # drop a watcher as soon as it is one batch behind
    joins = []
    join = feed_._join

    async def counting_join(*args):
        joins.append(args)
        return await join(*args)

    monkeypatch.setattr(feed_, "_join", counting_join)
    async with aclosing(metadata.watch(NS, "", block_ms=50)) as feed:
        first = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0.3)
        await put(metadata, "slow/0")
        assert (await first).path == "slow/0"
        for i in range(1, 21):  # not consuming: the reader fills the queue and drops us
            await put(metadata, f"slow/{i}")
            await asyncio.sleep(0.02)
        got = [(await feed.__anext__()).path for _ in range(20)]
        await put(metadata, "slow/21")
        got.append((await asyncio.wait_for(feed.__anext__(), 10)).path)
    assert got == [f"slow/{i}" for i in range(1, 22)]
    assert len(joins) >= 2  # it was dropped, and joined again


async def test_watch_from_a_cursor_while_events_keep_coming(metadata: MetadataStore):
    for i in range(50):
        await put(metadata, f"s/{i:03d}")
    events, _ = await metadata.changes(NS, "", 10)

    async def producer() -> None:
        for i in range(50, 150):
            await put(metadata, f"s/{i:03d}")

    task = asyncio.create_task(producer())
    async with aclosing(metadata.watch(NS, events[-1].cursor, block_ms=50)) as feed:
        got = [(await asyncio.wait_for(feed.__anext__(), 10)).path for _ in range(140)]
    await task
    assert got == [f"s/{i:03d}" for i in range(10, 150)]


async def test_watch_reports_a_broken_stream(metadata: MetadataStore):
    async with aclosing(metadata.watch(NS, "", block_ms=50)) as feed:
        pending = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0.3)
        await metadata._redis.set(f"{metadata.prefix}:{{{NS}}}:events", "not a stream")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await asyncio.wait_for(pending, 10)


async def test_listing_a_sea_of_tombstones_returns_short_pages_with_a_cursor(metadata: MetadataStore,
                                                                            monkeypatch):
    monkeypatch.setattr(metadata_module, "_MAX_LIST_SCAN", 50)
    dead = [f"t/{i:03d}" for i in range(120)]
    await put_many(metadata, [*dead, "t/live-1", "t/live-2"])
    for start in range(0, len(dead), 50):
        await asyncio.gather(*(metadata.delete(NS, p, identity="x") for p in dead[start:start + 50]))
    records, after = await metadata.list_files(NS, "t/", limit=10)
    assert records == [] and after  # gave up scanning, but says where to go on
    found, calls = [], 1
    while after:
        records, after = await metadata.list_files(NS, "t/", after=after, limit=10)
        found += [r.path for r in records]
        calls += 1
    assert found == ["t/live-1", "t/live-2"] and calls >= 3


async def test_store_refuses_a_decoding_client_and_a_bad_prefix(redis_url: str):
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            MetadataStore(client)
    finally:
        await client.aclose()
    client = aioredis.from_url(redis_url)
    try:
        with pytest.raises(ValueError, match="prefix"):
            MetadataStore(client, prefix="sv{x}")
    finally:
        await client.aclose()


def _put_version(path: str, digests: list[bytes], **extra) -> PutVersion:
    fields = dict(
        path=path, manifest_digest=rand_digest(), size=10 * len(digests), file_digest=rand_digest(),
        chunk_digests=digests, chunk_count=len(digests), new_chunks=len(digests), new_bytes=10 * len(digests),
        identity="alice", mode=0o644, mtime_ns=1,
    )
    fields.update(extra)
    return PutVersion(**fields)


async def test_commit_group_answers_each_file_on_its_own(metadata: MetadataStore):
    digests = [rand_digest() for _ in range(3)]
    await metadata.add_chunks(NS, [(d, 10) for d in digests])
    old = await put(metadata, "g/old")
    inline = b"inline manifest bytes"
    group = [
        _put_version("g/new", digests, expected=0, manifest=inline),
        _put_version("g/old", digests, expected=0),  # believed new, but it has a head
        _put_version("g/old2", digests, if_version=3),
        _put_version("", digests),
        _put_version("g/hole", [rand_digest()]),
        _put_version("g/unchecked", digests[:1], expected=None),
    ]
    new, moved, conflict, bad_path, missing, unchecked = await metadata.commit_group(NS, group, now_ms=5_000)
    assert isinstance(new, VersionRecord) and new.version == 1 and new.manifest == inline
    assert (await metadata.head(NS, "g/new")).manifest == inline
    assert isinstance(moved, HeadMoved) and moved.head == old
    assert isinstance(conflict, VersionConflictError) and conflict.actual == 0
    assert isinstance(bad_path, InvalidPathError)
    assert isinstance(missing, MissingChunksError)
    assert isinstance(unchecked, VersionRecord) and unchecked.created_ms == new.created_ms == 5_000
    assert (await metadata.head(NS, "g/old")) == old  # a moved head changes nothing
    assert (await metadata.stats(NS)).version_count == 3
    assert await metadata.head(NS, "g/hole") is None
