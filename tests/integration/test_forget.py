"""Forget against real servers (Redis and Valkey): what goes, what every read then shows, races
with commits, rights and tenants, the change feed, and the server's own retention schedule."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from cli_helpers import isolated_env
from concurrency import run_threads
from server_fixtures import RunningServer, drop_prefix, new_prefix
from tls_fixtures import connect, tls_server

from cas.errors import InvalidPolicyError, NotFoundError, PermissionDeniedError
from cli.client import StratusClient
from cli.library import Client
from proto import stratus_pb2 as pb


@pytest.fixture
def vault(server, tmp_path, monkeypatch) -> Client:
    for name, value in isolated_env(tmp_path).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with Client(server.address, insecure=True) as client:
        yield client


def versions(vault: Client, path: str) -> list[int]:
    return [v.version for v in vault.log(path)]


def test_forget_keep_last_removes_old_versions_from_every_read(vault, prefix):
    path = prefix + "db.bin"
    for n in range(5):
        vault.put(f"content {n}".encode() * 1000, path)
        time.sleep(0.01)
    old = vault.stat(path, version=2)
    report = vault.forget(prefix, keep_last=2)
    assert report.removed == 3 and report.kept == 2 and report.first_error is None
    [one] = report.paths
    assert [(v.version.version, v.keep) for v in one.versions] == [(5, True), (4, True), (3, False), (2, False),
                                                                    (1, False)]
    assert one.versions[0].reasons == ("head", "last version")
    assert versions(vault, path) == [5, 4]
    for gone in (1, 2, 3):
        with pytest.raises(NotFoundError):
            vault.stat(path, version=gone)
        with pytest.raises(NotFoundError):
            vault.read(path, version=gone)
    # as of the time of a forgotten version: that path did not exist yet in what remains
    assert list(vault.ls(prefix, as_of=old.created_ms)) == []
    assert vault.read(path) == b"content 4" * 1000
    assert vault.read(path, version=4) == b"content 3" * 1000
    assert vault.diff(path).base.version == 4
    with pytest.raises(NotFoundError):
        vault.diff(path, 2, 5)
    assert vault.diff(path, 4, 5).to.version == 5
    # the oldest remaining version diffs against nothing before it
    assert vault.diff(path, 0, 4).base is None
    # forgetting again with the same policy removes nothing more
    assert vault.forget(prefix, keep_last=2).removed == 0


def test_get_manifest_of_a_forgotten_version_is_not_found(server, vault, prefix):
    path = prefix + "m"
    for n in range(3):
        vault.put(b"m%d" % n, path)
    vault.forget(prefix, keep_last=1)
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as info:
        stub.GetManifest(pb.GetManifestRequest(path=path, at=pb.VersionSelector(version=1)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(pb.StatRequest(path=path, at=pb.VersionSelector(version=2)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    [entry] = stub.GetManifests(pb.GetManifestsRequest(files=[
        pb.GetManifestRequest(path=path, at=pb.VersionSelector(version=1))])).results
    assert entry.error.code == grpc.StatusCode.NOT_FOUND.value[0]


def test_dry_run_removes_nothing_and_says_why(vault, prefix):
    for name in ("a", "b"):
        for n in range(3):
            vault.put(f"{name}{n}".encode(), prefix + name)
    vault.rm(prefix + "b")
    report = vault.forget(prefix, keep_last=1, dry_run=True)
    assert report.dry_run and report.removed == 0
    assert report.would_remove == 4
    assert [p.path for p in report.paths] == [prefix + "a", prefix + "b"]
    b = report.paths[1]
    # the marker is the head; keep-last counts content only, so version 3 is the "last version"
    assert [(v.version.version, v.keep, v.reasons) for v in b.versions] == [
        (4, True, ("head",)), (3, True, ("last version",)), (2, False, ()), (1, False, ())]
    assert versions(vault, prefix + "a") == [3, 2, 1]
    assert versions(vault, prefix + "b") == [4, 3, 2, 1]


def test_deleted_path_keeps_its_marker_and_stays_deleted(vault, prefix):
    path = prefix + "gone"
    for n in range(3):
        vault.put(b"g%d" % n, path)
    vault.rm(path)
    vault.forget(prefix, keep_last=1)
    assert [(v.version, v.deleted) for v in vault.log(path)] == [(4, True), (3, False)]
    assert list(vault.ls(prefix)) == []
    assert [f.path for f in vault.ls(prefix, include_deleted=True)] == [path]
    assert vault.read(path, version=3) == b"g2"


def test_empty_and_bad_policies_are_refused_before_anything_goes(server, vault, prefix):
    vault.put(b"x", prefix + "x")
    vault.put(b"y", prefix + "x")
    with pytest.raises(InvalidPolicyError):
        vault.forget(prefix)
    with pytest.raises(InvalidPolicyError):
        vault.forget(prefix, keep_within="3w")
    # the server refuses an empty policy on its own too
    with pytest.raises(grpc.RpcError) as info:
        list(server.stub().Forget(pb.ForgetRequest(prefix=prefix)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(server.stub().Forget(pb.ForgetRequest(prefix=prefix, policy=pb.RetentionPolicy(keep_daily=-2))))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert versions(vault, prefix + "x") == [2, 1]


def test_forget_records_a_forgotten_event_per_removal(vault, prefix):
    path = prefix + "feed"
    for n in range(4):
        vault.put(b"f%d" % n, path)
    cursor = vault.changes(prefix=prefix).cursor
    vault.forget(prefix, keep_last=1)
    events = vault.changes(cursor, prefix=prefix).events
    assert [(e.kind, e.path, e.version) for e in events] == [("forgotten", path, v) for v in (1, 2, 3)]
    assert all(e.identity == "anonymous" for e in events)


def test_stats_count_only_remaining_versions(vault, prefix):
    before = vault.info().stats
    for n in range(3):
        vault.put(b"s" * (100 + n), prefix + "s")
    vault.forget(prefix, keep_last=1)
    after = vault.info().stats
    assert after.version_count == before.version_count + 1
    assert after.logical_bytes == before.logical_bytes + 102


def test_forget_racing_commits_never_removes_a_head_or_a_version_the_policy_keeps(server, vault, prefix):
    paths = [prefix + f"race{k}" for k in range(3)]
    stop = threading.Event()
    committed: dict[str, list[int]] = {p: [] for p in paths}

    def commit(k: int) -> None:
        with StratusClient.connect(server.address, insecure=True) as own:
            n = 0
            while not stop.is_set():
                outcome = own.put_bytes(b"race %d %d" % (k, n), paths[k])
                committed[paths[k]].append(outcome.version.version)
                n += 1

    def forget(_: int) -> None:
        deadline = time.monotonic() + 60
        while min(len(v) for v in committed.values()) < 15 and time.monotonic() < deadline:
            report = vault.forget(prefix, keep_last=2)
            assert report.first_error is None, report.first_error

    workers = threading.Thread(target=lambda: errors.extend(run_threads(commit, len(paths))))
    errors: list[BaseException] = []
    workers.start()
    try:
        errors += run_threads(forget, 2)
    finally:
        stop.set()
        workers.join()
    assert errors == []
    # replay the feed: each forgotten version had at least two newer content versions already
    newer: dict[str, list[int]] = {p: [] for p in paths}
    removed = 0
    cursor = ""
    while True:
        batch = vault.changes(cursor, prefix=prefix, limit=1000)
        if not batch.events:
            break
        cursor = batch.cursor
        for e in batch.events:
            if e.kind == "put":
                newer[e.path].append(e.version)
            elif e.kind == "forgotten":
                removed += 1
                assert sum(v > e.version for v in newer[e.path]) >= 2, (e.path, e.version)
    assert removed > 0
    for p in paths:
        last = committed[p][-1]
        assert versions(vault, p)[:2] == [last, committed[p][-2]]  # every head and the newest two survive
        assert vault.read(p, version=last).startswith(b"race")


def test_grants_and_tenants(redis_url, tmp_path):
    access = """
[identities.owner]
namespace = "team"
[identities.writer]
[identities.reader]
[identities.other]
namespace = "elsewhere"

[[grants]]
identities = ["writer"]
namespace = "team"
prefix = "inbox/writer/"
access = "read-write"

[[grants]]
identities = ["reader"]
namespace = "team"
prefix = "inbox/"
access = "read"
"""
    with tls_server(tmp_path, redis_url, ["owner", "writer", "reader", "other"], access=access) as server:
        with connect(server, "owner") as owner, connect(server, "other") as other:
            for path in ("inbox/writer/a", "inbox/other/b", "top"):
                for n in range(3):
                    owner.put_bytes(b"%s %d" % (path.encode(), n), path)
                    other.put_bytes(b"o %d" % n, path)  # the same paths in another namespace
        policy = pb.RetentionPolicy(keep_last=1)

        def forget(name: str, prefix: str) -> list[pb.ForgetPathResult]:
            with connect(server, name, namespace="team") as c:
                return list(c.forget(prefix, policy))

        for name, where in (("writer", ""), ("writer", "inbox/"), ("reader", "inbox/"), ("reader", "inbox/writer/"),
                            ("other", "")):
            with pytest.raises(PermissionDeniedError):
                forget(name, where)
        [done] = forget("writer", "inbox/writer/")
        assert done.path == "inbox/writer/a" and done.removed == 2
        with connect(server, "owner") as owner, connect(server, "other") as other:
            assert len(owner.list_versions("inbox/other/b")) == 3
            assert len(owner.list_versions("inbox/writer/a")) == 1
            assert [len(other.list_versions(p)) for p in ("inbox/writer/a", "inbox/other/b", "top")] == [3, 3, 3]
            results = list(owner.forget("", policy))
            assert sum(r.removed for r in results) == 4
            assert [len(other.list_versions(p)) for p in ("inbox/writer/a", "inbox/other/b", "top")] == [3, 3, 3]
            events, _ = owner.changes()
            assert {e.identity for e in events if e.kind == "forgotten"} == {"writer", "owner"}


def test_server_schedule_applies_configured_rules_and_audits(redis_url, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("""
retention_interval_s = 1

[[retention]]
namespace = "default"
prefix = "nightly/"
keep_last = 2
""")
    audit = tmp_path / "audit.log"
    key_prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, key_prefix,
                           extra_args=["--config", str(config), "--audit-log", str(audit)]).start()
    try:
        with Client(server.address, insecure=True) as vault:
            for n in range(5):
                vault.put(b"n%d" % n, "nightly/db")
                vault.put(b"k%d" % n, "keep/db")
            deadline = time.monotonic() + 30
            while versions(vault, "nightly/db") != [5, 4] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert versions(vault, "nightly/db") == [5, 4]
            assert versions(vault, "keep/db") == [5, 4, 3, 2, 1]  # outside the rule's prefix
            events = vault.changes(prefix="nightly/").events
            assert {e.identity for e in events if e.kind == "forgotten"} == {"retention-schedule"}
        entries = [json.loads(line) for line in Path(audit).read_text().splitlines()]
        runs = [e for e in entries if e["method"] == "RetentionSchedule"]
        assert any(e["removed"] == 3 and e["path"] == "nightly/" and e["namespace"] == "default" for e in runs)
        assert all(e["status"] == "OK" and e["identity"] == "retention-schedule" for e in runs)
        assert all(e["policy"] == "keep 2 last versions" for e in runs)
    finally:
        server.stop()
        drop_prefix(redis_url, key_prefix)


def test_forget_call_is_audited(redis_url, tmp_path):
    audit = tmp_path / "audit.log"
    key_prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, key_prefix,
                           extra_args=["--audit-log", str(audit)]).start()
    try:
        with Client(server.address, insecure=True) as vault:
            for n in range(3):
                vault.put(b"a%d" % n, "x/a")
            vault.forget("x/", keep_last=1)
    finally:
        server.stop()
        drop_prefix(redis_url, key_prefix)
    [entry] = [json.loads(line) for line in audit.read_text().splitlines() if '"Forget"' in line]
    assert entry["path"] == "x/" and entry["removed"] == 2 and entry["paths"] == 1 and entry["status"] == "OK"
