"""The API over real gRPC against a real server process: versions, history, feed, concurrency, crashes."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import RunningServer, run_to_exit

from cas import codec
from cas.errors import NotFoundError, VersionConflictError
from cli.client import StratusClient
from cli.localserver import LocalServer
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc

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
    manifest = pb.Manifest(size=0, file_digest=bytes.fromhex(empty.file_digest))
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


def _embedded_valkey_pid(data_dir: Path) -> int:
    """The pid of the valkey-server a server started for ``data_dir`` (from its pid file)."""
    pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    assert Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("valkey-server")
    assert Path(os.readlink(f"/proc/{pid}/cwd")) == (data_dir / "valkey").resolve()
    return pid


def _wait_gone(pid: int) -> None:
    """Until ``pid`` has exited (a zombie counts as gone: it holds no files and answers nothing)."""
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == b"Z":
            return
        time.sleep(0.01)


def test_acknowledged_commit_survives_sigkill_of_server_and_embedded_valkey(tmp_path):
    """kill -9 of *both* processes right after the acknowledgement: nothing acknowledged is lost.

    Valkey runs in its own session, so killing the server alone would leave it alive and the next
    start would stop it with SIGTERM (a clean AOF flush); here neither process gets to flush.
    """
    data_dir = tmp_path / "data"
    running = RunningServer(data_dir, "", "sv").start()
    first, last = os.urandom(3 * MIB), os.urandom(2 * MIB) + b"precious" * 10_000
    try:
        valkey_pid = _embedded_valkey_pid(data_dir)
        with StratusClient(running.channel()) as c:
            c.put_bytes(first, "keep/me")
            acked = c.put_bytes(last, "keep/me").version
            # the very next thing after the acknowledgement: no flush, no shutdown, no grace
            os.kill(valkey_pid, signal.SIGKILL)
            running.kill()
        _wait_gone(valkey_pid)
        assert (data_dir / "valkey" / "valkey.pid").exists()  # not a clean valkey shutdown
        running.start()
        assert _embedded_valkey_pid(data_dir) != valkey_pid
        with StratusClient(running.channel()) as c:
            info = c.stat("keep/me")
            assert (info.version, info.manifest_digest.hex(), info.file_digest.hex()) == (
                acked.version, acked.manifest_digest, acked.file_digest)
            # the manifest, and every chunk it names, are on disk and verify against their digests
            manifest = c.stub.GetManifest(pb.GetManifestRequest(path="keep/me")).manifest
            assert len(manifest.chunks) > 1 and manifest.size == len(last)
            digests = [bytes(ref.digest) for ref in manifest.chunks]
            assert c.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing == []
            frames = [chunk for batch in c.stub.GetChunks(pb.GetChunksRequest(digests=digests))
                      for chunk in batch.chunks]
            rebuilt = b"".join(codec.decode_verified(f.digest, f.frame, 1 << 20) for f in frames)
            assert rebuilt == last
            assert c.get_bytes("keep/me") == last and c.get_bytes("keep/me", version=1) == first
    finally:
        running.stop()


def test_second_server_on_the_same_data_dir_is_refused(tmp_path):
    first = RunningServer(tmp_path / "data", "", "sv").start()
    try:
        out = run_to_exit(LocalServer(tmp_path / "data"))
        assert out.returncode != 0
        assert "in use by another" in out.stderr and str(tmp_path / "data") in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        assert first.stop() == 0


def test_sigterm_lets_an_upload_in_flight_finish_then_exits_0(tmp_path):
    """SIGTERM in the middle of an Upload stream: the stream completes, commits, then the server exits 0."""
    data_dir = tmp_path / "data"
    running = RunningServer(data_dir, "", "sv").start()
    data = os.urandom(8 * MIB)
    half = threading.Event()
    draining = threading.Event()

    def messages():  # noqa: ANN202
        yield pb.UploadRequest(header=pb.UploadHeader(path="drain/big"))
        for n, start in enumerate(range(0, len(data), MIB)):
            if n == 4:
                half.set()  # half the file is on the wire; the rest goes once the server drains
                assert draining.wait(30)
            yield pb.UploadRequest(data=data[start:start + MIB])

    channel = running.channel()
    try:
        health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(health).status == health_pb2.HealthCheckResponse.SERVING
        upload = pb_grpc.StratusStub(channel).Upload.future(messages())
        assert half.wait(30)
        running.proc.send_signal(signal.SIGTERM)
        # the server says it is shutting down while the upload is still open
        assert next(health).status == health_pb2.HealthCheckResponse.NOT_SERVING
        health.cancel()
        assert not upload.done()
        draining.set()
        committed = upload.result(timeout=60)
        assert committed.version.version == 1 and committed.version.size == len(data)
        assert running.stop() == 0
    finally:
        channel.close()
        running.stop(signal.SIGKILL)
    assert not (data_dir / "valkey" / "valkey.sock").exists()
    running.start()
    try:
        with StratusClient(running.channel()) as c:
            assert c.get_bytes("drain/big") == data
    finally:
        assert running.stop() == 0


def test_plaintext_off_loopback_is_refused(tmp_path):
    out = run_to_exit(LocalServer(tmp_path, listen="0.0.0.0:0"))
    assert out.returncode == 2 and "--insecure-any-host" in out.stderr
    out = run_to_exit(LocalServer(None, args=["--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"]))
    assert out.returncode == 2 and "--tls-dir" in out.stderr
