"""Clients wait out rate limits and only rate limits: a real server with tiny limits, its audit
log counting every attempt that reached it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import grpc
import pytest
from cli_helpers import write_random
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cas.errors import LimitExceededError, RateLimitedError
from cli.client import StratusClient
from cli.smallfiles import upload_group
from proto import stratus_pb2 as pb

EXHAUSTED = "RESOURCE_EXHAUSTED"


def _server(redis_url: str, tmp_path: Path, env: dict[str, str]) -> RunningServer:
    audit = tmp_path / "audit.log"
    running = RunningServer(tmp_path / "server", redis_url, new_prefix(), extra_env=env,
                            extra_args=["--audit-log", str(audit)]).start()
    running.audit = audit
    return running


def _attempts(running: RunningServer, method: str) -> list[str]:
    """The status of every ``method`` call the server saw, in order."""
    lines = [json.loads(line) for line in running.audit.read_text().splitlines()]
    return [entry["status"] for entry in lines if entry["method"] == method]


@pytest.fixture
def limited(redis_url, tmp_path):
    """Two calls per second, a burst of one: every call right after another is refused once."""
    running = _server(redis_url, tmp_path, {"STRATUS_RATE_LIMIT_PER_SECOND": "2", "STRATUS_RATE_LIMIT_BURST": "1"})
    yield running
    running.stop()
    drop_prefix(redis_url, running.prefix)


def test_a_burst_of_reads_waits_out_the_rate_limit(limited):
    with StratusClient.connect(limited.address, insecure=True) as client:
        client.server_info()
        answers = [client.list_files("") for _ in range(6)]
    assert all(list(a[0]) == [] for a in answers)
    statuses = _attempts(limited, "ListFiles")
    assert statuses.count("OK") == 6 and EXHAUSTED in statuses, statuses


def test_uploads_and_commits_wait_out_the_rate_limit(limited):
    blobs = [os.urandom(300_000) for _ in range(3)]
    with StratusClient.connect(limited.address, insecure=True) as client:
        for n, blob in enumerate(blobs):
            client.put_bytes(blob, f"burst/{n}")
        assert [client.get_bytes(f"burst/{n}") for n in range(3)] == blobs
    for method in ("PutChunks", "CommitFile"):
        statuses = _attempts(limited, method)
        assert EXHAUSTED in statuses and statuses[-1] == "OK", (method, statuses)
    assert _attempts(limited, "CommitFile").count("OK") == 3


def test_a_group_of_small_files_waits_out_the_rate_limit(limited, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for n in range(5):
        (folder / f"f{n}.txt").write_bytes(os.urandom(1000))
    items = [(str(folder / f"f{n}.txt"), f"tree/f{n}.txt") for n in range(5)]
    with StratusClient.connect(limited.address, insecure=True) as client:
        outcomes = upload_group(client.remote, items)
        assert [o.status for o in outcomes] == ["uploaded"] * 5, [o.error for o in outcomes]
        assert client.get_bytes("tree/f3.txt") == (folder / "f3.txt").read_bytes()
    assert _attempts(limited, "CommitFiles")[-1] == "OK"
    assert EXHAUSTED in _attempts(limited, "PutChunks") + _attempts(limited, "CommitFiles")


@pytest.fixture
def paced(redis_url, tmp_path):
    """20 uploaded chunks per second, a 64-chunk burst, streams refused when pacing would keep a
    message waiting over 1 s: the fourth ~32-chunk message of a stream is refused mid-way. Each
    message is made durable on its own, so what came before the refusal stays."""
    running = _server(redis_url, tmp_path, {
        "STRATUS_UPLOAD_CHUNKS_PER_SECOND": "20", "STRATUS_UPLOAD_CHUNKS_BURST": "64",
        "STRATUS_MAX_CHUNKS_PER_MESSAGE": "64", "STRATUS_STREAM_IDLE_TIMEOUT_S": "1",
        "STRATUS_FLUSH_BYTES": str(1 << 20)})
    yield running
    running.stop()
    drop_prefix(redis_url, running.prefix)


def test_a_stream_refused_mid_way_sends_the_rest_after_the_delay(paced, tmp_path):
    source = write_random(tmp_path / "big.bin", 8 << 20)
    with StratusClient.connect(paced.address, insecure=True) as client:
        outcome = client.put_file(source, "big.bin")
        assert outcome.status == "uploaded"
        assert client.get_bytes("big.bin") == source.read_bytes()
    statuses = _attempts(paced, "PutChunks")
    # The first call starts with a full budget: its refusal came mid-way, after messages were taken.
    assert statuses[0] == EXHAUSTED and statuses[-1] == "OK", statuses


def test_a_pipe_refused_mid_way_fails_with_the_refusal(paced):
    read, write = os.pipe()
    data = os.urandom(8 << 20)
    writer = threading.Thread(target=lambda: (os.write(write, data), os.close(write)))
    writer.start()
    with StratusClient.connect(paced.address, insecure=True) as client, os.fdopen(read, "rb") as pipe:
        with pytest.raises(RateLimitedError):  # what was sent cannot be read again
            client.put_stream(pipe, "piped.bin")
    writer.join()
    assert _attempts(paced, "CommitFile") == []


def test_a_limit_that_waiting_cannot_lift_fails_at_once(redis_url, tmp_path):
    running = _server(redis_url, tmp_path, {"STRATUS_MAX_FIND_DIGESTS": "10"})
    try:
        with StratusClient.connect(running.address, insecure=True) as client:
            digests = [os.urandom(32) for _ in range(11)]
            with pytest.raises(LimitExceededError):
                client.remote.call(client.remote.stub.FindMissingChunks, pb.FindMissingChunksRequest(digests=digests))
        assert _attempts(running, "FindMissingChunks") == [EXHAUSTED]  # no retry reached the server
    finally:
        running.stop()
        drop_prefix(redis_url, running.prefix)


def test_the_server_allows_retries_of_rate_limits_only(limited):
    stub = limited.stub()
    seen = {}
    for _ in range(3):
        try:
            stub.Stat(pb.StatRequest(path="nothing/here"))
        except grpc.RpcError as err:
            seen[err.code()] = dict(err.trailing_metadata() or ())
    assert int(seen[grpc.StatusCode.RESOURCE_EXHAUSTED]["grpc-retry-pushback-ms"]) > 0
