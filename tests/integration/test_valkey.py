"""EmbeddedValkey: private server on a unix socket, AOF durability, one server per data dir."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from cli_helpers import ROOT

from service.metadata import MetadataStore
from service.valkey import DataDirBusyError, EmbeddedValkey, ValkeyError

# A stand-in for `stratus serve`: start Valkey, commit, report, then hang until killed.
CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import redis.asyncio as aioredis
    from service.metadata import MetadataStore
    from service.valkey import EmbeddedValkey

    async def commit(url):
        client = aioredis.from_url(url)
        store = MetadataStore(client)
        digest = bytes(range(32))
        await store.add_chunks("ns", [(digest, 3)])
        for i in range(5):
            rec = await store.commit(
                "ns", "kept.txt", manifest_digest=bytes([i]) * 32, size=3, file_digest=bytes(32),
                chunk_digests=[digest], chunk_count=1, new_chunks=0, new_bytes=0, identity="me",
                mode=0, mtime_ns=0, if_version=i)
        await client.aclose()
        return rec.version

    valkey = EmbeddedValkey(sys.argv[1])
    valkey.start()
    version = asyncio.run(commit(valkey.url))
    print(valkey.pid, version, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.02)


def run_child(data_dir: Path) -> tuple[subprocess.Popen, int, int]:
    """Start the stand-in server; returns it, its Valkey's pid and the committed version."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child failed (exit {proc.wait()})"
    pid, version = map(int, line.split())
    return proc, pid, version


async def head_version(url: str) -> tuple[int, bytes]:
    client = aioredis.from_url(url)
    try:
        rec = await MetadataStore(client).head("ns", "kept.txt")
    finally:
        await client.aclose()
    assert rec is not None
    return rec.version, rec.manifest_digest


def test_starts_on_a_private_unix_socket_with_durable_aof(tmp_path: Path):
    with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.url == f"unix://{tmp_path}/valkey.sock"
        client = redis.Redis.from_url(valkey.url)
        try:
            assert client.ping()
            config = client.config_get("*")
            assert config["port"] == "0"  # no TCP listener at all
            assert config["appendonly"] == "yes" and config["appendfsync"] == "always"
            assert config["dir"] == str(tmp_path / "valkey")
            assert config["unixsocketperm"] == "700"
        finally:
            client.close()
        assert (tmp_path / "valkey.sock").is_socket()


def test_second_server_on_the_same_data_dir_is_refused(tmp_path: Path):
    with EmbeddedValkey(tmp_path) as first:
        with pytest.raises(DataDirBusyError) as info:
            EmbeddedValkey(tmp_path).start()
        assert str(tmp_path) in str(info.value) and str(os.getpid()) in str(info.value)
        assert redis.Redis.from_url(first.url).ping()  # the first one is untouched
    with EmbeddedValkey(tmp_path):  # released on stop
        pass


def test_second_server_in_another_process_is_refused(tmp_path: Path):
    with EmbeddedValkey(tmp_path):
        code = "import sys; from service.valkey import EmbeddedValkey; EmbeddedValkey(sys.argv[1]).start()"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0
        assert "DataDirBusyError" in result.stderr and str(tmp_path) in result.stderr


def test_clean_stop_leaves_no_process(tmp_path: Path):
    valkey = EmbeddedValkey(tmp_path)
    valkey.start()
    pid = valkey.pid
    assert pid is not None and alive(pid)
    valkey.stop()
    assert not alive(pid)
    assert not (tmp_path / "valkey.sock").exists()
    assert not (tmp_path / "valkey" / "valkey.pid").exists()
    valkey.stop()  # idempotent


def test_acknowledged_commit_survives_kill9_of_server_and_valkey(tmp_path: Path):
    proc, valkey_pid, version = run_child(tmp_path)
    os.kill(valkey_pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    wait_gone(valkey_pid)
    assert (tmp_path / "valkey.sock").exists()  # stale socket of the dead server
    with EmbeddedValkey(tmp_path) as valkey:
        assert asyncio.run(head_version(valkey.url)) == (5, bytes([4]) * 32)
    assert version == 5


def test_orphaned_valkey_of_a_killed_server_is_replaced(tmp_path: Path):
    proc, orphan, _ = run_child(tmp_path)
    proc.kill()  # the server dies; its Valkey keeps running with no owner
    proc.wait()
    assert alive(orphan)
    with EmbeddedValkey(tmp_path) as valkey:
        assert not alive(orphan)
        assert valkey.pid != orphan
        assert asyncio.run(head_version(valkey.url))[0] == 5


def test_stale_pid_file_of_an_unrelated_process_is_ignored(tmp_path: Path):
    (tmp_path / "valkey").mkdir()
    (tmp_path / "valkey" / "valkey.pid").write_text(f"{os.getpid()}\n")  # pid reused by someone else
    with EmbeddedValkey(tmp_path) as valkey:
        assert redis.Redis.from_url(valkey.url).ping()


def test_start_failure_reports_the_log_and_releases_the_lock(tmp_path: Path):
    aof_dir = tmp_path / "valkey" / "appendonlydir"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    with pytest.raises(ValkeyError, match="valkey.log"):
        EmbeddedValkey(tmp_path).start()
    with pytest.raises(ValkeyError):  # refused for the same reason, not for a leftover lock
        EmbeddedValkey(tmp_path).start()


def test_overlong_socket_path_is_refused_clearly(tmp_path: Path):
    deep = tmp_path / ("d" * 100)
    with pytest.raises(ValkeyError, match="shorter"):
        EmbeddedValkey(deep).start()
