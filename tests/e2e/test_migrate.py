"""`stratus admin migrate`: a files-layout data dir becomes packs, survives kill -9 in the middle, and
loses nothing (real server processes, real Redis and Valkey, the CLI as a process)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cli_helpers import Cli, isolated_env, run_process, start_process
from server_fixtures import RunningServer, drop_prefix, new_prefix, run_to_exit
from tls_fixtures import connect, tls_server

from cas import pack
from cli.client import StratusClient

ACCESS = """
[identities.alice]

[identities.ops]
admin = true
"""
FILES = {"STRATUS_STORE_FORMAT": "files"}


def migrate_env(server: RunningServer, tmp_path: Path) -> dict:
    return {**isolated_env(tmp_path), "STRATUS_REDIS_PREFIX": server.prefix}


def migrate_args(server: RunningServer, redis_url: str, *extra: str) -> list[str]:
    args = ["--json", "admin", "migrate", "--data-dir", str(server.data_dir), *extra]
    return args + (["--redis-url", redis_url] if redis_url else [])


def chunk_files(data_dir: Path) -> int:
    folder = data_dir / "chunks"
    return sum(1 for p in folder.rglob("*") if p.is_file() and len(p.name) == 64) if folder.is_dir() else 0


def kill_midway(server: RunningServer, redis_url: str, env: dict, total: int) -> None:
    """Start the migration as a process and SIGKILL it once some chunk files, not all, are moved."""
    proc = start_process(migrate_args(server, redis_url, "--batch-mib", "1"), env,
                         stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    deadline = time.monotonic() + 120
    try:
        while 0 < total - chunk_files(server.data_dir) < total // 2 or chunk_files(server.data_dir) == total:
            assert proc.poll() is None, "the migration ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(600)
def test_migrate_survives_sigkill_and_loses_nothing(redis_url, tmp_path):
    files = {f"small/{n}.txt": os.urandom(50 + n * 300) for n in range(40)}
    files.update({f"big/{n}.bin": os.urandom(1 << 20) for n in range(24)})
    files["huge.bin"] = os.urandom(10 << 20)  # more than 115 chunks: its manifest is a file of its own
    with tls_server(tmp_path, redis_url, ["alice", "ops"], access=ACCESS, extra_env=FILES) as server:
        with connect(server, "alice") as alice:
            for path, data in files.items():
                alice.put_bytes(data, path)
            alice.put_bytes(b"second version", "small/0.txt")
            alice.delete("small/1.txt")
            huge = alice.stat("huge.bin").manifest_digest
        server.stop()
        env = migrate_env(server, tmp_path)
        assert (server.data_dir / "chunks").is_dir() and any((server.data_dir / "manifests").rglob(huge.hex()))
        assert chunk_files(server.data_dir) > 150
        kill_midway(server, redis_url, env, chunk_files(server.data_dir))
        assert (server.data_dir / "MIGRATING").exists()
        refused = RunningServer(server.data_dir, redis_url, server.prefix, extra_args=server.args)
        assert "admin migrate" in run_to_exit(refused).stderr  # half files, half packs: never served

        done = run_process(migrate_args(server, redis_url), env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["resumed"] is True and report["damaged"] == [] and report["manifests"] == 1
        assert "chunks:" in done.stderr  # progress
        for gone in ("chunks", "manifests", "MIGRATING"):
            assert not (server.data_dir / gone).exists()
        stored = {r.digest for p in pack.list_packs(server.data_dir) for _, r in pack.scan(server.data_dir, p)
                  if r.type == pack.RecordType.MANIFEST}
        assert stored == {huge}

        del server.env["STRATUS_STORE_FORMAT"]  # the setting goes, as the server's message says
        server.start()
        with connect(server, "alice") as alice:
            for path, data in files.items():
                if path != "small/1.txt":
                    assert alice.get_bytes(path, version=1) == data
            assert alice.get_bytes("small/0.txt") == b"second version"
            assert alice.get_bytes("small/1.txt", version=1) == files["small/1.txt"]
            assert alice.list_versions("small/1.txt")[0].deleted
            assert alice.stat("huge.bin").manifest_digest == huge
            grown = files["huge.bin"] + b"more"
            assert alice.put_bytes(grown, "huge.bin").version.version == 2
            assert alice.get_bytes("huge.bin") == grown
        cli = Cli(server.address, tmp_path, isolated_env(tmp_path))
        conn = ["--server", server.address, "--tls-dir", str(server.pki), "--client-name", "ops"]
        check = json.loads(cli("--json", *conn, "admin", "check", "--read-data", connect=False).stdout)
        assert check["damaged"] == 0 and check["missing"] == 0 and check["damaged_digests"] == []
        assert check["chunks_checked"] >= 150


def test_a_files_data_dir_is_served_as_is_and_the_log_names_migrate(redis_url, tmp_path):
    prefix = new_prefix()
    files = RunningServer(tmp_path / "files", redis_url, prefix, extra_env=FILES).start()
    try:
        with StratusClient.connect(files.address, insecure=True) as client:
            client.put_bytes(b"kept", "a.txt")
        files.stop()
        again = RunningServer(files.data_dir, redis_url, prefix)  # the default asks for packs
        again.log_path = tmp_path / "server.log"
        again.start()
        with StratusClient.connect(again.address, insecure=True) as client:
            assert client.get_bytes("a.txt") == b"kept"
        again.stop()
        assert "stratus admin migrate" in again.log_path.read_text()
    finally:
        files.kill()
        drop_prefix(redis_url, prefix)


def test_migrate_refuses_a_packs_data_dir(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "packs", redis_url, prefix).start()
    try:
        server.stop()
        elsewhere = run_process(migrate_args(server, redis_url), isolated_env(tmp_path))  # default prefix
        assert elsewhere.returncode == 1 and "belongs to store" in json.loads(elsewhere.stdout)["error"]["message"]
        refused = run_process(migrate_args(server, redis_url), migrate_env(server, tmp_path))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "not in the files layout" in json.loads(refused.stdout)["error"]["message"]
        assert not (server.data_dir / "MIGRATING").exists()
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)
