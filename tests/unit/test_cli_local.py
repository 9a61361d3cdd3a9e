"""CLI pieces that need no server: time parsing, excludes, the tree walk, the state cache,
connection settings, error mapping, restore planning, help texts, certs/keys commands."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from pathlib import Path

import pytest
from cli_helpers import Cli, isolated_env

from cas import errors as cas_errors
from cli import errors
from cli.errors import UsageError
from cli.settings import DEFAULT_SERVER, resolve
from cli.statecache import Entry, FileState, StateCache, observe
from cli.timeparse import parse_time_ms
from cli.tree import Excludes, plan_restore, remote_prefix, walk
from proto import stratus_pb2 as pb


@pytest.fixture
def local_cli(tmp_path: Path) -> Cli:
    return Cli("127.0.0.1:1", tmp_path, isolated_env(tmp_path))


# ---- time -------------------------------------------------------------------------------------


def test_parse_time():
    now = 1_700_000_000_000
    assert parse_time_ms("2h", now) == now - 2 * 3600_000
    assert parse_time_ms("90m", now) == now - 90 * 60_000
    assert parse_time_ms("3d", now) == now - 3 * 86400_000
    assert parse_time_ms("1h30m", now) == now - 90 * 60_000
    assert parse_time_ms("1.5h", now) == now - 90 * 60_000
    assert parse_time_ms("now", now) == now
    assert parse_time_ms("@1700000000.5") == 1_700_000_000_500
    assert parse_time_ms("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T23:13:20.250+01:00") == 1_700_000_000_250
    local = dt.datetime(2024, 5, 1, 12, 0).astimezone()
    assert parse_time_ms("2024-05-01T12:00") == int(local.timestamp() * 1000)
    assert parse_time_ms("2024-05-01") == int(dt.datetime(2024, 5, 1).astimezone().timestamp() * 1000)
    for bad in ("yesterday", "2h ago", "", "12x", "@soon"):
        with pytest.raises(UsageError):
            parse_time_ms(bad, now)


# ---- excludes and the walk ---------------------------------------------------------------------


@pytest.mark.parametrize("pattern, path, is_dir, excluded", [
    ("*.log", "a.log", False, True),
    ("*.log", "deep/down/a.log", False, True),
    ("*.log", "a.log.txt", False, False),
    ("node_modules", "x/node_modules", True, True),
    ("build/", "build", True, True),
    ("build/", "build", False, False),  # trailing slash: folders only
    ("/dist", "dist", True, True),
    ("/dist", "sub/dist", True, False),  # anchored at the root
    ("docs/*.md", "docs/a.md", False, True),
    ("docs/*.md", "docs/sub/a.md", False, False),  # * does not cross '/'
    ("docs/**/*.png", "docs/a/b/c.png", False, True),
    ("docs/**/*.png", "docs/c.png", False, True),
    ("f[0-9].txt", "f7.txt", False, True),
    ("f[!0-9].txt", "f7.txt", False, False),
    ("?.txt", "ab.txt", False, False),
    ("# comment", "# comment", False, False),
])
def test_exclude_patterns(pattern, path, is_dir, excluded):
    assert Excludes([pattern]).match(path, is_dir) is excluded


def test_excludes_file_checks_parent_folders():
    ex = Excludes(["cache/", "*.tmp"])
    assert ex.excludes_file("a/cache/b.txt") and ex.excludes_file("x.tmp") and not ex.excludes_file("a/b.txt")
    assert not Excludes([]).excludes_file("anything")


def test_walk_symlinks_loops_and_special_files(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("f")
    (root / "top.txt").write_text("t")
    os.symlink("..", root / "a" / "b" / "up")
    os.symlink("top.txt", root / "link")
    os.mkfifo(root / "pipe")
    plain = walk(root, Excludes())
    assert [f.rel for f in plain.files] == ["a/b/f.txt", "top.txt"]
    assert plain.symlinks_skipped == 2 and not any(s.error for s in plain.skipped)
    followed = walk(root, Excludes(), follow_symlinks=True)
    assert [f.rel for f in followed.files] == ["a/b/f.txt", "link", "top.txt"]
    assert any("loop" in s.reason for s in followed.skipped)
    assert any("FIFO" in s.reason for s in followed.skipped)
    assert all(f.state.local_path == os.path.abspath(f.path) for f in followed.files)


def test_remote_prefix_and_restore_plan(tmp_path):
    assert remote_prefix("docs") == "docs/" and remote_prefix("docs/") == "docs/"
    assert remote_prefix("/") == "" and remote_prefix("") == "" and remote_prefix(".") == ""
    files = [pb.VersionInfo(path="p/a/b.txt", version=1), pb.VersionInfo(path="p/c", version=2)]
    plan = plan_restore(files, "p/", tmp_path)
    assert [i.dest for i in plan.items] == [tmp_path / "a" / "b.txt", tmp_path / "c"]
    clash = plan_restore([pb.VersionInfo(path="p/a"), pb.VersionInfo(path="p/a/b")], "p/", tmp_path)
    assert [c[0] for c in clash.conflicts] == ["p/a"] and len(clash.items) == 1
    for hostile in ("p/../../etc/passwd", "q/outside", "p//x", "p/a/./b"):
        with pytest.raises(cas_errors.IntegrityError):
            plan_restore([pb.VersionInfo(path=hostile)], "p/", tmp_path)


# ---- state cache -------------------------------------------------------------------------------


def test_state_cache_round_trip_prefix_and_racy(tmp_path):
    cache = StateCache(tmp_path / "cache")
    f = tmp_path / "f"
    f.write_text("x")
    _, fresh = observe(f)
    assert not fresh.trusted  # written a moment ago: a same-tick write could hide
    t = 10**18 + 123  # a timestamp with nanoseconds: the file system keeps fine-grained times
    old = FileState(str(f), 1, t, t, 5, 6, t + 10**9)
    assert old.trusted
    assert not FileState(str(f), 1, t, t, 5, 6, t + 10**7).trusted  # 10 ms: could be the same tick
    whole = 10**18  # whole seconds: a coarse file system, so a wider margin
    assert not FileState(str(f), 1, whole, whole, 5, 6, whole + 10**9).trusted
    assert FileState(str(f), 1, whole, whole, 5, 6, whole + 3 * 10**9).trusted
    entries = [Entry(p, old, 3, b"d" * 32) for p in ("a/1", "a/2", "a0", "b/1")]
    cache.put_many("srv", "ns", entries)
    assert sorted(cache.under("srv", "ns", "a/")) == ["a/1", "a/2"]
    assert len(cache.under("srv", "ns", "")) == 4 and cache.under("other", "ns", "") == {}
    got = cache.get("srv", "ns", "a/1")
    assert got == entries[0]
    assert got.matches(old, 3, b"d" * 32)
    assert not got.matches(old, 4, b"d" * 32)  # the head moved
    changed = FileState(str(f), 1, t, t + 1, 5, 6, t + 10**9)
    assert not got.matches(changed, 3, b"d" * 32)  # ctime differs
    cache.forget("srv", "ns", ["a/1"])
    assert cache.get("srv", "ns", "a/1") is None
    cache.close()


def test_state_cache_survives_damage(tmp_path):
    folder = tmp_path / "cache"
    cache = StateCache(folder)
    path = cache.path
    cache.close()
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    again = StateCache(folder)
    assert again.under("s", "n", "") == {}
    again.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=999")
    assert StateCache(folder).under("s", "n", "") == {}


# ---- settings ----------------------------------------------------------------------------------


def test_settings_precedence(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('server = "file:1"\ntls_dir = "/from/file"\nclient_name = "alice"\n')
    env = {"STRATUS_CLIENT_CONFIG": str(config)}
    s = resolve(environ=env)
    assert (s.server, str(s.tls_dir), s.insecure, s.client_name) == ("file:1", "/from/file", False, "alice")
    env |= {"STRATUS_SERVER": "env:2", "STRATUS_INSECURE": "1"}
    s = resolve(environ=env)
    assert (s.server, s.tls_dir, s.insecure) == ("env:2", None, True)
    s = resolve(server="flag:3", tls_dir="/from/flag", environ=env)
    assert (s.server, str(s.tls_dir), s.insecure) == ("flag:3", "/from/flag", False)
    config.write_text("[client]\ninsecure = true\n")
    s = resolve(environ={"STRATUS_CLIENT_CONFIG": str(config), "STRATUS_TLS_DIR": "/env/tls"})
    assert str(s.tls_dir) == "/env/tls" and not s.insecure
    assert resolve(environ={"STRATUS_CLIENT_CONFIG": str(config)}).server == DEFAULT_SERVER
    config.write_text("sever = 'typo:1'\n")
    with pytest.raises(UsageError, match="unknown setting"):
        resolve(environ={"STRATUS_CLIENT_CONFIG": str(config)})
    with pytest.raises(UsageError, match="boolean"):
        resolve(environ={"STRATUS_INSECURE": "maybe", "STRATUS_CLIENT_CONFIG": str(tmp_path / "none")})


def test_missing_tls_material_says_what_to_do(local_cli, tmp_path, monkeypatch):
    result = local_cli("ls", code=errors.USAGE, connect=False)
    line = result.stderr.strip()
    assert "stratus certs init" in line and "--insecure" in line and "\n" not in line
    # `certs init` with no DIR writes the default TLS dir, which the client then finds on its own
    made = local_cli.json("certs", "init")
    assert made["directory"].startswith(str(tmp_path / "config-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    s = resolve(environ={"STRATUS_CLIENT_CONFIG": str(tmp_path / "none")})
    assert str(s.tls_dir) == made["directory"] and not s.insecure


# ---- errors, help, usage -------------------------------------------------------------------------


@pytest.mark.parametrize("exc, code", [
    (cas_errors.NotFoundError("x"), errors.NOT_FOUND),
    (cas_errors.ChunkNotFoundError(b"\0" * 32), errors.NOT_FOUND),
    (cas_errors.VersionConflictError("p", 1, 2), errors.CONFLICT),
    (cas_errors.IntegrityError("x"), errors.INTEGRITY),
    (cas_errors.CorruptChunkError(b"\0" * 32), errors.INTEGRITY),
    (cas_errors.SignatureError("x"), errors.INTEGRITY),
    (cas_errors.InvalidPathError("x"), errors.USAGE),
    (UsageError("x"), errors.USAGE),
    (cas_errors.ServerUnavailableError("x"), errors.ERROR),
    (cas_errors.InvalidInputError("x"), errors.ERROR),
    (FileNotFoundError(2, "No such file or directory", "f"), errors.NOT_FOUND),
    (PermissionError(13, "Permission denied", "f"), errors.ERROR),
    (RuntimeError("bug"), errors.ERROR),
])
def test_exit_code_mapping(exc, code):
    assert errors.exit_code(exc) == code
    assert "\n" not in errors.describe(exc)


def test_internal_errors_are_one_line():
    assert errors.describe(RuntimeError("multi\nline")).startswith("internal error: RuntimeError: multi line")


def test_help_has_examples_and_usage_errors_exit_2(local_cli):
    top = local_cli("--help", connect=False).stdout
    assert "Examples" in top and "Exit codes" in top
    for command in ("put", "get", "ls", "log", "stat", "rm", "diff", "watch", "info", "serve", "demo",
                    "certs init", "keys init"):
        out = local_cli(*command.split(), "--help", connect=False).stdout
        assert "Examples" in out and "stratus " in out, command
    assert local_cli("put", connect=False, code=2).exit_code == 2
    assert local_cli("no-such-command", connect=False, code=2).exit_code == 2
    assert local_cli("--json", "get", "--version", "1", "--as-of", "2h", "a", "b", code=2).exit_code == 2


def test_certs_and_keys_refuse_to_overwrite(local_cli, tmp_path):
    tls = tmp_path / "tls"
    doc = local_cli.json("certs", "init", str(tls), "--server-name", "vault.example.com", "--client", "alice")
    assert Path(doc["ca"]).is_file() and "alice" in doc["clients"] and (tls / "client.pem").is_file()
    assert "--force" in local_cli("certs", "init", str(tls), code=errors.USAGE).stderr
    assert "stratus serve" in local_cli("certs", "init", "--force", str(tls)).stdout
    key = tmp_path / "k" / "signing"
    local_cli("keys", "init", str(key))
    assert key.stat().st_mode & 0o777 == 0o600 and len(Path(f"{key}.pub").read_text().strip()) == 64
    before = key.read_bytes()
    assert "--force" in local_cli("keys", "init", str(key), code=errors.USAGE).stderr
    assert key.read_bytes() == before
    local_cli("keys", "init", "--force", str(key))
    assert key.read_bytes() != before


def test_observe_takes_time_before_stat(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    before = time.time_ns()
    st, state = observe(f)
    assert before <= state.observed_ns <= time.time_ns() and state.size == st.st_size == 1
