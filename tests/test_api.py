"""The API over real gRPC against a real server process: versions, history, feed, concurrency, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import ROOT, RunningServer

from cas.errors import NotFoundError, VersionConflictError
from cli.client import StratusClient
from proto import stratus_pb2 as pb

MIB = 1 << 20


@pytest.fixture
def client(server):
    with StratusClient(server.channel()) as c:
        yield c


def _base() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_health_and_reflection_are_served(server):
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="stratus.v1.Stratus")).status == 1
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"stratus.v1.Stratus", "grpc.health.v1.Health"} <= names


def test_server_info_announces_chunking_and_counts(server, client):
    info = client.info()
    assert (info.chunking.min_size, info.chunking.avg_size, info.chunking.max_size) == (16384, 65536, 262144)
    assert info.compression == "zstd" and info.namespace == "default" and info.identity == "anonymous"
    before = info.stats.version_count
    client.put_bytes(os.urandom(100_000), f"{_base()}/f")
    after = client.info().stats
    assert after.version_count == before + 1
    assert after.stored_bytes > 0 and after.unique_bytes >= 100_000


def test_versions_tombstones_and_history(client):
    path = f"{_base()}/doc.txt"
    v1 = client.put_bytes(b"one" * 1000, path).version
    v2 = client.put_bytes(b"two" * 1000, path).version
    assert (v1.version, v2.version) == (1, 2)
    same = client.put_bytes(b"two" * 1000, path)
    assert same.unchanged and same.version.version == 2
    gone = client.delete(path)
    assert gone.deleted and gone.version == 3
    with pytest.raises(NotFoundError, match="deleted"):
        client.stat(path)
    assert client.get_bytes(path, version=1) == b"one" * 1000
    assert client.get_bytes(path, as_of_ms=v2.created_ms) == b"two" * 1000
    history = client.list_versions(path)
    assert [(v.version, v.deleted) for v in history] == [(3, True), (2, False), (1, False)]
    with pytest.raises(NotFoundError):
        client.delete(path)
    again = client.put_bytes(b"three", path)
    assert again.version.version == 4 and client.get_bytes(path) == b"three"


def test_diff_reports_changed_ranges(client):
    path = f"{_base()}/big.bin"
    data = bytearray(os.urandom(8 * MIB))
    client.put_bytes(bytes(data), path)
    data[4 * MIB:4 * MIB + 4096] = os.urandom(4096)
    client.put_bytes(bytes(data), path)
    d = client.diff(path)
    assert getattr(d, "from").version == 1 and d.to.version == 2
    assert 1 <= d.new_chunks <= 3 and d.shared_chunks >= 8 * MIB // (1 << 18)
    assert d.new_bytes + d.shared_bytes == 8 * MIB
    assert len(d.changed) == 1
    changed = d.changed[0]
    assert changed.offset <= 4 * MIB and changed.offset + changed.length >= 4 * MIB + 4096
    first = client.diff(path, 0, 1)
    assert first.new_bytes == 8 * MIB and first.shared_chunks == 0


def test_two_writers_with_the_same_if_version_one_wins(server):
    path = f"{_base()}/race"
    with StratusClient(server.channel()) as c:
        c.put_bytes(b"base", path)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        with StratusClient(server.channel()) as c:
            c.server_info()
            barrier.wait()
            try:
                c.put_bytes(f"writer {n}".encode(), path, if_version=1)
                outcomes.append("won")
            except VersionConflictError:
                outcomes.append("aborted")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["aborted"] * 7 + ["won"]
    with StratusClient(server.channel()) as c:
        assert c.stat(path).version == 2
        with pytest.raises(grpc.RpcError) as info:
            c.stub.CommitFile(pb.CommitFileRequest(
                path=path, if_version=1, manifest=c.stub.GetManifest(pb.GetManifestRequest(path=path)).manifest,
            ))
        assert info.value.code() == grpc.StatusCode.ABORTED


def test_listing_pages_every_file_once_while_others_are_added(server, client):
    base = _base()
    paths = [f"{base}/f{n:05d}" for n in range(2500)]
    empty = client.put_bytes(b"", paths[0]).version
    manifest = pb.Manifest(size=0, file_digest=empty.file_digest)
    for p in paths[1:]:
        client.stub.CommitFile(pb.CommitFileRequest(path=p, manifest=manifest))
    stop = threading.Event()

    def add_more() -> None:
        n = 0
        while not stop.is_set():
            client.stub.CommitFile(pb.CommitFileRequest(path=f"{base}/f{n:05d}-late", manifest=manifest))
            n += 1

    adder = threading.Thread(target=add_more)
    adder.start()
    try:
        seen, token = [], ""
        while True:
            page = client.stub.ListFiles(pb.ListFilesRequest(prefix=f"{base}/", page_size=100, page_token=token))
            assert len(page.files) <= 100
            seen += [f.path for f in page.files]
            token = page.next_page_token
            if not token:
                break
    finally:
        stop.set()
        adder.join()
    assert len(seen) == len(set(seen))
    assert set(paths) <= set(seen)


def test_changes_and_watch_deliver_every_event_in_order(server, client):
    base = _base()
    start = client.changes(prefix=f"{base}/")[1] or "0"
    events: list[pb.Event] = []
    ready = threading.Event()

    def watch() -> None:
        stream = client.stub.Watch(pb.WatchRequest(prefix=f"{base}/", since=start))
        ready.set()
        for event in stream:
            events.append(event)
            if len(events) == 6:
                stream.cancel()
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait()
    for n in range(5):
        client.put_bytes(f"v{n}".encode(), f"{base}/a")
    client.delete(f"{base}/a")
    watcher.join(timeout=30)
    assert [(e.kind, e.version) for e in events] == [("put", n) for n in range(1, 6)] + [("delete", 6)]
    polled, cursor = client.changes(since=start, prefix=f"{base}/")
    assert [e.cursor for e in polled] == [e.cursor for e in events]
    rest, same = client.changes(since=cursor, prefix=f"{base}/")
    assert rest == [] and same == cursor
    after_third, _ = client.changes(since=events[2].cursor, prefix=f"{base}/")
    assert [e.version for e in after_third] == [4, 5, 6]


def test_feed_resumes_from_a_cursor_after_restart(fresh_server):
    with StratusClient(fresh_server.channel()) as c:
        c.put_bytes(b"1", "feed/x")
        _, cursor = c.changes(prefix="feed/")
    fresh_server.stop()
    fresh_server.start()
    with StratusClient(fresh_server.channel()) as c:
        c.put_bytes(b"2", "feed/x")
        later, _ = c.changes(since=cursor, prefix="feed/")
        assert [(e.path, e.version) for e in later] == [("feed/x", 2)]
        stream = c.stub.Watch(pb.WatchRequest(prefix="feed/", since=cursor))
        assert next(stream).version == 2
        stream.cancel()


def test_acknowledged_commit_survives_sigkill_with_embedded_valkey(tmp_path):
    running = RunningServer(tmp_path / "data", "", "sv").start()
    try:
        with StratusClient(running.channel()) as c:
            version = c.put_bytes(b"precious" * 10_000, "keep/me").version
        running.kill()
        running.start()
        with StratusClient(running.channel()) as c:
            assert c.stat("keep/me").version == version.version
            assert c.get_bytes("keep/me") == b"precious" * 10_000
    finally:
        running.stop()


def test_second_server_on_the_same_data_dir_is_refused(tmp_path):
    first = RunningServer(tmp_path / "data", "", "sv").start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "service.server", "--data-dir", str(tmp_path / "data"),
             "--listen", "127.0.0.1:0", "--insecure"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode != 0
        assert "in use by another" in out.stderr and str(tmp_path / "data") in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        assert first.stop() == 0


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    running = RunningServer(tmp_path / "data", "", "sv").start()
    with StratusClient(running.channel()) as c:
        c.put_bytes(os.urandom(1000), "x")
    assert running.stop(signal.SIGTERM) == 0
    assert not (tmp_path / "data" / "valkey" / "valkey.sock").exists()


def test_plaintext_off_loopback_is_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "service.server", "--data-dir", str(tmp_path), "--listen", "0.0.0.0:0", "--insecure"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--insecure-any-host" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "service.server", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--tls-dir" in out.stderr
