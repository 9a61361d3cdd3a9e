"""``stratus forget`` through the real CLI against a real server: the --dry-run --json document,
the table, exit codes, and a real process."""

from __future__ import annotations

import json

from cli_helpers import run_process

from cli.errors import USAGE

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


def put_versions(cli, path: str, count: int) -> None:
    for n in range(count):
        cli("put", "-", path, input=b"version %d" % n)


def test_dry_run_json_lists_what_goes_and_why_the_rest_stays(cli, prefix):
    put_versions(cli, prefix + "a.txt", 4)
    put_versions(cli, prefix + "b.txt", 2)
    cli("rm", prefix + "b.txt")
    doc = cli.json("forget", prefix, "--keep-last", "2", "--keep-within", "1y2m3d4h", "--dry-run")
    assert doc["ok"] is True and doc["dry_run"] is True and doc["prefix"] == prefix
    assert doc["policy"] == {"keep_last": 2, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
                             "keep_yearly": 0, "keep_within": "1y2m3d4h",
                             "description": "keep 2 last versions and all within 1y2m3d4h of the newest"}
    a, b = doc["paths"]
    assert a["path"] == prefix + "a.txt" and a["removed"] == 0 and a["error"] is None and a["exit_code"] == 0
    # everything is within 1y2m3d4h of the newest version: keep-within keeps it all
    assert [v["version"] for v in a["keep"]] == [4, 3, 2, 1] and a["remove"] == []
    assert a["keep"][0]["reasons"] == ["head", "within 1y2m3d4h", "last version"]
    assert a["keep"][2]["reasons"] == ["within 1y2m3d4h"]
    assert set(a["keep"][0]) == {"version", "created", "created_ms", "size", "deleted", "reasons"}
    assert b["keep"][0] == {**b["keep"][0], "version": 3, "deleted": True, "reasons": ["head"]}
    assert doc["summary"] == {"paths": 2, "kept": 7, "removed": 0, "would_remove": 0, "failed": 0}

    doc = cli.json("forget", prefix, "--keep-last", "1", "--dry-run")
    a, b = doc["paths"]
    assert [v["version"] for v in a["remove"]] == [3, 2, 1]
    assert set(a["remove"][0]) == {"version", "created", "created_ms", "size", "deleted"}
    assert [v["version"] for v in b["remove"]] == [1]
    assert doc["summary"] == {"paths": 2, "kept": 3, "removed": 0, "would_remove": 4, "failed": 0}
    assert [v["version"] for v in cli.json("log", prefix + "a.txt")["versions"]] == [4, 3, 2, 1]


def test_forget_removes_and_renders_a_table(cli, prefix):
    put_versions(cli, prefix + "c.txt", 3)
    out = cli("forget", prefix, "--keep-last", "1", "--dry-run").stdout
    assert "would remove" in out and "head, last version" in out and "nothing was removed" in out
    out = cli("forget", prefix, "--keep-last", "1").stdout
    assert "removed 2 versions, kept 1, in 1 paths" in out
    assert [v["version"] for v in cli.json("log", prefix + "c.txt")["versions"]] == [3]
    # --json after the command works as the global one does
    doc = json.loads(cli("forget", prefix, "--keep-last", "unlimited", "--json").stdout)
    assert doc["summary"]["removed"] == 0 and doc["policy"]["keep_last"] == -1
    lines = cli("--json", "watch", prefix, "--since", "0", "--count", "5").stdout.splitlines()
    assert [(e["kind"], e["version"]) for e in map(json.loads, lines)] == [
        ("put", 1), ("put", 2), ("put", 3), ("forgotten", 1), ("forgotten", 2)]


def test_bad_or_missing_rules_are_usage_errors(cli, prefix):
    put_versions(cli, prefix + "d", 2)
    for args in ([], ["--keep-daily", "-2"], ["--keep-within", "2w"], ["--keep-last", "many"]):
        result = cli("--json", "forget", prefix, *args, code=USAGE)
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and doc["error"]["kind"] == "usage"
    assert [v["version"] for v in cli.json("log", prefix + "d")["versions"]] == [2, 1]


def test_forget_as_a_real_process(cli, server, prefix):
    put_versions(cli, prefix + "p", 3)
    args = ["--server", server.address, "--insecure", "--json", "forget", prefix, "--keep-last", "2"]
    proc = run_process(args, cli.env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["summary"]["removed"] == 1 and doc["paths"][0]["remove"][0]["version"] == 1
    proc = run_process(["--server", server.address, "--insecure", "log", prefix + "p"], cli.env)
    assert proc.returncode == 0
