"""Every client command through the real CLI (typer's CliRunner) against a real server: output,
``--json`` documents, exit codes."""

from __future__ import annotations

import json
import os
import time

from cli_helpers import MIB, Cli, isolated_env, write_random
from stored_chunks import flip_chunk

from cas.chunker import chunk_file
from cas.digest import digest
from cli.errors import CONFLICT, INTEGRITY, NOT_FOUND, USAGE

RACY_MARGIN_S = 0.25

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("stratus: error: ")
    return lines[0]


def test_put_get_file_delta_and_cache(cli, prefix, tmp_path):
    src = write_random(tmp_path / "data.bin", 3 * MIB + 5)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_700_000_000_000_000_000, 1_700_000_000_987_654_321))
    time.sleep(RACY_MARGIN_S)
    remote = prefix + "data.bin"

    doc = cli.json("put", str(src), remote)
    assert doc["ok"] and doc["kind"] == "file"
    assert doc["files"][0]["status"] == "uploaded" and doc["files"][0]["version"] == 1
    assert doc["stats"]["bytes_read"] == 3 * MIB + 5 and doc["stats"]["bytes_sent"] > 3 * MIB

    again = cli.json("put", str(src), remote)  # unchanged: not even read
    assert again["stats"]["files_skipped_unchanged"] == 1 and again["stats"]["bytes_read"] == 0
    assert cli("put", str(src), remote).stdout.startswith("unchanged:")
    forced = cli.json("put", "--no-cache", str(src), remote)  # read, but the server has it: no new version
    assert forced["files"][0]["status"] == "unchanged" and forced["stats"]["bytes_read"] == 3 * MIB + 5

    with open(src, "r+b") as f:
        f.seek(MIB + 1000)
        f.write(os.urandom(4096))
    v2 = cli.json("put", str(src), remote)
    assert v2["files"][0]["version"] == 2 and 0 < v2["stats"]["bytes_sent"] < 600 * 1024
    assert "uploaded" in cli("put", "--no-cache", str(src), prefix + "copy.bin").stdout

    dest = tmp_path / "out" / "copy.bin"
    got = cli.json("get", remote, str(dest))
    assert got["files"][0]["status"] == "downloaded"
    assert dest.read_bytes() == src.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o640 and dest.stat().st_mtime_ns == src.stat().st_mtime_ns

    old = cli.json("get", "--version", "1", remote, str(dest))  # delta: reuses what the local copy has
    f = old["files"][0]
    # A 4 KiB edit changes the chunks it overlaps, and the re-cut can spill into one or two more
    # before content-defined cuts fall back in step: at most 4 of the ~48 chunks.
    assert f["version"] == 1 and f["chunks_reused"] > 0 and f["chunks_fetched"] <= 4
    assert digest(dest.read_bytes()) == bytes.fromhex(cli.json("stat", "--version", "1", remote)["file_digest"])

    into_dir = cli.json("get", remote, str(tmp_path / "out"))  # a folder gets the remote name
    assert into_dir["local"] == str(tmp_path / "out" / "data.bin")
    assert (tmp_path / "out" / "data.bin").read_bytes() == src.read_bytes()

    to_stdout = cli("get", remote, "-")
    assert to_stdout.stdout_bytes == src.read_bytes()
    assert "downloaded" in cli("get", "--version", "1", remote, str(tmp_path / "v1.bin")).stdout


def test_put_from_stdin_and_empty_file(cli, prefix, tmp_path):
    cli("put", "-", prefix + "stdin.txt", input=b"hello from a pipe\n")
    assert cli("get", prefix + "stdin.txt", "-").stdout == "hello from a pipe\n"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    doc = cli.json("put", str(empty), prefix + "empty")
    assert doc["files"][0]["size"] == 0
    (tmp_path / "empty").write_bytes(b"stale")
    cli("get", prefix + "empty", str(tmp_path / "empty"))
    assert (tmp_path / "empty").read_bytes() == b""


def test_conflict_and_not_found_exit_codes(cli, prefix, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("one")
    remote = prefix + "notes.txt"
    cli("put", "--if-version", "0", str(src), remote)
    src.write_text("two")
    result = cli("put", "--if-version", "0", str(src), remote, code=CONFLICT)
    assert "head is version 1" in one_error_line(result.stderr)
    doc = cli.json("put", "--if-version", "7", str(src), remote, code=CONFLICT)
    assert doc["ok"] is False and doc["error"]["kind"] == "conflict" and doc["error"]["exit_code"] == CONFLICT
    cli("put", "--if-version", "1", str(src), remote)
    one_error_line(cli("rm", "--if-version", "1", remote, code=CONFLICT).stderr)
    tomb = cli.json("rm", "--if-version", "2", remote)
    assert tomb["deleted"] and tomb["version"] == 3
    assert "deleted" in one_error_line(cli("get", remote, str(tmp_path / "x"), code=NOT_FOUND).stderr)
    one_error_line(cli("rm", remote, code=NOT_FOUND).stderr)
    one_error_line(cli("stat", prefix + "missing", code=NOT_FOUND).stderr)
    one_error_line(cli("log", prefix + "missing", code=NOT_FOUND).stderr)
    one_error_line(cli("diff", prefix + "missing", code=NOT_FOUND).stderr)
    one_error_line(cli("get", prefix + "missing", str(tmp_path / "y"), code=NOT_FOUND).stderr)
    one_error_line(cli("put", str(tmp_path / "no-such-file"), prefix + "z", code=NOT_FOUND).stderr)
    one_error_line(cli("put", str(src), "../escape", code=USAGE).stderr)
    one_error_line(cli("get", "--as-of", "last tuesday", remote, str(tmp_path / "z"), code=USAGE).stderr)
    # the history survives the delete
    assert cli("get", "--version", "2", remote, "-").stdout == "two"


def test_ls_pages_log_and_stat(cli, prefix, tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}.txt").write_text(f"file {i}")
    cli("put", str(tree), prefix)
    seen, token, pages = [], "", 0
    while True:
        args = ["ls", "--limit", "2", prefix] + (["--page-token", token] if token else [])
        page = cli.json(*args)
        seen += [f["path"] for f in page["files"]]
        pages += 1
        token = page["next_page_token"]
        if not token:
            break
    assert seen == [f"{prefix}f{i}.txt" for i in range(5)] and pages == 3
    assert "next page token:" in cli("ls", "--limit", "2", prefix).stdout
    assert [f["path"] for f in cli.json("ls", "--all", "--limit", "2", prefix)["files"]] == seen

    (tree / "f0.txt").write_text("file 0, second version")
    cli("put", str(tree / "f0.txt"), prefix + "f0.txt")
    cli("rm", prefix + "f1.txt")
    assert len(cli.json("ls", "--all", prefix)["files"]) == 4
    assert len(cli.json("ls", "--all", "--deleted", prefix)["files"]) == 5
    log = cli.json("log", prefix + "f0.txt")
    assert [v["version"] for v in log["versions"]] == [2, 1]
    assert log["versions"][0]["new_chunks"] == 1 and log["versions"][0]["identity"] == "anonymous"
    human = cli("log", prefix + "f1.txt").stdout
    assert "deleted" in human and "1 new / 0 shared" in human
    stat = cli.json("stat", "--version", "1", prefix + "f0.txt")
    assert stat["size"] == len("file 0") and stat["signed"] is False and stat["mode"] == "0644"
    assert "blake3:" in cli("stat", prefix + "f0.txt").stdout


def test_diff_ranges_and_text(cli, prefix, tmp_path):
    big = write_random(tmp_path / "big", 2 * MIB)
    cli("put", str(big), prefix + "big")
    with open(big, "r+b") as f:
        f.seek(MIB)
        f.write(b"x" * 4096)
    cli("put", str(big), prefix + "big")
    doc = cli.json("diff", prefix + "big")
    assert doc["from"]["version"] == 1 and doc["to"]["version"] == 2
    assert len(doc["changed"]) >= 1 and doc["new_chunks"] >= 1 and doc["shared_chunks"] > 10
    start = doc["changed"][0]["offset"]
    assert start <= MIB < start + doc["changed"][0]["length"]
    assert "changed:" in cli("diff", prefix + "big", "1", "2").stdout
    assert cli.json("diff", "--text", prefix + "big")["unified_diff"] == "binary content differs (no text diff)"
    one_error_line(cli("diff", "--text", "--max-bytes", "1000", prefix + "big", code=USAGE).stderr)

    text = tmp_path / "poem.txt"
    text.write_text("roses are red\nviolets are blue\n")
    cli("put", str(text), prefix + "poem.txt")
    text.write_text("roses are red\nviolets are violet\nsugar is sweet\n")
    cli("put", str(text), prefix + "poem.txt")
    unified = cli.json("diff", "--text", prefix + "poem.txt")["unified_diff"]
    assert "-violets are blue\n" in unified and "+violets are violet\n" in unified and "+sugar is sweet\n" in unified
    assert "+sugar is sweet" in cli("diff", "--text", prefix + "poem.txt").stdout


def test_watch_since_and_resume(cli, prefix, tmp_path):
    for i in range(3):
        cli("put", "-", f"{prefix}w{i}", input=f"event {i}".encode())
    lines = cli("--json", "watch", "--since", "0", "--count", "3", prefix).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["path"] for e in events] == [f"{prefix}w{i}" for i in range(3)]
    assert all(e["kind"] == "put" and e["cursor"] for e in events)
    resumed = cli("--json", "watch", "--since", events[0]["cursor"], "--count", "2", prefix).stdout.splitlines()
    assert [json.loads(line)["path"] for line in resumed] == [f"{prefix}w1", f"{prefix}w2"]
    human = cli("watch", "--since", events[1]["cursor"], "--count", "1", prefix).stdout
    assert f"{prefix}w2" in human and f"cursor={events[2]['cursor']}" in human


def test_info_statistics(cli, prefix, tmp_path):
    src = write_random(tmp_path / "x", MIB)
    cli("put", str(src), prefix + "a")
    doc = cli.json("info")
    s = doc["stats"]
    assert doc["namespace"] == "default" and doc["chunking"]["avg_size"] > 0
    assert s["logical_bytes"] >= MIB and s["stored_bytes"] > 0
    assert s["dedup_ratio"] == s["logical_bytes"] / s["unique_bytes"]
    assert s["dedup_compression_ratio"] == s["logical_bytes"] / s["stored_bytes"]
    assert "dedup ratio" in cli("info").stdout


def test_info_dedup_ratio_counts_duplicate_content(fresh_server, tmp_path):
    """On an empty store, n copies of the same bytes under n paths give a dedup ratio of exactly n."""
    cli = Cli(fresh_server.address, tmp_path, isolated_env(tmp_path))
    src = write_random(tmp_path / "x", 3 * MIB)
    cli("put", str(src), "dup/a")
    one = cli.json("info")["stats"]
    assert (one["logical_bytes"], one["unique_bytes"], one["dedup_ratio"]) == (3 * MIB, 3 * MIB, 1.0)
    cli("put", "--no-cache", str(src), "dup/b")  # same content, other path: deduplicated
    cli("put", "--no-cache", str(src), "dup/c/copy")
    three = cli.json("info")["stats"]
    assert (three["logical_bytes"], three["unique_bytes"], three["chunk_count"]) == (
        9 * MIB, 3 * MIB, one["chunk_count"])
    assert three["dedup_ratio"] == 3.0
    assert three["stored_bytes"] == one["stored_bytes"]  # not a byte more on disk
    write_random(tmp_path / "y", MIB)  # new content: the ratio falls again
    cli("put", str(tmp_path / "y"), "dup/new")
    assert cli.json("info")["stats"]["dedup_ratio"] == 10 / 4


def test_signed_versions_and_verify_key(cli, prefix, tmp_path):
    key, other = tmp_path / "key", tmp_path / "other"
    made = cli.json("keys", "init", str(key))
    assert made["fingerprint"].startswith("ed25519:") and key.stat().st_mode & 0o777 == 0o600
    cli("keys", "init", str(other))
    src = tmp_path / "report.txt"
    src.write_text("quarterly numbers")
    cli("put", "--sign", str(key), str(src), prefix + "signed.txt")
    cli("put", str(src), prefix + "unsigned.txt")
    assert cli.json("stat", prefix + "signed.txt")["signer"] == made["fingerprint"]
    cli("get", "--verify-key", f"{key}.pub", prefix + "signed.txt", str(tmp_path / "ok.txt"))
    assert (tmp_path / "ok.txt").read_text() == "quarterly numbers"
    bad = cli("get", "--verify-key", f"{other}.pub", prefix + "signed.txt", str(tmp_path / "bad.txt"), code=INTEGRITY)
    assert "signed by" in one_error_line(bad.stderr) and not (tmp_path / "bad.txt").exists()
    cli("get", "--verify-key", made["public_key_hex"], prefix + "unsigned.txt", str(tmp_path / "u"), code=INTEGRITY)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a")
    cli("put", "--sign", str(key), str(tree), prefix + "tree")
    doc = cli.json("get", "--verify-key", f"{key}.pub", prefix + "tree", str(tmp_path / "tree-out"))
    assert doc["stats"]["files_downloaded"] == 1


def test_corrupt_chunk_on_server_exits_5(cli, server, prefix, tmp_path):
    src = write_random(tmp_path / "victim", 600 * 1024)
    cli("put", str(src), prefix + "victim")
    first = next(iter(chunk_file(src)))
    flip_chunk(server.data_dir, digest(first.data), -50)
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious")
    result = cli("get", prefix + "victim", str(dest), code=INTEGRITY)
    assert "corrupt" in one_error_line(result.stderr)
    assert dest.read_bytes() == b"precious"
    doc = cli.json("get", prefix, str(tmp_path / "tree"), code=INTEGRITY)  # in a tree: that file fails
    assert doc["stats"]["files_failed"] == 1 and doc["files"][0]["exit_code"] == INTEGRITY


def test_unreachable_server_is_one_line(cli, tmp_path):
    cli.address = "127.0.0.1:1"
    result = cli("ls", code=1)
    assert "cannot reach the StratusVault server at 127.0.0.1:1" in one_error_line(result.stderr)
    doc = cli.json("info", code=1)
    assert doc["error"]["kind"] == "unavailable"


def test_unusable_state_cache_only_costs_reads(cli, prefix, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cli.env["STRATUS_CACHE_DIR"] = str(blocker)
    src = tmp_path / "f"
    src.write_text("data")
    first = cli("put", str(src), prefix + "f")
    assert "state cache unavailable" in first.stderr and "uploaded" in first.stdout
    again = cli.json("put", str(src), prefix + "f")
    assert again["files"][0]["status"] == "unchanged" and again["stats"]["bytes_read"] == 4
