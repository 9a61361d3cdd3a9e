"""``stratus sync``: two daemons on two folders (separate state and caches) plus a third client
doing ``put``/``rm`` directly, all real processes against a real server.

The longer randomized run is behind ``STRATUS_SYNC_LONG=1`` (bench-sized); the default one is short.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

from cli_helpers import MIB, Cli, isolated_env, write_random
from sync_helpers import Daemon, run_sync, snapshot, wait_same, wait_until

from cli.library import Client

pytest_plugins = ["cli_fixtures"]


def _pair(server, tmp_path: Path, prefix: str) -> tuple[Daemon, Daemon]:
    a = Daemon(server.address, tmp_path / "A", prefix, tmp_path / "home-a")
    b = Daemon(server.address, tmp_path / "B", prefix, tmp_path / "home-b")
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    return a.start(), b.start()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_two_daemons_and_a_third_client(server, tmp_path: Path, prefix: str, cli: Cli) -> None:
    a, b = _pair(server, tmp_path, prefix)
    A, B = a.folder, b.folder
    try:
        # create: nested folders, an empty file, an empty folder, an ignored file
        _write(A / ".stratusignore", b"*.log\nbuild/\n")
        _write(A / "docs/notes.txt", b"first")
        _write(A / "docs/deep/er/x.bin", os.urandom(3000))
        _write(A / "empty.txt", b"")
        (A / "photos/2024").mkdir(parents=True)
        _write(A / "debug.log", b"ignored")
        _write(A / "build/out.o", b"ignored too")
        wait_until(lambda: (B / "docs/deep/er/x.bin").exists() and (B / "photos/2024").is_dir()
                   and (B / "empty.txt").exists(), what="the first files on B")
        assert (B / "empty.txt").read_bytes() == b""
        assert not (B / "debug.log").exists() and not (B / "build").exists()
        (A / "debug.log").unlink()  # the folders are compared whole below
        shutil.rmtree(A / "build")
        # modify on B, rename and delete on A
        (B / "docs/notes.txt").write_bytes(b"second, from B")
        wait_until(lambda: (A / "docs/notes.txt").read_bytes() == b"second, from B", what="B's edit on A")
        (A / "docs/deep/er/x.bin").rename(A / "docs/moved.bin")
        shutil.rmtree(A / "photos")
        wait_until(lambda: (B / "docs/moved.bin").exists() and not (B / "docs/deep/er/x.bin").exists()
                   and not (B / "photos").exists(), what="rename and folder delete on B")
        # a third client writes and deletes directly
        src = tmp_path / "third.txt"
        src.write_bytes(b"from the third client")
        cli("put", str(src), f"{prefix}docs/third.txt")
        wait_until(lambda: (A / "docs/third.txt").exists() and (B / "docs/third.txt").exists(),
                   what="the third client's put on both")
        cli("rm", f"{prefix}docs/notes.txt")
        wait_until(lambda: not (A / "docs/notes.txt").exists() and not (B / "docs/notes.txt").exists(),
                   what="the third client's rm on both")
        wait_same(A, B)
        listed = {v["path"] for v in cli.json("ls", "--all", prefix)["files"]}
        assert f"{prefix}debug.log" not in listed and f"{prefix}build/out.o" not in listed
        # history keeps the deleted file's content
        assert [v["deleted"] for v in cli.json("log", f"{prefix}docs/notes.txt")["versions"]][0] is True
    finally:
        a.stop()
        b.stop()
    assert any(x["action"] == "download" for x in b.actions())
    status = cli.json("sync", "status", str(B))
    assert status["pending"] == [] and status["problems"] == [] and status["synced"] > 0


def test_conflicts_and_delete_against_edit(server, tmp_path: Path, prefix: str) -> None:
    A, B = tmp_path / "A", tmp_path / "B"
    for folder, data in ((A, b"base"), (B, None)):
        folder.mkdir()
        if data:
            _write(folder / "doc.txt", data)
            _write(folder / "other.txt", b"to be deleted on A, edited on B")
            _write(folder / "gone.txt", b"to be deleted on B")
    homes = {A: tmp_path / "ha", B: tmp_path / "hb"}
    run_sync(server.address, A, prefix, homes[A])
    run_sync(server.address, B, prefix, homes[B])
    time.sleep(0.25)  # edits must not fall in the same clock tick as the agreement
    (A / "doc.txt").write_bytes(b"edit on A")
    (B / "doc.txt").write_bytes(b"edit on B")
    (A / "other.txt").unlink()
    (B / "other.txt").write_bytes(b"edited on B")
    (B / "gone.txt").unlink()
    time.sleep(0.25)
    run_sync(server.address, A, prefix, homes[A])
    doc = run_sync(server.address, B, prefix, homes[B])
    assert doc["conflict"] == 1 and doc["ok"] is True
    run_sync(server.address, A, prefix, homes[A])
    a, b = snapshot(A), snapshot(B)
    assert a == b
    assert a["doc.txt"] == b"edit on A"  # the remote version keeps the name
    copies = [k for k in a if ".sync-conflict-" in k]
    assert len(copies) == 1 and a[copies[0]] == b"edit on B" and copies[0].startswith("doc.sync-conflict-")
    assert copies[0].endswith(".txt")
    assert a["other.txt"] == b"edited on B"  # delete vs edit: the edit wins
    assert "gone.txt" not in a  # delete vs unchanged: deleted on the other side too
    status = Cli(server.address, tmp_path, isolated_env(homes[A])).json("sync", "status", str(A))
    assert status["pending"] == [] and status["conflicts"] == copies and status["problems"] == []


def test_killed_mid_transfer_restarts_without_resending(server, tmp_path: Path, prefix: str) -> None:
    A = tmp_path / "A"
    size, count = 6 << 20, 8
    for i in range(count):
        write_random(A / f"big{i}.bin", size)
    time.sleep(0.25)
    daemon = Daemon(server.address, A, prefix, tmp_path / "home", "--jobs", "1").start()
    try:
        wait_until(lambda: sum(x["action"] == "upload" for x in daemon.actions()) >= 2, 60, "two files uploaded")
    finally:
        daemon.kill()  # SIGKILL, with the next file in flight
    done_before = sum(x["action"] == "upload" for x in daemon.actions())
    assert done_before < count, "killed too late: nothing left to resume"
    doc = run_sync(server.address, A, prefix, tmp_path / "home")
    sent = sum(x["bytes_sent"] for x in doc["actions"])
    uploaded = doc["upload"]
    assert uploaded + doc["record"] + done_before == count
    assert sent <= uploaded * size * 1.01  # nothing committed before the kill was sent again
    B = tmp_path / "B"
    run_sync(server.address, B, prefix, tmp_path / "home-b")
    assert snapshot(A) == snapshot(B)


def test_killed_mid_download_restarts_cleanly(server, tmp_path: Path, prefix: str, cli: Cli) -> None:
    """SIGKILL while a large new version is being written over an old copy: the old copy stays whole
    under its name, the restarted daemon resumes from the temp file and leaves none behind."""
    size = 64 * MIB
    B, home = tmp_path / "B", tmp_path / "home-b"
    old = write_random(B / "big.bin", size).read_bytes()
    time.sleep(0.25)
    run_sync(server.address, B, prefix, home)  # B uploads the old version: both sides agree on it
    new = write_random(tmp_path / "v2.bin", size).read_bytes()
    cli("put", str(tmp_path / "v2.bin"), f"{prefix}big.bin")
    part = B / ".big.bin.svpart"
    daemon = Daemon(server.address, B, prefix, home).start()
    try:
        wait_until(lambda: (part.exists() and part.stat().st_size >= 8 * MIB) or bool(daemon.actions()), 120,
                   "the download under way")
    finally:
        daemon.kill()
    assert not daemon.actions(), "killed too late: the download had finished"
    left = part.stat().st_size
    assert 0 < left < size
    assert (B / "big.bin").read_bytes() == old  # never a partial file under the final name
    daemon = Daemon(server.address, B, prefix, home).start()
    try:
        wait_until(lambda: any(x["action"] == "download" and x["ok"] for x in daemon.actions()), 120,
                   "the restarted download")
    finally:
        daemon.stop()
    fetched = sum(x["bytes_fetched"] for x in daemon.actions())
    assert fetched <= size - left + 2 * MIB  # the temp file's chunks were reused, not fetched again
    assert (B / "big.bin").read_bytes() == new
    assert sorted(p.name for p in B.iterdir()) == [".stratus-sync", "big.bin"]  # no temp file left


def test_server_restart_while_daemons_run(fresh_server, tmp_path: Path) -> None:
    fresh_server.listen = fresh_server.address  # come back on the same port
    a, b = _pair(fresh_server, tmp_path, "r/")
    try:
        _write(a.folder / "before.txt", b"before the restart")
        wait_until(lambda: (b.folder / "before.txt").exists(), what="a file before the restart")
        fresh_server.kill()  # SIGKILL: no goodbye to the daemons' streams
        _write(a.folder / "during.txt", b"written while the server was down")
        time.sleep(1.0)
        fresh_server.start()
        _write(b.folder / "after.txt", b"after the restart")
        wait_until(lambda: (b.folder / "during.txt").exists() and (a.folder / "after.txt").exists(), 30,
                   "both daemons to catch up after the restart")
        wait_same(a.folder, b.folder)
    finally:
        a.stop()
        b.stop()
    assert any(x["action"] in ("error", "upload") and not x["ok"] or x["action"] == "remote_error"
               for x in a.actions() + b.actions())


def test_randomized_both_sides(server, tmp_path: Path, prefix: str) -> None:
    ops = 1500 if os.environ.get("STRATUS_SYNC_LONG") else 200
    a, b = _pair(server, tmp_path, prefix)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    written: set[bytes] = set()
    replaced: set[bytes] = set()  # contents the test itself overwrote or deleted (the user's own doing)
    names = [f"d{i % 4}/f{i}.txt" if i % 3 else f"f{i}.txt" for i in range(30)]

    def destroy(path: Path) -> None:
        try:
            replaced.add(path.read_bytes())
        except OSError:
            pass

    try:
        for n in range(ops):
            side = rng.choice((a.folder, b.folder))
            path = side / rng.choice(names)
            roll = rng.random()
            if roll < 0.6:
                data = f"{n} {rng.random()}".encode() * rng.randint(1, 50)
                destroy(path)
                _write(path, data)
                written.add(data)
            elif roll < 0.8 and path.exists():
                destroy(path)
                path.unlink()
            elif path.exists():
                target = side / rng.choice(names)
                target.parent.mkdir(parents=True, exist_ok=True)
                destroy(target)
                path.rename(target)
            if n % 20 == 0:
                time.sleep(0.05)
        wait_same(a.folder, b.folder, timeout=60)
    finally:
        a.stop()
        b.stop()
    final = snapshot(a.folder)
    present = {v for v in final.values() if v}
    with Client(server.address, insecure=True) as vault:
        history = set()
        for head in vault.ls(prefix, include_deleted=True):
            for version in vault.log(head.path):
                if not version.deleted:
                    history.add(vault.read(head.path, version=version.version))
    lost = [d for d in written - replaced if d not in present and d not in history]
    assert not lost, f"{len(lost)} of {len(written)} written contents are neither present nor in history"
