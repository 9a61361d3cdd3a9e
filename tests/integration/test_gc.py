"""Garbage collection and repacking against real servers (Redis and Valkey): what no version
references goes, everything a version references stays readable, and writers are never refused
for more than a chunk they can upload again."""

from __future__ import annotations

import os
import time

import grpc
import pytest
import redis
from api_helpers import put_chunks
from gc_helpers import FAST_GC, assert_clean, chunks_of, forget_versions, history, missing, pack_bytes, wait_condemned
from server_fixtures import RunningServer, drop_prefix, new_prefix
from tls_fixtures import connect, tls_server

from cas import codec
from cas.digest import digest as blake3
from cas.errors import InvalidInputError
from cas.pack import list_packs
from cas.packstore import IndexEntry
from cas.repack import PACK_OVERHEAD
from cli.client import StratusClient
from proto import stratus_pb2 as pb
from service.gc import with_bases
from service.metadata.keys import manifest_index_prefix
from service.metadata.locations import RedisLocationIndex


@pytest.fixture
def gc_server(redis_url, tmp_path):
    prefix = new_prefix()
    running = RunningServer(tmp_path / "data", redis_url, prefix, extra_env=FAST_GC).start()
    try:
        yield running
    finally:
        running.kill()
        drop_prefix(redis_url, prefix)


def test_gc_reclaims_forgotten_versions_and_keeps_live_ones(gc_server):
    with StratusClient.connect(gc_server.address, insecure=True) as c:
        ns = c.info().namespace
        versions = history(1)
        for data in versions:
            c.put_bytes(data, "db.bin")
        c.put_bytes(b"small and kept", "keep.txt")
        old = set().union(*(chunks_of(c, "db.bin", v) for v in (1, 2, 3)))
        live = chunks_of(c, "db.bin", 4)
        before = pack_bytes(gc_server.data_dir)
        dry = c.collect_garbage(dry_run=True)
        assert dry.chunks_condemned == 0 and pack_bytes(gc_server.data_dir) == before

        forget_versions(gc_server.redis_url, gc_server.prefix, ns, "db.bin", keep={4})
        dry = c.collect_garbage(dry_run=True)
        # every unreferenced chunk is condemned, bases of kept delta records too
        assert dry.chunks_condemned == len(old - live) and pack_bytes(gc_server.data_dir) == before
        r = c.collect_garbage()
        assert 0 < r.chunks_dropped <= dry.chunks_condemned and r.chunks_swept == len(old - live)
        assert r.chunks_rebased > 0  # uploads send delta hints: v4's changed chunks were deltas
        assert r.manifests_removed == 0  # small manifests are inline: they went with their records
        after = pack_bytes(gc_server.data_dir)
        assert before - after == r.freed_bytes
        assert missing(c, old - live) == old - live  # the namespace no longer claims them
        assert not missing(c, live)
        assert c.get_bytes("db.bin") == versions[3] and c.get_bytes("keep.txt") == b"small and kept"
        assert_clean(c)
        stats = c.info().stats
        assert stats.reclaimed_bytes == max(0, r.freed_bytes)  # re-encoded records can outweigh a small gain
        # a forgotten content comes back by uploading it again
        c.put_bytes(versions[0], "db.bin")
        assert c.get_bytes("db.bin") == versions[0]
        assert_clean(c)


def location_entries(server: RunningServer) -> dict[bytes, IndexEntry]:
    """The chunk location index of a server's store."""
    client = redis.Redis.from_url(server.redis_url)
    try:
        return dict(RedisLocationIndex(client, server.prefix).iterate())
    finally:
        client.close()


def test_gc_of_a_delta_coded_history_frees_what_forgotten_versions_alone_used(gc_server):
    with StratusClient.connect(gc_server.address, insecure=True) as c:
        ns = c.info().namespace
        versions = history(11, size=2 << 20, versions=8, change=0.2)
        for data in versions:
            c.put_bytes(data, "db.bin")
        kept = chunks_of(c, "db.bin", 7) | chunks_of(c, "db.bin", 8)
        forget_versions(gc_server.redis_url, gc_server.prefix, ns, "db.bin", keep={7, 8})
        entries = location_entries(gc_server)
        assert any(entries[d].base is not None and entries[d].base not in kept for d in kept)
        dry = c.collect_garbage(dry_run=True)
        assert dry.chunks_condemned == len(set(entries) - kept)
        r = c.collect_garbage()
        after = location_entries(gc_server)
        assert r.chunks_rebased > 0 and r.chunks_dropped == len(set(entries) - set(after))
        # what stays besides the kept chunks is a base of them that costs less than re-encoding
        assert set(after) == with_bases(kept, after) and len(set(after) - kept) < len(set(entries) - kept) / 2
        # what is left on disk is the kept records and the packs' headers and seals
        packs = len(list_packs(gc_server.data_dir))
        live_bytes = sum(e.length for e in after.values()) + PACK_OVERHEAD * packs
        assert abs(pack_bytes(gc_server.data_dir) - live_bytes) <= 4096  # the open pack is not repacked
        assert r.freed_bytes > 0.5 * dry.dropped_bytes
        for v in (7, 8):
            assert c.get_bytes("db.bin", version=v) == versions[v - 1]
        assert_clean(c)


def manifest_records(server: RunningServer) -> set[bytes]:
    """Digests of the manifests stored as pack records (their location index)."""
    client = redis.Redis.from_url(server.redis_url)
    try:
        index = RedisLocationIndex(client, manifest_index_prefix(server.prefix))
        return {d for d, _ in index.iterate()}
    finally:
        client.close()


def test_gc_drops_manifest_records_no_version_names_and_keeps_the_rest_readable(gc_server):
    with StratusClient.connect(gc_server.address, insecure=True) as c:
        ns = c.info().namespace
        big = [os.urandom(12 << 20) for _ in range(3)]  # ~190 chunks each: stored manifests
        for data in big:
            c.put_bytes(data, "big.bin")
        assert len(manifest_records(gc_server)) == 3
        forget_versions(gc_server.redis_url, gc_server.prefix, ns, "big.bin", keep={3})
        assert c.collect_garbage(dry_run=True).manifests_removed == 2
        r = c.collect_garbage()
        assert r.manifests_removed == 2 and r.freed_bytes > 20 << 20
        assert len(manifest_records(gc_server)) == 1
        assert c.get_bytes("big.bin") == big[2]
        c.put_bytes(big[0], "big.bin")  # a forgotten manifest is stored again by its next upload
        assert c.get_bytes("big.bin", version=4) == big[0] and len(manifest_records(gc_server)) == 2
        assert_clean(c)


def test_uncommitted_upload_is_collected_unless_a_writer_touches_it(gc_server):
    with StratusClient.connect(gc_server.address, insecure=True) as c:
        c.put_bytes(os.urandom(300_000), "anchor")  # something live, so the store is not empty
        idle, touched = os.urandom(40_000), os.urandom(40_000)
        frames = [(blake3(b), codec.encode(b, 3)) for b in (idle, touched)]
        put_chunks(c.stub, frames)
        collection = c.remote.stub.CollectGarbage.future(pb.CollectGarbageRequest())
        wait_condemned(gc_server, c.info().namespace)
        # inside the grace period, a FindMissingChunks about one of them resurrects it
        assert not missing(c, [frames[1][0]])
        collection.result(timeout=60)
        assert missing(c, [frames[0][0], frames[1][0]]) == {frames[0][0]}
        commit = pb.CommitFileRequest(path="late", manifest=pb.Manifest(
            chunks=[pb.ChunkRef(digest=frames[1][0], length=len(touched))], size=len(touched),
            file_digest=blake3(touched)))
        c.stub.CommitFile(commit)
        assert c.get_bytes("late") == touched
        # the idle one was dropped: a commit naming it is refused with the missing chunk, never accepted
        commit.path, commit.manifest.chunks[0].digest = "lost", frames[0][0]
        commit.manifest.chunks[0].length, commit.manifest.file_digest = len(idle), blake3(idle)
        commit.manifest.size = len(idle)
        with pytest.raises(grpc.RpcError) as err:
            c.stub.CommitFile(commit)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        c.put_bytes(idle, "lost")  # the client library uploads it again
        assert c.get_bytes("lost") == idle
        assert_clean(c)


def test_chunks_shared_across_namespaces_stay_for_the_namespace_that_uses_them(redis_url, tmp_path):
    access = '[identities.alice]\nnamespace = "a"\n[identities.bob]\nnamespace = "b"\n' \
             '[identities.ops]\nnamespace = "ops"\nadmin = true\n'
    with tls_server(tmp_path, redis_url, ["alice", "bob", "ops"], access=access, extra_env=FAST_GC) as server:
        data = os.urandom(2 << 20)
        with connect(server, "alice") as alice, connect(server, "bob") as bob, connect(server, "ops") as ops:
            alice.put_bytes(data, "f")
            alice.put_bytes(os.urandom(100_000), "f")
            bob.put_bytes(data, "g")
            shared = chunks_of(bob, "g")
            forget_versions(server.redis_url, server.prefix, "a", "f", keep={2})
            r = ops.collect_garbage()
            assert r.chunks_swept == len(shared) and r.chunks_dropped == 0  # bob still needs them
            assert missing(alice, shared) == shared and not missing(bob, shared)
            assert bob.get_bytes("g") == data
            forget_versions(server.redis_url, server.prefix, "b", "g", keep=set())
            r = ops.collect_garbage()
            assert r.chunks_dropped == len(shared)
            assert missing(bob, shared) == shared
            assert_clean(ops)


def test_files_layout_is_refused_clearly(redis_url, tmp_path):
    prefix = new_prefix()
    env = {**FAST_GC, "STRATUS_STORE_FORMAT": "files"}
    with RunningServer(tmp_path / "data", redis_url, prefix, extra_env=env).start() as server:
        try:
            with StratusClient.connect(server.address, insecure=True) as c:
                c.put_bytes(b"x" * 1000, "f")
                with pytest.raises(InvalidInputError, match="packs layout"):
                    c.collect_garbage()
                assert c.get_bytes("f") == b"x" * 1000
        finally:
            drop_prefix(redis_url, prefix)


def test_background_collection_runs_by_itself(redis_url, tmp_path):
    prefix = new_prefix()
    env = {**FAST_GC, "STRATUS_GC_INTERVAL_S": "1"}
    with RunningServer(tmp_path / "data", redis_url, prefix, extra_env=env).start() as server:
        try:
            with StratusClient.connect(server.address, insecure=True) as c:
                ns = c.info().namespace
                versions = history(3, size=1 << 20, versions=2, change=0.5)
                for data in versions:
                    c.put_bytes(data, "f")
                forget_versions(server.redis_url, prefix, ns, "f", keep={2})
                deadline = time.monotonic() + 60
                while not c.info().stats.reclaimed_bytes:
                    assert time.monotonic() < deadline, "no background collection reclaimed anything"
                    time.sleep(0.5)
                assert c.get_bytes("f") == versions[1]
                assert_clean(c)
        finally:
            drop_prefix(redis_url, prefix)
