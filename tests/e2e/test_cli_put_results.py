"""``stratus put`` results that scripts rely on: a tree cut off by a dying server says exactly what
was committed and what failed; ``--jobs`` changes nothing but the pace; a symlink named on the
command line is followed (to a file and to a folder)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from cli_helpers import MIB, isolated_env, start_process, write_random

from cas.digest import digest
from cli.client import StratusClient
from cli.grouping import GROUP_FILES

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures

SMALL_FILES = 3000
BIG_FILES = 6


def build_tree(root: Path) -> dict[str, bytes]:
    content = {}
    for i in range(SMALL_FILES):
        content[f"d{i % 10}/f{i:04d}.txt"] = os.urandom(200 + (i * 31) % 3000)
    for i in range(BIG_FILES):
        content[f"big/b{i}.bin"] = os.urandom(2 * MIB + i)
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return content


def _start_put(address: str, tmp: Path, src: Path, prefix: str) -> subprocess.Popen[str]:
    args = ["--server", address, "--insecure", "--json", "put", "--jobs", "1", str(src), prefix]
    return start_process(args, isolated_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_second_group(address: str, prefix: str, proc: subprocess.Popen[str]) -> None:
    """Return once files of a second group are on the server: with --jobs 1 the client then holds
    the answer to the first group's commit, so the report must list committed files."""
    with StratusClient.connect(address, insecure=True) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            files, _ = client.list_files(prefix, page_size=GROUP_FILES + 1)
            if len(files) > GROUP_FILES:
                return
            time.sleep(0.01)
    raise AssertionError(f"the put ended before a second group was committed (exit {proc.poll()})")


def test_tree_put_cut_off_by_sigkill_lists_committed_and_failed_files(fresh_server, prefix, tmp_path):
    src = tmp_path / "src"
    content = build_tree(src)
    proc = _start_put(fresh_server.address, tmp_path, src, prefix)
    try:
        _wait_for_second_group(fresh_server.address, prefix, proc)
        fresh_server.kill()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    doc = json.loads(stdout)
    assert doc["ok"] is False and doc["kind"] == "tree"
    assert doc["error"]["kind"] == "unavailable" and doc["error"]["exit_code"] == 1
    by_status: dict[str, list[dict]] = {}
    for f in doc["files"]:
        by_status.setdefault(f["status"], []).append(f)
    assert set(by_status) == {"uploaded", "failed"}, set(by_status)
    committed, failed = by_status["uploaded"], by_status["failed"]
    # Every file is listed exactly once: committed with its version, or failed with why.
    assert sorted(f["remote"] for f in doc["files"]) == sorted(prefix + rel for rel in content)
    assert len(committed) >= GROUP_FILES and failed
    assert all(f["error_kind"] == "unavailable" and f["error"] and f["version"] is None for f in failed)
    assert all(f["version"] == 1 and f["error"] is None and not f["maybe_committed"] for f in committed)
    unsure = {f["remote"] for f in failed if f["maybe_committed"]}
    assert len(unsure) <= GROUP_FILES  # at most the group (or big file) whose commit was in flight
    assert doc["stats"]["files_uploaded"] == len(committed) and doc["stats"]["files_failed"] == len(failed)
    assert f"committed {len(committed)} files, {len(failed)} failed" in stderr and "stopped:" in stderr

    fresh_server.start()  # same data dir and Redis prefix
    with StratusClient.connect(fresh_server.address, insecure=True) as client:
        for f in committed:
            info = client.stat(f["remote"])
            rel = f["remote"][len(prefix):]
            assert info.version == f["version"] and info.size == f["size"] == len(content[rel])
            assert digest(client.get_bytes(f["remote"])) == digest(content[rel])
        on_server = {v.path for v in client.iter_files(prefix)}
    # A file the report calls failed is not on the server, unless its commit's answer was lost
    # (then the report says it may be committed).
    assert {f["remote"] for f in committed} <= on_server <= {f["remote"] for f in committed} | unsure


def _tree_result(doc: dict) -> tuple[dict, list]:
    # What was sent differs by design: the second run finds every chunk already stored.
    stats = {k: v for k, v in doc["stats"].items() if k not in ("seconds", "bytes_sent", "chunks_sent")}
    files = sorted((f["remote"].split("/", 2)[2], f["status"], f["version"], f["size"], f["bytes_read"],
                    f["chunks_total"]) for f in doc["files"])
    return stats, files


def test_jobs_one_gives_the_same_result(cli, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(300):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}.txt").write_bytes(os.urandom(10 + i * 7))
    write_random(src / "big" / "a.bin", 3 * MIB)
    write_random(src / "big" / "b.bin", MIB + 1)
    one = cli.json("put", "--jobs", "1", str(src), prefix + "one/")
    many = cli.json("put", "--jobs", "8", "--no-cache", str(src), prefix + "many/")
    assert one["ok"] and many["ok"]
    assert _tree_result(one) == _tree_result(many)
    assert one["stats"]["files_uploaded"] == 302
    assert one["stats"]["chunks_sent"] == one["stats"]["chunks_total"] and many["stats"]["chunks_sent"] == 0
    restored = tmp_path / "restored"
    cli("get", prefix + "one/", str(restored))
    for path in src.rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(src)).read_bytes() == path.read_bytes()


def test_a_symlink_named_on_the_command_line_is_followed(cli, prefix, tmp_path):
    target = tmp_path / "real.txt"
    target.write_bytes(b"the real content")
    (tmp_path / "link.txt").symlink_to(target)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_bytes(b"a")
    (folder / "inner-link").symlink_to(target)  # inside the folder: skipped, as without the flag
    (tmp_path / "link-dir").symlink_to(folder)

    doc = cli.json("put", str(tmp_path / "link.txt"), prefix + "file")
    assert doc["kind"] == "file" and doc["files"][0]["status"] == "uploaded"
    assert cli("get", prefix + "file", "-").stdout_bytes == b"the real content"

    tree = cli.json("put", str(tmp_path / "link-dir"), prefix + "dir")
    assert tree["kind"] == "tree" and [f["remote"] for f in tree["files"]] == [prefix + "dir/sub/a.txt"]
    assert tree["stats"]["symlinks_skipped"] == 1
