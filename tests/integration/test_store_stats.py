"""Store-wide disk statistics: counted exactly while writers go on, and never on the server's event loop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cas.packstore import PackChunkStore
from cas.store import LocalChunkStore, StoreStats
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc
from service.metadata.locations import RedisLocationIndex

BIG_STORE_CHUNKS = 20_000


def tiny_chunks(n: int) -> list[tuple[bytes, bytes]]:
    blobs = [os.urandom(16 + i % 7) for i in range(n)]
    return [(digest(b), codec.encode(b)) for b in blobs]


def test_first_count_is_exact_while_puts_and_deletes_go_on(tmp_path):
    root = tmp_path / "s"
    existing = tiny_chunks(3000)
    LocalChunkStore(root, fsync=False).put_many(existing)
    store = LocalChunkStore(root, fsync=False)
    assert store.known_stats() is None
    counting = threading.Thread(target=store.stats)
    counting.start()

    def write() -> None:  # new chunks land in folders before, at and after the walk's position
        while counting.is_alive():
            store.put_many(tiny_chunks(50))

    def delete() -> None:
        for d, _ in existing[::3]:
            store.delete(d)

    writers = [threading.Thread(target=write), threading.Thread(target=delete)]
    for t in writers:
        t.start()
    for t in [counting, *writers]:
        t.join()
    store.put_many(tiny_chunks(10))  # after the count: straight to the counters
    on_disk = LocalChunkStore(root, fsync=False).stats()
    assert store.stats() == store.known_stats() == on_disk
    assert on_disk.chunk_count > len(existing) - len(existing[::3])


def test_known_stats_never_waits_for_a_count(tmp_path):
    store = LocalChunkStore(tmp_path / "s", fsync=False)
    store.put_many(tiny_chunks(5))
    assert store.known_stats() is None  # nothing counted yet: no answer, and no walk either
    counted = store.stats()
    assert counted.chunk_count == 5 and store.known_stats() == counted


def _fill_store(data: Path, layout: str, redis_url: str, prefix: str) -> StoreStats:
    """Write the chunks through the store API of ``layout``; returns what the store then holds."""
    if layout == "files":
        LocalChunkStore(data / "chunks", fsync=False).put_many(tiny_chunks(BIG_STORE_CHUNKS))
        return LocalChunkStore(data / "chunks", fsync=False).stats()
    client = redis.Redis.from_url(redis_url)
    try:
        store = PackChunkStore(data, RedisLocationIndex(client, prefix), fsync=False)
        store.put_many(tiny_chunks(BIG_STORE_CHUNKS))
        store.close()
        return PackChunkStore(data, RedisLocationIndex(client, prefix), fsync=False).stats()
    finally:
        client.close()


@pytest.fixture(params=["files", "packs"])
def big_store_server(request: pytest.FixtureRequest, tmp_path: Path):
    """A server over a chunk store of many tiny chunks written through the store API: the files
    layout with the embedded Valkey, packs with their location index in the system Redis."""
    data = tmp_path / "data"
    redis_url, prefix = ("", "sv") if request.param == "files" else (request.getfixturevalue("system_redis_url"),
                                                                      new_prefix())
    env = {"STRATUS_STORE_FORMAT": request.param}
    RunningServer(data, redis_url, prefix, extra_env=env).start().stop()  # the first start binds the data dir
    expected = _fill_store(data, request.param, redis_url, prefix)
    running = RunningServer(data, redis_url, prefix, extra_env=env).start()
    running.expected = expected  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.kill()
        if redis_url:
            drop_prefix(redis_url, prefix)


def test_calls_go_on_while_server_info_counts_a_large_store(big_store_server):
    """The first admin ServerInfo starts the count of the whole store; Stat calls sent after it
    complete while it is still in progress, and the figures it reports are exact or absent."""
    channel = big_store_server.channel()
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.StratusStub(channel)
    first = stub.ServerInfo.future(pb.ServerInfoRequest(), timeout=60)
    stats_during = 0
    while not first.done():
        with pytest.raises(grpc.RpcError) as missing:
            stub.Stat(pb.StatRequest(path="no/such/file"), timeout=60)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        stats_during += 1
    # Many calls in turn, each sent after the previous one was answered: the loop stayed free.
    # (Counting on the loop lets through only the few that slip in before the count starts.)
    assert stats_during >= 20
    expected = big_store_server.expected
    assert expected.chunk_count == BIG_STORE_CHUNKS
    answers = [first.result().stats]
    while answers[-1].store_chunk_count == 0 and len(answers) < 600:
        time.sleep(0.1)
        answers.append(stub.ServerInfo(pb.ServerInfoRequest(), timeout=60).stats)
    assert all(a.store_chunk_count in (0, expected.chunk_count) for a in answers)  # exact or not yet known
    assert StoreStats(answers[-1].store_chunk_count, answers[-1].stored_bytes) == expected
