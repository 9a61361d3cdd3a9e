"""PutChunks streams much longer than ``flush_bytes``: the publishes made mid-stream run while
the next batches arrive, yet when the call succeeds every chunk is durable and indexed, and a
batch that fails verification after some publishes fails the call and indexes nothing of itself.
GetChunks over many read-ahead windows answers every digest in order.

Real server processes (plaintext), both chunk layouts, Redis and Valkey, real disk.
"""

from __future__ import annotations

import os

import grpc
import pytest
from server_fixtures import RunningServer, drop_prefix, new_prefix
from stored_chunks import staged_leftovers

from cas import codec
from cas.digest import digest
from proto import stratus_pb2 as pb

FLUSH_BYTES = 256 * 1024
CHUNK = 60_000  # random, so a frame is about this size: a publish every 4-5 chunks


@pytest.fixture(params=["packs", "files"])
def server(request, redis_url, tmp_path):
    env = {"STRATUS_FLUSH_BYTES": str(FLUSH_BYTES), "STRATUS_STORE_FORMAT": request.param}
    running = RunningServer(tmp_path / "data", redis_url, new_prefix(), extra_env=env).start()
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, running.prefix)


def _batches(chunks: list[bytes], per: int, bad_at: int | None = None) -> list[pb.ChunkBatch]:
    """Batches of ``per`` chunks; the chunk at ``bad_at`` is sent under a wrong digest."""
    items = [pb.ChunkData(digest=digest(b"not %d" % i if i == bad_at else c), frame=codec.encode(c))
             for i, c in enumerate(chunks)]
    return [pb.ChunkBatch(chunks=items[i:i + per]) for i in range(0, len(items), per)]


def test_every_chunk_of_a_long_stream_is_indexed_and_readable_when_the_call_returns(server):
    chunks = [os.urandom(CHUNK) for _ in range(48)]  # 12 publishes or so, most in the background
    stub = server.stub()
    reply = stub.PutChunks(iter(_batches(chunks, 3)))
    assert (reply.received, reply.stored) == (48, 48)
    digests = [digest(c) for c in chunks]
    assert list(stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing) == []
    # Many read-ahead windows (of 32 chunks): every frame comes back, in request order.
    asked = digests * 5 + digests[::-1]
    got = [(c.digest, c.frame) for b in stub.GetChunks(pb.GetChunksRequest(digests=asked)) for c in b.chunks]
    assert [d for d, _ in got] == asked
    by_digest = dict(zip(digests, chunks, strict=True))
    assert all(codec.decode_verified(d, f, CHUNK) == by_digest[d] for d, f in got)
    assert staged_leftovers(server) == []


def test_a_bad_batch_after_background_publishes_fails_the_call_and_indexes_nothing_of_itself(server):
    chunks = [os.urandom(CHUNK) for _ in range(40)]
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as failed:
        stub.PutChunks(iter(_batches(chunks, 4, bad_at=37)))
    assert failed.value.code() == grpc.StatusCode.DATA_LOSS  # digest mismatch
    last = [digest(c) for c in chunks[36:]]
    missing = stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=last)).missing
    assert list(missing) == last  # the failing batch: verified as a whole, so nothing of it is kept
    again = stub.PutChunks(iter(_batches(chunks, 4)))  # the retry stores only what was not indexed
    assert again.received == 40 and 4 <= again.stored < 40
    everything = [digest(c) for c in chunks]
    assert list(stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=everything)).missing) == []
