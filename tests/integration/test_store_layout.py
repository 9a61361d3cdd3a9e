"""The server's chunk layout: packs for a new data dir, the files layout kept where it exists or
where asked for, and a server killed with SIGKILL during uploads into packs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import isolated_env, run_process
from server_fixtures import ROOT, RunningServer, drop_prefix, new_prefix, run_to_exit
from stored_chunks import store_format

from cas.pack import SEAL_SIZE, ScanReport, is_sealed, list_packs, pack_path, scan
from cli.client import StratusClient


def _round_trip(server: RunningServer, path: str, data: bytes) -> None:
    with StratusClient.connect(server.address, insecure=True) as client:
        client.put_bytes(data, path)
        assert client.get_bytes(path) == data


def test_new_data_dir_gets_packs_and_old_layout_is_kept(redis_url: str, tmp_path: Path) -> None:
    """A data dir that holds the files layout keeps it across restarts (whatever the default); a
    packs data dir cannot be forced back to files."""
    old, new = tmp_path / "old", tmp_path / "new"
    prefixes = [new_prefix(), new_prefix()]
    try:
        files = RunningServer(old, redis_url, prefixes[0], extra_env={"STRATUS_STORE_FORMAT": "files"}).start()
        data = os.urandom(700_000)
        _round_trip(files, "a.bin", data)
        files.stop()
        assert store_format(old) == "files" and not (old / "packs").exists()
        again = RunningServer(old, redis_url, prefixes[0]).start()  # default "packs": the layout stays
        try:
            with StratusClient.connect(again.address, insecure=True) as client:
                assert client.get_bytes("a.bin") == data
            _round_trip(again, "b.bin", os.urandom(300_000))
        finally:
            again.stop()
        assert not (old / "packs").exists() and any((old / "chunks").iterdir())

        packs = RunningServer(new, redis_url, prefixes[1]).start()
        try:
            _round_trip(packs, "c.bin", os.urandom(500_000))
        finally:
            packs.stop()
        assert store_format(new) == "packs" and list_packs(new) and not (new / "chunks").exists()
        refused = run_to_exit(RunningServer(new, redis_url, prefixes[1], extra_env={"STRATUS_STORE_FORMAT": "files"}))
        assert refused.returncode != 0 and "holds packs" in refused.stderr
    finally:
        for prefix in prefixes:
            drop_prefix(redis_url, prefix)


UPLOADER = """
import hashlib, os, sys
from cli.client import StratusClient

with StratusClient.connect(sys.argv[1], insecure=True) as client:
    for i in range(100_000):
        data = os.urandom(50_000 + (i * 77_777) % 700_000)
        client.put_bytes(data, f"crash/{i}.bin")
        print(i, hashlib.sha256(data).hexdigest(), flush=True)
"""


def test_sigkill_during_uploads_loses_no_acknowledged_version(redis_url: str, tmp_path: Path) -> None:
    """SIGKILL the server while two clients upload: every version acknowledged before the kill
    reads back byte-identical after a restart, a torn pack tail is cut off on open, and
    ``stratus admin check --read-data`` finds nothing wrong."""
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    uploaders = [subprocess.Popen([sys.executable, "-c", UPLOADER.replace("crash/", f"crash{n}/"), server.address],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}) for n in range(2)]
    acked: dict[str, str] = {}
    try:
        for _ in range(12):  # each uploader has had versions acknowledged, and is in the middle of more
            for n, child in enumerate(uploaders):
                i, sha = child.stdout.readline().split()
                acked[f"crash{n}/{i}.bin"] = sha
        server.kill()
        for n, child in enumerate(uploaders):
            out, _ = child.communicate(timeout=60)
            acked.update({f"crash{n}/{i}.bin": sha for i, sha in (line.split() for line in out.splitlines())})
        # A write torn by the crash: half a record after the last intact one of the newest pack.
        data_dir = server.data_dir
        newest = list_packs(data_dir)[-1]
        report = ScanReport()
        for _ in scan(data_dir, newest, report):
            pass
        assert not report.sealed
        with open(pack_path(data_dir, newest), "ab") as f:
            f.truncate(report.end)
            f.write(os.urandom(3000))
        server.start()
        assert is_sealed(data_dir, newest) and pack_path(data_dir, newest).stat().st_size == report.end + SEAL_SIZE
        with StratusClient.connect(server.address, insecure=True) as client:
            for path, sha in acked.items():
                assert hashlib.sha256(client.get_bytes(path)).hexdigest() == sha, path
            _round_trip(server, "after/crash.bin", os.urandom(400_000))
        env = isolated_env(tmp_path)
        check = run_process(["--server", server.address, "--insecure", "admin", "check", "--read-data"], env)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for child in uploaders:
            if child.poll() is None:
                child.kill()
                child.wait()
        server.stop()
        drop_prefix(redis_url, prefix)
