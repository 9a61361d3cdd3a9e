"""Download streams per identity: the limit holds, and a client that stops reading gives its slot
back after stream_idle_timeout_s instead of pinning it for as long as it stays connected.

Real mTLS server processes (the share of a limit is the certificate's identity, whatever the
connection), raw gRPC clients that start a large download and never read, real disk.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from tls_fixtures import tls_server

from cas import codec
from cas.digest import digest
from cli.client import StratusClient, channel_options, tls_credentials
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc

LIVENESS_S = 60.0  # a generous bound: "it happens", not "it is fast"
IDLE_S = 1.0
# Far more than HTTP/2 flow control and the client's buffers take without the client reading.
HUGE = 5000


def _server(tmp_path_factory, redis_url, name: str, env: dict[str, str]):
    env = {"STRATUS_MAX_DOWNLOADS_PER_IDENTITY": "1", "STRATUS_ADMISSION_WAIT_S": "0.2", **env}
    return tls_server(tmp_path_factory.mktemp(name), redis_url, ["alice", "bob"], extra_env=env)


@pytest.fixture(scope="module")
def held(redis_url, tmp_path_factory):
    """One download stream per identity; streams never time out within a test."""
    with _server(tmp_path_factory, redis_url, "downloads-held", {}) as running:
        yield running


@pytest.fixture(scope="module")
def quick(redis_url, tmp_path_factory):
    """One download stream per identity; a message not taken within 1 s ends the stream."""
    env = {"STRATUS_STREAM_IDLE_TIMEOUT_S": str(IDLE_S)}
    with _server(tmp_path_factory, redis_url, "downloads-quick", env) as running:
        yield running


def _stub(server, name: str) -> pb_grpc.StratusStub:
    """A raw stub on a connection of its own."""
    channel = grpc.secure_channel(server.address, tls_credentials(server.pki, name), options=channel_options())
    return pb_grpc.StratusStub(channel)


def _stored_chunk(stub: pb_grpc.StratusStub) -> bytes:
    """Upload one incompressible ~200 KB chunk; returns its digest."""
    data = os.urandom(200_000)
    d = digest(data)
    stub.PutChunks(iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=codec.encode(data))])]))
    return d


def _stalled_get_chunks(stub: pb_grpc.StratusStub, d: bytes) -> grpc.Call:
    """A GetChunks of ~1 GB that is never read; returns once the server has admitted it."""
    call = stub.GetChunks(pb.GetChunksRequest(digests=[d] * HUGE))
    call.initial_metadata()  # sent with the first message: the call holds its slot
    return call


def _fetch(stub: pb_grpc.StratusStub, d: bytes) -> int:
    return sum(len(b.chunks) for b in stub.GetChunks(pb.GetChunksRequest(digests=[d, d]), timeout=LIVENESS_S))


def _refused_for_downloads(err: grpc.RpcError) -> bool:
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_downloads_per_identity" in err.details()


def _eventually_fetches(stub: pb_grpc.StratusStub, d: bytes) -> None:
    """Retry a small download until it goes through; every refusal must be the per-identity limit."""
    deadline = time.monotonic() + LIVENESS_S
    while True:
        try:
            assert _fetch(stub, d) == 2
            return
        except grpc.RpcError as err:
            assert _refused_for_downloads(err), err
            assert time.monotonic() < deadline, f"the download slot did not come back within {LIVENESS_S} s"
            time.sleep(0.1)


def _ended_for_stalling(call: grpc.Call) -> None:
    """Reading the stalled call now yields what was buffered, then RESOURCE_EXHAUSTED naming the setting."""
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "stream_idle_timeout_s" in info.value.details()
    assert error_detail(info.value).reason == pb.ErrorDetail.LIMIT_EXCEEDED


def test_download_streams_are_limited_per_identity(held):
    alice, alice2, bob = _stub(held, "alice"), _stub(held, "alice"), _stub(held, "bob")
    mine, his = _stored_chunk(alice), _stored_chunk(bob)
    with StratusClient.connect(held.address, tls_dir=held.pki, client_name="alice") as client:
        client.put_bytes(os.urandom(300_000), "small.bin")
    stalled = _stalled_get_chunks(alice, mine)
    try:
        # alice's one download slot is taken: GetChunks and Download from another connection are refused
        with pytest.raises(grpc.RpcError) as info:
            _fetch(alice2, mine)
        assert _refused_for_downloads(info.value)
        assert error_detail(info.value).retry_after_ms > 0
        with pytest.raises(grpc.RpcError) as info:
            list(alice2.Download(pb.DownloadRequest(path="small.bin"), timeout=LIVENESS_S))
        assert _refused_for_downloads(info.value)
        # bob's share is his own
        assert _fetch(bob, his) == 2
    finally:
        stalled.cancel()
    # cancelled, the stream gives its slot back
    _eventually_fetches(alice2, mine)


def test_a_get_chunks_client_that_stops_reading_gives_its_slot_back(quick):
    alice, alice2 = _stub(quick, "alice"), _stub(quick, "alice")
    d = _stored_chunk(alice)
    stalled = _stalled_get_chunks(alice, d)
    try:
        # the first client stays connected and never reads; its slot comes back all the same
        _eventually_fetches(alice2, d)
        _ended_for_stalling(stalled)
    finally:
        stalled.cancel()


def test_a_download_client_that_stops_reading_gives_its_slot_back(quick):
    alice, alice2 = _stub(quick, "alice"), _stub(quick, "alice")
    d = _stored_chunk(alice)
    block = os.urandom(1 << 20)
    with StratusClient.connect(quick.address, tls_dir=quick.pki, client_name="alice") as client:
        client.put_bytes(block * 64, "big.bin")  # 64 MiB, few distinct chunks
    stalled = alice.Download(pb.DownloadRequest(path="big.bin"))
    assert next(stalled).version.path == "big.bin"  # the data that follows holds the slot
    try:
        _eventually_fetches(alice2, d)
        _ended_for_stalling(stalled)
    finally:
        stalled.cancel()


def test_stalled_streams_hold_at_most_twice_the_download_share(quick):
    alice, alice2, alice3 = _stub(quick, "alice"), _stub(quick, "alice"), _stub(quick, "alice")
    d = _stored_chunk(alice)
    first = _stalled_get_chunks(alice, d)
    second = None
    try:
        _eventually_fetches(alice3, d)  # the first stalled stream moved aside
        second = _stalled_get_chunks(alice2, d)
        time.sleep(3 * IDLE_S)  # long past the second stream's send timeout
        # no place left for a second stalled stream of alice's: it keeps its download slot
        with pytest.raises(grpc.RpcError) as info:
            _fetch(alice3, d)
        assert _refused_for_downloads(info.value)
    finally:
        first.cancel()
        if second is not None:
            second.cancel()
    _eventually_fetches(alice3, d)
