"""The public client library (``cli.library.Client``) against real servers (Redis and Valkey).

Every public method, put/get of a file, a stream, bytes and a tree, per-file errors that do not
stop a tree, typed exceptions, ``as_of`` in its three forms, progress callbacks, settings from the
environment, caches shared with the CLI, and the README's backup script run as a real process.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from cli_helpers import MIB, Cli, isolated_env, write_random
from progress_helpers import Recorder
from server_fixtures import ROOT

from cli.library import (
    Changes,
    Client,
    DiffResult,
    Event,
    GetReport,
    NotFoundError,
    Page,
    ProgressEvent,
    ServerInfo,
    UploadReport,
    UsageError,
    Version,
    VersionConflictError,
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """A private state cache and config file, and no inherited STRATUS_* connection settings."""
    overrides = isolated_env(tmp_path)
    for name, value in overrides.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return overrides


@pytest.fixture
def vault(server, env) -> Client:
    with Client(server.address, insecure=True) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return f"lib-{uuid.uuid4().hex[:10]}/"


RACY_MARGIN_S = 0.25  # the state cache trusts a stat only when the file is older than this


def make_tree(root: Path) -> dict[str, bytes]:
    content = {f"small/{n:02d}.txt": f"small file {n}\n".encode() * (n + 1) for n in range(12)}
    content["big.bin"] = os.urandom(3 * MIB)
    content["empty"] = b""
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return content


# ---- the import path ---------------------------------------------------------------------------------


def test_importing_the_library_loads_no_terminal_code():
    code = ("import sys, cli.library, cli.push, cli.restore; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'rich')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves():
    import cli.library as library

    for name in library.__all__:
        assert getattr(library, name) is not None, name


# ---- put and get ----------------------------------------------------------------------------------------


def test_put_and_get_a_file(vault, prefix, tmp_path):
    src = write_random(tmp_path / "db.bin", 2 * MIB + 7)
    time.sleep(RACY_MARGIN_S)
    report = vault.put(src, prefix + "db.bin")
    assert isinstance(report, UploadReport) and report.kind == "file" and report.first_error is None
    (outcome,) = report.files
    assert outcome.status == "uploaded" and isinstance(outcome.version, Version)
    assert outcome.version.version == 1 and outcome.version.size == src.stat().st_size
    assert outcome.version.mode == src.stat().st_mode & 0o777 and len(outcome.version.file_digest) == 64

    again = vault.put(src, prefix + "db.bin")  # the state cache vouches for it: not even read
    assert again.files[0].status == "skipped" and again.files[0].version.version == 1
    assert vault.put(src, prefix, use_cache=False).files[0].remote == prefix + "db.bin"  # "dir/" + name

    dest = tmp_path / "restored.bin"
    got = vault.get(prefix + "db.bin", dest)
    assert isinstance(got, GetReport) and got.kind == "file" and got.first_error is None
    assert dest.read_bytes() == src.read_bytes()
    buffer = io.BytesIO()
    assert vault.get(prefix + "db.bin", buffer).kind == "stdout"
    assert buffer.getvalue() == src.read_bytes()


def test_put_a_stream_and_bytes(vault, prefix):
    data = os.urandom(300_000)
    streamed = vault.put(io.BytesIO(data), prefix + "stream.bin")
    assert streamed.kind == "stream" and streamed.files[0].version.size == len(data)
    from_bytes = vault.put(b"hello library", prefix + "hello.txt")
    assert from_bytes.files[0].status == "uploaded" and from_bytes.files[0].version.version == 1
    again = vault.put(b"hello library", prefix + "hello.txt").files[0]  # a new version (new mtime), no chunk sent
    assert again.version.version == 2 and again.chunks_sent == 0 and again.bytes_read == len(b"hello library")
    assert vault.read(prefix + "stream.bin") == data
    out = io.BytesIO()
    vault.get(prefix + "hello.txt", out)
    assert out.getvalue() == b"hello library"


def test_tree_round_trip_with_progress(vault, prefix, tmp_path):
    src = tmp_path / "src"
    content = make_tree(src)
    progress = Recorder()
    report = vault.put(src, prefix + "tree", progress=progress)  # a prefix without "/" is a folder
    assert report.kind == "tree" and report.first_error is None and report.stopped is None
    assert {o.remote for o in report.files} == {prefix + "tree/" + rel for rel in content}
    assert all(o.status == "uploaded" and isinstance(o.version, Version) for o in report.files)
    total = sum(map(len, content.values()))
    assert progress.started == [(len(content), total)] and progress.bytes == total
    assert len(progress.outcomes) == len(content) and progress.finished == 1

    events: list[ProgressEvent] = []
    restored = vault.get(prefix + "tree", tmp_path / "restored", progress=events.append)
    assert restored.kind == "tree" and restored.stats.files_downloaded == len(content)
    for rel, data in content.items():
        assert (tmp_path / "restored" / rel).read_bytes() == data
    kinds = [e.kind for e in events]
    assert kinds.count("start") >= 1 and kinds.count("file") == len(content)
    assert sum(e.nbytes for e in events if e.kind == "bytes") == total


def test_a_failed_file_does_not_stop_the_tree(vault, prefix, tmp_path):
    src = tmp_path / "src"
    content = make_tree(src)
    broken = "small/03.txt"

    def break_one_file() -> None:  # after the walk, before anything is read
        (src / broken).unlink()
        (src / broken).mkdir()

    report = vault.put(src, prefix, progress=Recorder(break_one_file))
    assert [o.remote for o in report.failures] == [prefix + broken] and report.stopped is None
    assert isinstance(report.first_error, OSError) and report.stats.files_failed == 1
    committed = {o.remote for o in report.files if o.committed}
    assert committed == {prefix + rel for rel in content if rel != broken}
    assert {v.path for v in vault.ls(prefix)} == committed


def test_sign_and_verify(vault, prefix, tmp_path):
    from cas import signing

    pair = signing.generate_key()
    key_file = tmp_path / "key"
    key_file.write_bytes(pair.private_pem)
    signed = vault.put(b"signed content", prefix + "s.txt", sign_key=key_file)
    version = signed.files[0].version
    assert version.signed and version.signer_public_key == pair.public_key.hex()
    out = io.BytesIO()
    vault.get(prefix + "s.txt", out, verify_key=pair.public_key)
    assert out.getvalue() == b"signed content"


# ---- browsing --------------------------------------------------------------------------------------------


def test_ls_log_stat_rm_diff(vault, prefix):
    for n in range(5):
        vault.put(f"file {n}".encode(), f"{prefix}f{n}")
    base = os.urandom(200_000)
    vault.put(base, prefix + "doc")
    vault.put(base + b"tail", prefix + "doc")

    listed = list(vault.ls(prefix, page_size=2))  # walks every page
    assert {v.path for v in listed} == {f"{prefix}f{n}" for n in range(5)} | {prefix + "doc"}
    assert len(listed) == 6 and all(isinstance(v, Version) for v in listed)
    first = vault.ls_page(prefix, limit=4)
    assert isinstance(first, Page) and len(first.files) == 4 and first.next_page_token
    rest = vault.ls_page(prefix, limit=4, page_token=first.next_page_token)
    assert len(rest.files) == 2 and rest.next_page_token == ""

    history = vault.log(prefix + "doc")
    assert [v.version for v in history] == [2, 1] and vault.log(prefix + "doc", limit=1)[0].version == 2
    assert vault.stat(prefix + "doc").size == len(base) + 4
    assert vault.stat(prefix + "doc", version=1).size == len(base)

    diff = vault.diff(prefix + "doc")
    assert isinstance(diff, DiffResult) and diff.base.version == 1 and diff.to.version == 2
    assert diff.changed and diff.shared_chunks + diff.new_chunks == diff.to.chunk_count

    tomb = vault.rm(prefix + "f0")
    assert tomb.deleted and tomb.version == 2
    assert prefix + "f0" not in {v.path for v in vault.ls(prefix)}
    assert prefix + "f0" in {v.path for v in vault.ls(prefix, include_deleted=True)}


def test_typed_exceptions(vault, prefix):
    with pytest.raises(NotFoundError):
        vault.stat(prefix + "nothing")
    with pytest.raises(NotFoundError):
        vault.get(prefix + "nothing", io.BytesIO())
    vault.put(b"v1", prefix + "c")
    with pytest.raises(VersionConflictError) as conflict:
        vault.put(b"v2", prefix + "c", if_version=5)
    assert conflict.value.expected == 5 and conflict.value.actual == 1
    with pytest.raises(VersionConflictError) as on_delete:
        vault.rm(prefix + "c", if_version=3)
    assert (on_delete.value.expected, on_delete.value.actual) == (3, 1)
    with pytest.raises(UsageError):
        vault.get(prefix + "c", io.BytesIO(), version=1, as_of="1h")
    with pytest.raises(UsageError):
        vault.put(b"x", prefix + "c", delete=True)
    assert vault.stat(prefix + "c").version == 1  # nothing changed


def test_as_of_in_its_three_forms(vault, prefix, tmp_path):
    vault.put(b"first", prefix + "t/a")
    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    vault.put(b"second", prefix + "t/a")
    vault.put(b"later", prefix + "t/b")

    ms = int(between.timestamp() * 1000)
    for when in (between, between.replace(tzinfo=None).astimezone(), ms, between.isoformat()):
        assert vault.stat(prefix + "t/a", as_of=when).version == 1, when
    assert vault.stat(prefix + "t/a", as_of="0s").version == 2
    with pytest.raises(NotFoundError):
        vault.stat(prefix + "t/a", as_of="1h")  # an age: the file did not exist an hour ago
    assert [v.path for v in vault.ls(prefix + "t/", as_of=ms)] == [prefix + "t/a"]
    restored = vault.get(prefix + "t/", tmp_path / "then", as_of=between)
    assert restored.as_of_ms == ms and (tmp_path / "then" / "a").read_bytes() == b"first"
    assert not (tmp_path / "then" / "b").exists()
    with pytest.raises(UsageError):
        vault.stat(prefix + "t/a", as_of="yesterday-ish")


# ---- change feed and server -------------------------------------------------------------------------------


def test_changes_and_watch(vault, prefix):
    vault.put(b"one", prefix + "w/1")
    batch = vault.changes("0", prefix=prefix)
    assert isinstance(batch, Changes) and [e.path for e in batch.events] == [prefix + "w/1"]
    assert isinstance(batch.events[0], Event) and batch.events[0].kind == "put" and batch.cursor

    events = vault.watch(prefix, since=batch.cursor)
    writer = threading.Timer(0.3, lambda: (vault.put(b"two", prefix + "w/2"), vault.rm(prefix + "w/1")))
    writer.start()
    try:
        seen = [next(events), next(events)]
    finally:
        events.close()
        writer.join()
    assert [(e.kind, e.path) for e in seen] == [("put", prefix + "w/2"), ("delete", prefix + "w/1")]
    assert vault.changes(seen[-1].cursor, prefix=prefix).events == []


def test_info(vault, prefix):
    vault.put(b"counted", prefix + "i")
    info = vault.info()
    assert isinstance(info, ServerInfo) and info.namespace == vault.namespace and info.identity
    assert info.chunk_min_size < info.chunk_avg_size < info.chunk_max_size and info.max_page_size > 0
    assert info.stats.file_count >= 1 and info.stats.logical_bytes >= len(b"counted")


# ---- settings and caches shared with the CLI ----------------------------------------------------------------


def test_settings_come_from_the_environment(server, env, monkeypatch, prefix):
    monkeypatch.setenv("STRATUS_SERVER", server.address)
    monkeypatch.setenv("STRATUS_INSECURE", "1")
    with Client() as vault:
        assert vault.settings.server == server.address and vault.settings.insecure
        vault.put(b"via env", prefix + "env")
        assert vault.read(prefix + "env") == b"via env"
    monkeypatch.setenv("STRATUS_INSECURE", "maybe")
    with pytest.raises(UsageError, match="STRATUS_INSECURE"):
        Client()
    monkeypatch.delenv("STRATUS_INSECURE")
    with pytest.raises(UsageError, match="no TLS material"):
        Client()


def test_the_cli_and_the_library_share_skip_decisions(server, env, vault, prefix, tmp_path):
    src = tmp_path / "src"
    content = make_tree(src)
    time.sleep(RACY_MARGIN_S)
    assert vault.put(src, prefix).stats.files_uploaded == len(content)
    cli = Cli(server.address, tmp_path, env)
    doc = cli.json("put", str(src), prefix)
    assert doc["stats"]["files_skipped_unchanged"] == len(content) and doc["stats"]["bytes_read"] == 0


# ---- the README's backup script ------------------------------------------------------------------------------


def readme_backup_script() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    scripts = [b for b in blocks if "def main" in b or "sys.exit" in b]
    assert scripts, "the README's Python library section has no backup script"
    return scripts[-1]


def test_the_readme_backup_script_runs(server, env, prefix, tmp_path):
    script = tmp_path / "backup.py"
    script.write_text(readme_backup_script(), encoding="utf-8")
    src = tmp_path / "data"
    content = make_tree(src)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
    run_env.update({k: v for k, v in env.items() if v is not None})
    run_env.update({"STRATUS_SERVER": server.address, "STRATUS_INSECURE": "1", "PYTHONPATH": str(ROOT)})

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), str(src), prefix], env=run_env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    first = run()
    assert first.returncode == 0, first.stderr
    assert f"{len(content)} files" in first.stdout and f"{len(content)} uploaded" in first.stdout
    with Client(server.address, insecure=True) as vault:
        assert {v.path for v in vault.ls(prefix)} == {prefix + rel for rel in content}

    second = run()  # nothing changed: every file skipped
    assert second.returncode == 0 and "0 uploaded" in second.stdout and f"{len(content)} unchanged" in second.stdout

    bad = os.path.join(os.fsencode(src), b"bad-\xff.txt")  # a name that is not UTF-8 cannot be stored
    with open(bad, "wb") as f:
        f.write(b"x")
    (src / "small" / "new.txt").write_bytes(b"a new file")
    third = run()
    assert third.returncode == 1, third.stdout + third.stderr
    assert "FAILED" in third.stderr and "1 failed" in third.stdout and "1 uploaded" in third.stdout
    with Client(server.address, insecure=True) as vault:
        assert vault.read(prefix + "small/new.txt") == b"a new file"  # the rest went on



def test_versions_render_with_the_cli_json_shape():
    from cas import signing
    from cli.output import version_dict
    from proto import stratus_pb2 as pb

    key = signing.generate_key()
    message = pb.VersionInfo(
        path="a/b", version=3, size=10, created_ms=1_714_567_890_123, identity="me", mode=0o640,
        mtime_ns=1_714_567_890_123_456_789, manifest_digest=b"\1" * 32, file_digest=b"\2" * 32, chunk_count=5,
        new_chunks=2, new_bytes=99, signature=b"sig", signer_public_key=key.public_key,
    )
    doc = version_dict(Version.from_message(message))
    assert doc == {
        "path": "a/b", "version": 3, "deleted": False, "size": 10, "created": "2024-05-01T12:51:30.123Z",
        "created_ms": 1_714_567_890_123, "identity": "me", "mode": "0640", "mtime": "2024-05-01T12:51:30.123Z",
        "mtime_ns": 1_714_567_890_123_456_789, "manifest_digest": "01" * 32, "file_digest": "02" * 32,
        "chunk_count": 5, "new_chunks": 2, "shared_chunks": 3, "new_bytes": 99, "signed": True,
        "signer": signing.fingerprint(key.public_key),
    }
    marker = version_dict(Version.from_message(pb.VersionInfo(path="x", version=2, deleted=True, created_ms=5)))
    assert marker["mode"] is None and marker["mtime"] is None and marker["signer"] is None and not marker["signed"]
