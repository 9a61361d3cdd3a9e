"""One identity cannot stall the others: per-identity stream limits, bounded work per message,
idle-stream timeouts, and staging temp files that never outlive their stream.

Real server processes (mTLS with two identities, or plaintext with short timeouts), real gRPC
clients, a real client process SIGKILLed mid-upload, real disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_fixtures import ROOT, RunningServer, drop_prefix
from stored_chunks import staged_leftovers, store_format

from cas import codec
from cas.digest import digest
from cli.client import StratusClient, channel_options, tls_credentials
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc
from service.certs import create_dev_pki
from service.config import ConfigError, load_config

PER_IDENTITY = 32
LIVENESS_S = 60.0  # a generous bound: "it happens", not "it is fast"


def _server(root: Path, redis_url: str, env: dict[str, str], *, tls: bool) -> RunningServer:
    args: list[str] = []
    if tls:
        create_dev_pki(root / "pki", clients=["alice", "bob", "carol"])
        args = ["--tls-dir", str(root / "pki")]
    running = RunningServer(root / "data", redis_url, f"svtest-{uuid.uuid4().hex[:12]}", extra_args=args,
                            extra_env=env).start()
    running.pki = root / "pki"
    return running


@pytest.fixture(scope="module")
def tls_server(redis_url, tmp_path_factory):
    """mTLS, identities alice, bob and carol; 32 upload streams per identity, 64 in all."""
    env = {"STRATUS_MAX_UPLOADS_PER_IDENTITY": str(PER_IDENTITY), "STRATUS_MAX_CONCURRENT_UPLOADS": "64",
           "STRATUS_ADMISSION_WAIT_S": "0.2", "STRATUS_MAX_MESSAGE_RAW_BYTES": str(4 << 20)}
    running = _server(tmp_path_factory.mktemp("limits-tls"), redis_url, env, tls=True)
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, running.prefix)


@pytest.fixture(scope="module")
def quick_server(redis_url, tmp_path_factory):
    """Plaintext, one upload stream per identity, streams idle for 1 s end, 1 s keepalive."""
    env = {"STRATUS_STREAM_IDLE_TIMEOUT_S": "1", "STRATUS_KEEPALIVE_TIME_S": "1", "STRATUS_KEEPALIVE_TIMEOUT_S": "1",
           "STRATUS_MAX_UPLOADS_PER_IDENTITY": "1", "STRATUS_ADMISSION_WAIT_S": "5",
           "STRATUS_FLUSH_BYTES": str(1 << 30)}  # nothing is published mid-stream: staged files stay staged
    running = _server(tmp_path_factory.mktemp("limits-quick"), redis_url, env, tls=False)
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, running.prefix)


def _stub(server: RunningServer, name: str) -> pb_grpc.StratusStub:
    creds = tls_credentials(server.pki, name)
    return pb_grpc.StratusStub(grpc.secure_channel(server.address, creds, options=channel_options()))


def _staging(server: RunningServer) -> list[object]:
    return staged_leftovers(server)


def _released(server: RunningServer) -> bool:
    """Whether what a dead stream staged is released. Files layout: its temp files are removed.
    Packs hold no temp files: the stream's records stay in their pack, unindexed (or indexed when
    the server saw the stream end and published it), and the pack is in use by the next put."""
    return store_format(server.data_dir) == "packs" or _staging(server) == []


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + LIVENESS_S
    while not predicate():
        assert time.monotonic() < deadline, f"not within {LIVENESS_S} s: {what}"
        time.sleep(0.05)


def _batch(chunks: list[bytes]) -> pb.ChunkBatch:
    return pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(c), frame=codec.encode(c)) for c in chunks])


def _stalled(release: threading.Event, first: list[pb.ChunkBatch] = ()) -> Iterator[pb.ChunkBatch]:
    """A PutChunks request stream that sends ``first`` and then says nothing until released."""
    yield from first
    release.wait()


def _round_trip(server: RunningServer, name: str | None) -> None:
    data = os.urandom(600_000)
    path = f"limits/{uuid.uuid4().hex}.bin"
    if name is None:
        client = StratusClient.connect(server.address, insecure=True)
    else:
        client = StratusClient.connect(server.address, tls_dir=server.pki, client_name=name)
    with client:
        client.put_bytes(data, path)
        assert client.get_bytes(path) == data
        assert client.stat(path).size == len(data)


def _within(fn, what: str) -> None:
    """Run ``fn`` on a thread; fail if it has not finished within the liveness bound."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below on the test thread
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(LIVENESS_S)
    assert not worker.is_alive(), f"{what} did not finish within {LIVENESS_S} s"
    if errors:
        raise errors[0]


def test_idle_streams_of_one_identity_do_not_stop_another(tls_server):
    alice = _stub(tls_server, "alice")
    release = threading.Event()
    calls = [alice.PutChunks.future(_stalled(release)) for _ in range(PER_IDENTITY + 8)]
    try:
        # The streams over alice's limit are refused promptly (bounded wait), not queued forever.
        _wait(lambda: sum(c.done() for c in calls) >= 8, "alice's streams over her limit are refused")
        refused = [c for c in calls if c.done()]
        assert len(refused) == 8
        for call in refused:
            assert call.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_uploads_per_identity" in call.exception().details()
            assert error_detail(call.exception()).retry_after_ms > 0
        # Her 32 admitted streams sit idle; bob's uploads, reads and stats still go through.
        _within(lambda: _round_trip(tls_server, "bob"), "bob's put and get")
        assert sum(c.done() for c in calls) == 8
        # Alice's own limit is hers alone: one more stream from her is still refused.
        with pytest.raises(grpc.RpcError) as info:
            alice.PutChunks(iter([]), timeout=LIVENESS_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    # Released, the idle streams end normally and give their slots back.
    for call in calls:
        if call not in refused:
            assert call.result(timeout=LIVENESS_S).received == 0
    _within(lambda: _round_trip(tls_server, "alice"), "alice's put after her streams ended")


def _tiny_flood() -> pb.ChunkBatch:
    """One message of 100,000 one-byte chunks."""
    return pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(bytes([i % 256])), frame=codec.encode(bytes([i % 256])))
                                 for i in range(100_000)])


def test_tiny_chunk_flood_is_refused_without_temp_files_or_memory(tls_server):
    alice = _stub(tls_server, "alice")
    flood = _tiny_flood()
    rss_before = _rss_mib(tls_server.proc.pid)
    seen = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen[0] = max(seen[0], len(_staging(tls_server)))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for n in range(5):
            with pytest.raises(grpc.RpcError) as info:
                alice.PutChunks(iter([flood]), timeout=LIVENESS_S)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Each refused message still counts against alice's upload rate; later ones may meet that.
            assert "max_chunks_per_message" in info.value.details() or (
                n and "upload_chunks_per_second" in info.value.details())
    finally:
        stop.set()
        watcher.join()
    assert seen[0] == 0 and _staging(tls_server) == []  # refused before anything was written
    # Five 100,000-chunk messages used to add ~775 MiB; refusing them costs about one message.
    assert _rss_mib(tls_server.proc.pid) - rss_before < 100
    _within(lambda: _round_trip(tls_server, "bob"), "bob's put after the flood")


def test_upload_rate_per_identity_refuses_promptly_and_recovers(tls_server):
    carol = _stub(tls_server, "carol")
    flood = _tiny_flood()
    # Every refused message costs carol 4,097 chunks of her 20,000-chunk burst (5,000/s).
    details = []
    for _ in range(8):
        with pytest.raises(grpc.RpcError) as info:
            carol.PutChunks(iter([flood]), timeout=LIVENESS_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details.append(info.value.details())
        if "upload_chunks_per_second" in details[-1]:
            break
    assert "upload_chunks_per_second" in details[-1], details
    retry = error_detail(info.value).retry_after_ms / 1000
    assert retry > 0
    _within(lambda: _round_trip(tls_server, "bob"), "bob's put while carol is over her rate")
    time.sleep(retry)
    ok = carol.PutChunks(iter([_batch([os.urandom(50_000)])]), timeout=LIVENESS_S)
    assert ok.received == 1


def test_small_chunks_and_declared_bytes_per_message_are_bounded(tls_server):
    alice = _stub(tls_server, "alice")
    # 2,000 distinct chunks below chunk_min_size: under the count limit, over the small-chunk limit.
    small = [os.urandom(100) for _ in range(2000)]
    with pytest.raises(grpc.RpcError) as info:
        alice.PutChunks(iter([_batch(small)]), timeout=LIVENESS_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_small_chunks_per_message" in info.value.details()
    # Zeros compress to almost nothing, but verifying them costs their full size: 32 x 256 KiB
    # declares 8 MiB, over this server's 4 MiB per message.
    zeros = [bytes(256 * 1024 - n) for n in range(32)]
    with pytest.raises(grpc.RpcError) as info:
        alice.PutChunks(iter([_batch(zeros)]), timeout=LIVENESS_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_message_raw_bytes" in info.value.details()
    assert _staging(tls_server) == []
    # A small-file group as the CLI sends it (128 files) is well within the limits.
    ok = alice.PutChunks(iter([_batch(small[:128]), _batch(zeros[:8])]), timeout=LIVENESS_S)
    assert ok.received == 136


def test_idle_stream_is_closed_and_its_slot_and_temp_files_released(quick_server):
    stub = quick_server.stub()
    release = threading.Event()
    first = [_batch([os.urandom(20_000) for _ in range(20)])]
    try:
        call = stub.PutChunks.future(_stalled(release, first))
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=LIVENESS_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream_idle_timeout_s" in info.value.details()
    finally:
        release.set()
    _wait(lambda: _released(quick_server), "the idle stream's temp files are removed")
    # The only upload slot of this identity is free again.
    _within(lambda: _round_trip(quick_server, None), "a put after the idle stream ended")


CHILD = """
import os, sys, time, grpc
from cas import codec
from cas.digest import digest
from proto import stratus_pb2 as pb, stratus_pb2_grpc as pb_grpc

def batches():
    n = 0
    while True:
        chunks = [os.urandom(40_000) for _ in range(25)]
        yield pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(c), frame=codec.encode(c)) for c in chunks])
        n += 1
        if n == 4:
            print("sending", flush=True)
            if sys.argv[2] == "idle":  # hold the stream open without a word
                time.sleep(3600)

stub = pb_grpc.StratusStub(grpc.insecure_channel(sys.argv[1]))
stub.PutChunks(batches())
"""


@pytest.mark.parametrize("when", ["busy", "idle"])
def test_sigkilled_client_leaves_no_temp_files(quick_server, when):
    child = subprocess.Popen([sys.executable, "-c", CHILD, quick_server.address, when], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    before = set(_staging(quick_server))
    try:
        assert child.stdout.readline().strip() == "sending"
        _wait(lambda: set(_staging(quick_server)) - before, "the upload stages temp files")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    _wait(lambda: _released(quick_server), "the killed stream's temp files are removed")
    _within(lambda: _round_trip(quick_server, None), "a put after the client was killed")
    assert _released(quick_server)


@pytest.mark.parametrize(("setting", "value", "words"), [
    ("max_uploads_per_identity", "0", "max_uploads_per_identity must be at least 1"),
    ("stream_idle_timeout_s", "0", "stream_idle_timeout_s must be a positive number"),
    ("max_inflight_bytes_per_identity", "1024", "max_inflight_bytes_per_identity must be at least"),
    ("upload_chunks_burst", "100", "upload_chunks_burst must be at least max_chunks_per_message"),
])
def test_limit_settings_are_checked_at_start(setting, value, words):
    with pytest.raises(ConfigError, match=words):
        load_config(environ={f"STRATUS_{setting.upper()}": value})
