"""A stored manifest saved before a collection condemns it and committed after its second mark
stays readable: the commit claims it again afterwards, and stores it again if the drop took it.

The collection and the commit run in one process against a real Redis/Valkey and a real pack
store; the interleaving is forced by holding the commit at the two points that matter (before its
commit script, before its post-commit claim) until the collection has reached the phase under
test. No timing is involved: the grace period is 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis
from server_fixtures import drop_prefix, new_prefix

from cas import codec
from cas.chunker import ChunkParams
from cas.digest import digest
from cas.manifest import ChunkRef, Manifest
from service.commits import CommitRequest, Committer
from service.gc import GarbageCollector, GcReport, GcSettings
from service.manifests import INLINE_MANIFEST_BYTES
from service.metadata import MetadataStore
from service.metadata.locations import named_index
from service.repository import PACKS, Repository, open_stores
from service.server import metadata_client

NS = "race"


@dataclass
class Stack:
    repo: Repository
    committer: Committer
    gc: GarbageCollector


@pytest.fixture
async def stack(redis_url, tmp_path) -> AsyncIterator[Stack]:
    prefix = new_prefix()
    locations = redis.Redis.from_url(redis_url)
    chunks, manifests = open_stores(
        tmp_path, PACKS, ChunkParams(), lambda name: named_index(locations, prefix, name), 1 << 20
    )
    meta = metadata_client(redis_url)
    repo = Repository(tmp_path, MetadataStore(meta, prefix=prefix), ChunkParams(), chunks=chunks, manifests=manifests)
    try:
        yield Stack(repo, Committer(repo, 1 << 20), GarbageCollector(repo, GcSettings(grace_s=0), lambda _: None))
    finally:
        repo.close()
        await meta.aclose()
        locations.close()
        drop_prefix(redis_url, prefix)


async def big_file(repo: Repository) -> Manifest:
    """Upload 200 small chunks and return the manifest naming them (too large to be inline)."""
    datas = [os.urandom(64) for _ in range(200)]
    upload = repo.open_upload(NS, 1 << 20)
    await upload.add([(digest(d), codec.encode(d)) for d in datas])
    await upload.finish()
    refs = tuple(ChunkRef(digest(d), len(d)) for d in datas)
    manifest = Manifest(chunks=refs, size=sum(len(d) for d in datas), file_digest=digest(b"".join(datas)))
    assert len(manifest.to_bytes()) > INLINE_MANIFEST_BYTES
    return manifest


def hold(obj: object, name: str, until: asyncio.Event, reached: asyncio.Event | None = None) -> None:
    """Make ``obj.name`` wait for ``until`` before it runs (and set ``reached`` when it returned)."""
    real: Callable[..., Awaitable[object]] = getattr(obj, name)

    async def held(*args: object) -> object:
        await until.wait()
        result = await real(*args)
        if reached is not None:
            reached.set()
        return result

    setattr(obj, name, held)


def after_second_mark(gc: GarbageCollector, then: Callable[[], Awaitable[None]]) -> None:
    """Run ``then`` right after the collection's second mark (the sweep's), before its drop."""
    real = gc._mark
    calls = 0

    async def mark(report: GcReport) -> object:
        nonlocal calls
        result = await real(report)
        calls += 1
        if calls == 2:
            await then()
        return result

    gc._mark = mark  # type: ignore[method-assign]


async def race(stack: Stack, claim_after_drop: bool) -> GcReport:
    """Save, condemn, commit after the second mark, claim before or after the drop; the report."""
    repo = stack.repo
    manifest = await big_file(repo)
    may_commit, committed, may_claim = asyncio.Event(), asyncio.Event(), asyncio.Event()
    hold(repo, "commit_group", may_commit, committed)
    hold(repo, "reclaim_manifests", may_claim)
    request = CommitRequest(path="big.bin", manifest=manifest, if_version=None, mode=0o644, mtime_ns=1)
    commit = asyncio.create_task(stack.committer.commit(NS, "tester", request))
    while not (await repo.run_blocking(repo.manifests.has_many, [manifest.digest()]))[0]:
        await asyncio.sleep(0.01)  # saved, waiting before its commit script

    async def commit_now() -> None:
        may_commit.set()
        await committed.wait()
        if not claim_after_drop:
            may_claim.set()
            await commit

    after_second_mark(stack.gc, commit_now)
    report = await stack.gc.run()
    may_claim.set()
    outcome = await commit
    assert (await repo.manifest(outcome.record)) == manifest
    head = await repo.head(NS, "big.bin")
    assert head is not None and head.manifest_digest == manifest.digest()
    return report


async def test_a_claim_after_the_commit_saves_the_manifest_from_the_drop(stack):
    report = await race(stack, claim_after_drop=False)
    assert report.manifests_removed == 0


async def test_a_manifest_dropped_before_the_claim_is_stored_again(stack):
    report = await race(stack, claim_after_drop=True)
    assert report.manifests_removed == 1  # dropped, then written again before the commit answered
    assert (await GarbageCollector(stack.repo, GcSettings(grace_s=0), lambda _: None).run()).manifests_removed == 0
