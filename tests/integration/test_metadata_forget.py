"""The forget script and reads of paths with gaps, on Redis and Valkey (service/metadata)."""

from __future__ import annotations

import os

import pytest

from cas.errors import VersionConflictError
from service.metadata import MetadataStore, VersionRecord

NS = "ns1"
T0 = 1_700_000_000_000
HOUR = 3_600_000


async def put(meta: MetadataStore, path: str, n: int, now_ms: int) -> VersionRecord:
    return await meta.commit(
        NS, path, manifest_digest=bytes([n % 256]) * 32, size=100 + n, file_digest=os.urandom(32), chunk_digests=[],
        chunk_count=0, new_chunks=0, new_bytes=0, identity="alice", mode=0o644, mtime_ns=0, now_ms=now_ms,
    )


async def history(meta: MetadataStore, path: str, count: int) -> list[VersionRecord]:
    """``count`` versions of ``path``, one an hour from T0."""
    return [await put(meta, path, n, T0 + n * HOUR) for n in range(count)]


async def numbers(meta: MetadataStore, path: str, limit: int = 0) -> list[int]:
    return [r.version for r in await meta.list_versions(NS, path, limit)]


async def test_forget_removes_versions_and_reads_skip_the_gaps(metadata):
    recs = await history(metadata, "a.txt", 8)
    stats = await metadata.stats(NS)
    events = await metadata.forget(NS, "a.txt", head_version=8, identity="ops", versions=[recs[1], recs[2], recs[5]])
    assert [e.version for e in events] == [2, 3, 6]
    assert all(e.kind == "forgotten" and e.identity == "ops" and e.path == "a.txt" for e in events)
    assert events[0].size == recs[1].size and events[0].manifest_digest == recs[1].manifest_digest
    assert await numbers(metadata, "a.txt") == [8, 7, 5, 4, 1]
    assert await numbers(metadata, "a.txt", limit=3) == [8, 7, 5]
    assert await metadata.get_version(NS, "a.txt", 3) is None
    # as of a time whose version is gone: the newest remaining version at or before it
    assert (await metadata.version_as_of(NS, "a.txt", T0 + 2 * HOUR + 5)).version == 1
    assert (await metadata.version_as_of(NS, "a.txt", T0 + 5 * HOUR)).version == 5
    assert (await metadata.version_as_of(NS, "a.txt", T0 + 6 * HOUR - 1)).version == 5
    assert (await metadata.version_as_of(NS, "a.txt", T0 + 6 * HOUR)).version == 7
    assert (await metadata.version_as_of(NS, "a.txt", T0 + 99 * HOUR)).version == 8
    assert await metadata.version_as_of(NS, "a.txt", T0 - 1) is None
    assert (await metadata.version_before(NS, "a.txt", 4)).version == 1
    assert (await metadata.version_before(NS, "a.txt", 5)).version == 4
    assert (await metadata.version_before(NS, "a.txt", 7)).version == 5
    files, _ = await metadata.list_files(NS, "", as_of_ms=T0 + 2 * HOUR)
    assert [(f.path, f.version) for f in files] == [("a.txt", 1)]
    after = await metadata.stats(NS)
    assert after.version_count == stats.version_count - 3
    assert after.logical_bytes == stats.logical_bytes - sum(r.size for r in (recs[1], recs[2], recs[5]))
    assert after.file_count == stats.file_count
    feed, _ = await metadata.changes(NS, "", 100)
    assert [(e.kind, e.version) for e in feed[-3:]] == [("forgotten", 2), ("forgotten", 3), ("forgotten", 6)]


async def test_commits_after_a_forget_join_the_timeline(metadata):
    recs = await history(metadata, "b", 4)
    await metadata.forget(NS, "b", head_version=4, identity="ops", versions=recs[:3])
    await put(metadata, "b", 9, T0 + 10 * HOUR)
    await put(metadata, "b", 10, T0 + 10 * HOUR)  # same millisecond: the higher number is newer
    assert await numbers(metadata, "b") == [6, 5, 4]
    assert (await metadata.version_as_of(NS, "b", T0 + 10 * HOUR)).version == 6
    assert (await metadata.version_as_of(NS, "b", T0 + 9 * HOUR)).version == 4
    await metadata.forget(NS, "b", head_version=6, identity="ops", versions=[await metadata.get_version(NS, "b", 5)])
    assert await numbers(metadata, "b") == [6, 4]
    assert (await metadata.version_as_of(NS, "b", T0 + 10 * HOUR)).version == 6


async def test_a_stale_plan_removes_nothing(metadata):
    recs = await history(metadata, "c", 3)
    await put(metadata, "c", 3, T0 + 3 * HOUR)  # a commit lands after the plan for head 3 was made
    with pytest.raises(VersionConflictError) as info:
        await metadata.forget(NS, "c", head_version=3, identity="ops", versions=recs[:2])
    assert info.value.actual == 4
    assert await numbers(metadata, "c") == [4, 3, 2, 1]


async def test_the_head_is_never_removed_and_gone_versions_are_skipped(metadata):
    recs = await history(metadata, "d", 3)
    events = await metadata.forget(NS, "d", head_version=3, identity="ops", versions=[recs[0], recs[2]])
    assert [e.version for e in events] == [1]
    again = await metadata.forget(NS, "d", head_version=3, identity="ops", versions=[recs[0]])
    assert again == []
    assert await numbers(metadata, "d") == [3, 2]
    assert (await metadata.head(NS, "d")).version == 3


async def test_forget_of_a_deleted_paths_history_keeps_its_marker(metadata):
    recs = await history(metadata, "e", 3)
    marker = await metadata.delete(NS, "e", identity="alice", now_ms=T0 + 5 * HOUR)
    await metadata.forget(NS, "e", head_version=marker.version, identity="ops", versions=recs[:2])
    assert await numbers(metadata, "e") == [4, 3]
    assert (await metadata.version_as_of(NS, "e", T0 + 6 * HOUR)).deleted
    files, _ = await metadata.list_files(NS, "", include_deleted=True)
    assert [(f.path, f.version, f.deleted) for f in files] == [("e", 4, True)]


async def test_restore_with_gaps_builds_the_timeline(metadata):
    recs = await history(metadata, "f", 5)
    kept = [recs[0], recs[3], recs[4]]
    fresh = MetadataStore(metadata._redis, prefix=metadata.prefix + "r")
    try:
        await fresh.restore_path(NS, "f", kept)
        assert await numbers(fresh, "f") == [5, 4, 1]
        assert (await fresh.version_as_of(NS, "f", T0 + 2 * HOUR)).version == 1
        assert (await fresh.version_as_of(NS, "f", T0 + 3 * HOUR)).version == 4
    finally:
        keys = [k async for k in metadata._redis.scan_iter(match=f"{fresh.prefix}:*")]
        if keys:
            await metadata._redis.delete(*keys)


async def test_namespaces_are_separate(metadata):
    recs = await history(metadata, "g", 3)
    other = [await metadata.commit(
        "ns2", "g", manifest_digest=b"\x01" * 32, size=1, file_digest=b"\x02" * 32, chunk_digests=[], chunk_count=0,
        new_chunks=0, new_bytes=0, identity="bob", mode=0, mtime_ns=0, now_ms=T0 + n) for n in range(3)]
    await metadata.forget(NS, "g", head_version=3, identity="ops", versions=recs[:2])
    assert [r.version for r in await metadata.list_versions("ns2", "g")] == [3, 2, 1]
    assert len(other) == 3
