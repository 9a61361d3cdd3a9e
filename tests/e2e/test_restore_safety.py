"""A restore never leaves its folder: symlinks inside the destination are never followed, a folder
swapped for a symlink while a real ``stratus get`` runs cannot redirect a write, a killed download's
``.svpart`` is reused and removed, and ``get PATH -`` says what reached stdout before a failure."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import MIB, run_process, start_process, write_random
from stored_chunks import flip_at, flip_chunk

from cas.chunker import chunk_file
from cas.digest import digest
from cli.errors import ERROR, INTEGRITY

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures

OLD_NS = 1_500_000_000_000_000_000


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root`` (not following links): kind, content digest, mode, mtime, inode."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            body = digest(path.read_bytes()) if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            state[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), body, link, st.st_mode & 0o7777,
                                                 st.st_mtime_ns, st.st_ino)
    return state


def make_outside(tmp_path: Path) -> Path:
    """A folder outside every destination, with files whose names a restore writes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("evil.txt", "big.bin", "victim", "top.txt"):
        (outside / name).write_bytes(b"outside " + name.encode())
        os.chmod(outside / name, 0o600)
        os.utime(outside / name, ns=(OLD_NS, OLD_NS))
    return outside


def push_tree(cli, prefix: str, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "other").mkdir()
    (src / "top.txt").write_bytes(b"top content")
    (src / "sub" / "evil.txt").write_bytes(b"must not leave the destination")
    write_random(src / "sub" / "big.bin", 3 * MIB)  # goes through the large-file path
    (src / "other" / "ok.txt").write_bytes(b"ok")
    os.chmod(src / "top.txt", 0o644)
    cli("put", str(src), prefix)
    return src


def by_remote(doc: dict) -> dict[str, dict]:
    return {f["remote"].split("/", 1)[1]: f for f in doc["files"]}


# ---- static cases -------------------------------------------------------------------------------


def test_folder_symlink_inside_destination_is_not_followed(cli, prefix, tmp_path):
    src = push_tree(cli, prefix, tmp_path)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    doc = cli.json("get", prefix, str(dst), code=ERROR)
    assert snapshot(outside) == before
    files = by_remote(doc)
    for rel in ("sub/evil.txt", "sub/big.bin"):
        assert files[rel]["status"] == "failed" and files[rel]["exit_code"] == ERROR
        assert "symlink" in files[rel]["error"]
    assert (dst / "top.txt").read_bytes() == b"top content"  # the rest of the tree went on
    assert (dst / "other" / "ok.txt").read_bytes() == (src / "other" / "ok.txt").read_bytes()
    assert (dst / "sub").is_symlink() and doc["stats"]["files_failed"] == 2
    result = cli("get", prefix, str(dst), code=ERROR)  # the human output names the path
    assert "is a symlink" in result.stderr and str(dst / "sub") in result.stderr


@pytest.mark.parametrize("same_content", [True, False])
def test_file_symlink_to_outside_is_replaced_target_untouched(cli, prefix, tmp_path, same_content):
    src = push_tree(cli, prefix, tmp_path)
    outside = make_outside(tmp_path)
    if same_content:
        for rel, name in (("top.txt", "victim"), ("sub/big.bin", "big.bin")):
            (outside / name).write_bytes((src / rel).read_bytes())
            os.chmod(outside / name, 0o600)
            os.utime(outside / name, ns=(OLD_NS, OLD_NS))
    before = snapshot(outside)
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    (dst / "top.txt").symlink_to(outside / "victim")
    (dst / "sub" / "big.bin").symlink_to(outside / "big.bin")
    doc = cli.json("get", prefix, str(dst))
    assert snapshot(outside) == before  # content, mode and mtime of the targets unchanged
    for rel in ("top.txt", "sub/big.bin"):
        path = dst / rel
        assert not path.is_symlink() and path.read_bytes() == (src / rel).read_bytes()
        assert path.stat().st_mtime_ns == (src / rel).stat().st_mtime_ns
        assert by_remote(doc)[rel]["status"] == "downloaded"  # never "up to date" through a link


def test_symlink_loops_and_dangling_links(cli, prefix, tmp_path):
    src = push_tree(cli, prefix, tmp_path)
    outside = make_outside(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "sub").symlink_to("sub")  # a loop where a folder is expected
    (dst / "other").symlink_to(outside / "missing-dir")  # dangling, where a folder is expected
    (dst / "top.txt").symlink_to(outside / "missing-file")  # dangling, where a file goes
    before = snapshot(outside)
    doc = cli.json("get", prefix, str(dst), code=ERROR)
    assert snapshot(outside) == before  # nothing created at a dangling link's target
    files = by_remote(doc)
    assert {rel for rel, f in files.items() if f["status"] == "failed"} == {
        "sub/evil.txt", "sub/big.bin", "other/ok.txt"}
    assert (dst / "top.txt").read_bytes() == (src / "top.txt").read_bytes()
    assert not (dst / "top.txt").is_symlink()


def test_file_symlink_loop_is_replaced(cli, prefix, tmp_path):
    push_tree(cli, prefix, tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "top.txt").symlink_to("top.txt")
    cli("get", prefix + "top.txt", str(dst / "top.txt"))
    assert (dst / "top.txt").read_bytes() == b"top content"


def test_destination_root_symlink_is_followed(cli, prefix, tmp_path):
    src = push_tree(cli, prefix, tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    doc = cli.json("get", prefix, str(link))
    assert doc["stats"]["files_failed"] == 0
    assert (real / "sub" / "evil.txt").read_bytes() == (src / "sub" / "evil.txt").read_bytes()
    assert link.is_symlink()


def test_single_file_get_onto_symlink_replaces_the_link(cli, prefix, tmp_path):
    src = push_tree(cli, prefix, tmp_path)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "link").symlink_to(outside / "victim")
    (dst / "biglink").symlink_to(outside / "big.bin")
    cli("get", prefix + "top.txt", str(dst / "link"))
    cli("get", prefix + "sub/big.bin", str(dst / "biglink"))
    assert snapshot(outside) == before
    assert not (dst / "link").is_symlink() and (dst / "link").read_bytes() == b"top content"
    assert (dst / "biglink").read_bytes() == (src / "sub" / "big.bin").read_bytes()


def test_stale_svpart_files_are_removed(cli, prefix, tmp_path):
    push_tree(cli, prefix, tmp_path)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    (dst / ".top.txt.svpart").write_bytes(b"garbage from an old run")
    (dst / "sub" / ".big.bin.svpart").symlink_to(outside / "big.bin")
    (dst / "sub" / ".evil.txt.svpart").symlink_to(outside / "evil.txt")
    cli("get", prefix, str(dst))
    assert snapshot(outside) == before
    assert not [p for p in dst.rglob("*") if p.name.endswith(".svpart")]


# ---- the race: a folder swapped for a symlink while a real `stratus get` runs -------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(libc: ctypes.CDLL, a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE): the folder is never missing."""
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_folder_swapped_for_symlink_during_restore_cannot_redirect_writes(cli, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(400):
        path = src / "sub" / f"s{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(100 + i))
    for i in range(200):
        (src / f"t{i:03d}.txt").write_bytes(os.urandom(50 + i))
    for n in range(3):
        write_random(src / "sub" / f"big{n}.bin", 2 * MIB + n)
    cli("put", str(src), prefix)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("s000.txt", "s399.txt", "big0.bin"):
        (outside / name).write_bytes(b"outside")
        os.utime(outside / name, ns=(OLD_NS, OLD_NS))
    before = snapshot(outside)
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    swap = dst / ".swap"
    swap.symlink_to(outside)

    libc = ctypes.CDLL(None, use_errno=True)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            _exchange(libc, dst / "sub", swap)
            swaps[0] += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        done = run_process(["--server", cli.address, "--insecure", "--json", "get", "-j", "4", prefix, str(dst)],
                           cli.env, timeout=300)
    finally:
        stop.set()
        thread.join()
    if (dst / "sub").is_symlink():
        _exchange(libc, dst / "sub", swap)
    assert swaps[0] > 10
    assert snapshot(outside) == before  # nothing created, modified, chmod'ed or utime'd outside
    doc = json.loads(done.stdout)
    ok = [f for f in doc["files"] if f["status"] in ("downloaded", "up_to_date")]
    failed = [f for f in doc["files"] if f["status"] == "failed"]
    assert len(ok) + len(failed) == 603
    assert done.returncode == (ERROR if failed else 0)
    for f in failed:
        assert "symlink" in f["error"], f
    for f in ok:
        rel = f["remote"][len(prefix):]
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    print(f"swaps: {swaps[0]}, files ok: {len(ok)}, refused: {len(failed)}")
    again = cli.json("get", prefix, str(dst))  # without the swapper, everything lands
    assert again["stats"]["files_failed"] == 0
    assert snapshot(outside) == before


# ---- a killed download's temp file --------------------------------------------------------------------


def test_svpart_of_killed_get_is_reused_and_removed(cli, prefix, tmp_path):
    size = 64 * MIB
    src = write_random(tmp_path / "big.bin", size)
    cli("put", str(src), prefix + "big.bin")
    dst = tmp_path / "dst"
    dst.mkdir()
    part = dst / ".big.bin.svpart"
    proc = start_process(["--server", cli.address, "--insecure", "get", prefix + "big.bin", str(dst / "big.bin")],
                         cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.stat().st_size >= 8 * MIB:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = part.stat().st_size
    assert 0 < left < size and not (dst / "big.bin").exists()
    doc = cli.json("get", prefix + "big.bin", str(dst / "big.bin"))
    stats = doc["stats"]
    print(f"partial file held {left} bytes; the second get fetched {stats['bytes_fetched']} of {size}")
    assert stats["chunks_reused"] > 0
    assert stats["bytes_fetched"] <= size - left + 2 * MIB  # at most the tail plus the cut chunk
    assert (dst / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.iterdir()) == ["big.bin"]


# ---- get PATH - ---------------------------------------------------------------------------------------


def test_stdout_failure_says_how_much_was_written(cli, server, prefix, tmp_path):
    src = write_random(tmp_path / "f", 6 * MIB)
    cli("put", str(src), prefix + "f")
    last = list(chunk_file(src))[-1]
    flipped = flip_chunk(server.data_dir, digest(last.data), -20)
    try:
        result = cli("get", prefix + "f", "-", code=INTEGRITY)
    finally:
        flip_at(*flipped)
    written = len(result.stdout_bytes)
    assert written > 0
    assert f"{written} bytes were written to standard output before the failure" in result.stderr
    assert "discard that output" in result.stderr and "nothing was written" not in result.stderr
