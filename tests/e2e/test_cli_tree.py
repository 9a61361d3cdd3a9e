"""Directory trees through the real CLI: incremental pushes that read only what changed, and
point-in-time restores that reproduce a tree byte for byte, with modes and mtimes."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from cli_helpers import MIB, write_random

from cas.digest import digest

SMALL_FILES = 2000
LARGE_SIZES = (3 * MIB, 4 * MIB + 123, 5 * MIB + 7)
RACY_MARGIN_S = 0.25  # the state cache trusts a stat only when the file is older than this

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


def build_tree(root: Path) -> None:
    for i in range(SMALL_FILES):
        path = root / f"d{i % 20:02d}" / f"sub{i % 3}" / f"f{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64 + (i * 37) % 1500))
        if i % 7 == 0:
            os.chmod(path, 0o600)
        elif i % 11 == 0:
            os.chmod(path, 0o755)
        if i % 5 == 0:
            os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789 + i))
    for n, size in enumerate(LARGE_SIZES):
        write_random(root / "big" / f"large{n}.bin", size)
    (root / "empty.txt").write_bytes(b"")


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    state = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            state[path.relative_to(root).as_posix()] = (digest(path.read_bytes()), st.st_mode & 0o777, st.st_mtime_ns)
    return state


def test_incremental_push_and_point_in_time_restore(cli, prefix, tmp_path):
    src = tmp_path / "src"
    build_tree(src)
    first_state = snapshot(src)
    total = SMALL_FILES + len(LARGE_SIZES) + 1
    assert len(first_state) == total
    time.sleep(RACY_MARGIN_S)

    first = cli.json("put", str(src), prefix)
    s = first["stats"]
    assert first["ok"] and first["kind"] == "tree"
    assert s["files_scanned"] == total and s["files_uploaded"] == total and s["files_skipped_unchanged"] == 0
    assert s["bytes_read"] == sum((src / rel).stat().st_size for rel in first_state)
    assert s["files_failed"] == 0

    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)

    changed = {
        "d00/sub0/f0000.txt": os.urandom(100),  # other content, other size
        "d01/sub1/f0001.txt": os.urandom(64 + 37),  # other content, same size
        "d19/sub1/f1999.txt": b"",  # emptied
        "empty.txt": b"no longer empty",
    }
    for rel, data in changed.items():
        (src / rel).write_bytes(data)
    large = src / "big" / "large1.bin"
    with open(large, "r+b") as f:  # 4 KiB in the middle of a large file
        f.seek(2 * MIB)
        f.write(os.urandom(4096))

    second = cli.json("put", str(src), prefix)
    s = second["stats"]
    assert s["files_scanned"] == total
    assert s["files_skipped_unchanged"] == total - 5
    assert s["files_uploaded"] == 5
    assert s["bytes_read"] == sum(len(d) for d in changed.values()) + large.stat().st_size
    # only new chunks travel: the large file's changed chunk(s) and the small files, not 4 MiB
    assert 0 < s["bytes_sent"] < 600 * 1024
    uploaded = sorted(f["remote"] for f in second["files"] if f["status"] == "uploaded")
    assert uploaded == sorted(prefix + rel for rel in [*changed, "big/large1.bin"])

    third = cli.json("put", str(src), prefix)  # nothing changed since: nothing read, nothing sent
    assert third["stats"]["files_uploaded"] == 0 and third["stats"]["bytes_sent"] == 0

    restored = tmp_path / "restored"
    doc = cli.json("get", "--as-of", between, prefix, str(restored))
    assert doc["kind"] == "tree" and doc["stats"]["files_listed"] == total and doc["stats"]["files_failed"] == 0
    assert snapshot(restored) == first_state

    # a restore into the newest state reuses the local copy: only the changed files are fetched
    doc = cli.json("get", prefix, str(restored))
    assert doc["stats"]["files_downloaded"] == 5
    assert snapshot(restored) == snapshot(src)


def test_excludes_symlinks_empty_files_and_delete(cli, prefix, tmp_path):
    src = tmp_path / "src"
    (src / "keep" / "deep").mkdir(parents=True)
    (src / "node_modules" / "pkg").mkdir(parents=True)
    (src / "keep" / "a.txt").write_text("a")
    (src / "keep" / "deep" / "b.log").write_text("b")
    (src / "keep" / "empty").write_bytes(b"")
    (src / "node_modules" / "pkg" / "index.js").write_text("js")
    (src / "build").mkdir()
    (src / "build" / "out.o").write_text("o")
    os.symlink("keep/a.txt", src / "link-to-file")
    os.symlink("keep", src / "link-to-dir")
    os.symlink("missing", src / "broken")
    os.mkfifo(src / "pipe")
    time.sleep(RACY_MARGIN_S)

    doc = cli.json("put", "-x", "node_modules", "-x", "*.log", "-x", "/build/", str(src), prefix)
    s = doc["stats"]
    assert s["files_scanned"] == 2 and s["files_uploaded"] == 2
    assert s["files_excluded"] == 3 and s["symlinks_skipped"] == 3 and s["other_skipped"] == 1
    assert any("use --follow-symlinks" in n for n in doc["notes"])
    listing = cli.json("ls", "--all", prefix)
    assert sorted(f["path"] for f in listing["files"]) == [prefix + "keep/a.txt", prefix + "keep/empty"]
    empty = next(f for f in listing["files"] if f["path"].endswith("empty"))
    assert empty["size"] == 0 and empty["chunk_count"] == 0

    other = prefix.rstrip("/") + "-followed/"
    followed = cli.json("put", "--follow-symlinks", "-x", "node_modules", str(src), other)
    paths = {f["remote"] for f in followed["files"]}
    assert other + "link-to-file" in paths and other + "link-to-dir/a.txt" in paths
    assert followed["stats"]["symlinks_skipped"] == 1  # the broken one

    (src / "keep" / "a.txt").unlink()
    doc = cli.json("put", "--delete", "-x", "node_modules", "-x", "*.log", "-x", "/build/", str(src), prefix)
    assert doc["stats"]["files_deleted"] == 1
    assert [f["remote"] for f in doc["files"] if f["status"] == "deleted"] == [prefix + "keep/a.txt"]
    listing = cli.json("ls", "--all", prefix)
    assert [f["path"] for f in listing["files"]] == [prefix + "keep/empty"]
    assert cli.json("stat", "--version", "1", prefix + "keep/a.txt")["size"] == 1  # history is kept

    restored = tmp_path / "restored"
    cli("get", prefix + "keep", str(restored))
    assert (restored / "empty").read_bytes() == b"" and not (restored / "a.txt").exists()


def test_unicode_names_and_unstorable_names(cli, prefix, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    decomposed = "cafe\u0301.txt"  # NFD, as macOS writes it; stored as NFC
    (src / decomposed).write_text("coffee")
    doc = cli.json("put", "--delete", str(src), prefix)
    assert [f["remote"] for f in doc["files"]] == [prefix + "caf\u00e9.txt"]
    again = cli.json("put", "--delete", "--no-cache", str(src), prefix)
    assert again["stats"]["files_deleted"] == 0  # the NFD local name is the NFC remote one
    (src / decomposed).unlink()
    os.close(os.open(os.path.join(os.fsencode(src), b"bad\xffname"), os.O_CREAT | os.O_WRONLY, 0o644))
    failed = cli.json("put", str(src), prefix, code=1)
    assert failed["ok"] is False and failed["stats"]["files_failed"] == 1
    assert "name cannot be stored" in failed["files"][0]["error"]


def test_tree_options_that_do_not_apply(cli, prefix, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    result = cli("put", "--if-version", "1", str(tmp_path / "d"), prefix, code=2)
    assert "single file" in result.stderr
    cli("put", str(tmp_path / "d"), prefix)
    result = cli("get", "--version", "1", prefix, str(tmp_path / "out"), code=2)
    assert "--as-of" in result.stderr
