"""Losing Redis/Valkey loses nothing: `stratus admin rebuild-index` recreates the metadata from the
data dir alone (real server processes, real Redis and Valkey, the CLI as a process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from cli_helpers import isolated_env, run_process
from server_fixtures import RunningServer, drop_prefix, new_prefix, run_to_exit
from tls_fixtures import connect, tls_server

from cas import pack, signing
from cli.client import StratusClient
from proto import stratus_pb2 as pb
from service.journal import read_all, scan, segments
from service.manifests import INLINE_MANIFEST_BYTES

# Small chunks, so a file of a few hundred KB has a manifest too large to live in its record.
SMALL_CHUNKS = {"STRATUS_CHUNK_MIN_SIZE": "256", "STRATUS_CHUNK_AVG_SIZE": "1024", "STRATUS_CHUNK_MAX_SIZE": "4096"}


def manifest_records(data_dir: Path) -> dict[bytes, tuple[str, pack.Location]]:
    """The manifests stored as pack records: digest -> (pack id, location)."""
    return {r.digest: (p, loc) for p in pack.list_packs(data_dir) for loc, r in pack.scan(data_dir, p)
            if r.type == pack.RecordType.MANIFEST}


def rebuild(server: RunningServer, redis_url: str, tmp: Path, code: int = 0) -> dict:
    """Run `stratus --json admin rebuild-index` against the stopped server's data dir."""
    env = isolated_env(tmp)
    env["STRATUS_REDIS_PREFIX"] = server.prefix
    args = ["--json", "admin", "rebuild-index", "--data-dir", str(server.data_dir)]
    proc = run_process(args + (["--redis-url", redis_url] if redis_url else []), env, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def snapshot(client: StratusClient, paths: list[str]) -> dict:
    """Everything a client can see of ``paths``: history, every version's bytes, listing, feed."""
    history = {p: [v.SerializeToString(deterministic=True) for v in client.list_versions(p)] for p in paths}
    data = {(p, v.version): client.get_bytes(p, version=v.version)
            for p in paths for v in client.list_versions(p) if not v.deleted}
    listing = sorted(f.path for f in client.list_files("")[0])
    events, cursor = client.changes()
    return {"history": history, "data": data, "ls": listing,
            "feed": [e.SerializeToString(deterministic=True) for e in events], "cursor": cursor}


def test_rebuild_brings_back_two_namespaces_after_metadata_loss(redis_url, tmp_path):
    key = signing.generate_key()
    docs = [os.urandom(200_000), os.urandom(150_000) + b"x", b"third version"]
    with tls_server(tmp_path, redis_url, ["alice", "bob"]) as server:
        with connect(server, "alice") as alice, connect(server, "bob") as bob:
            for data in docs:
                alice.put_bytes(data, "docs/report.bin")
            alice.put_bytes(b"signed text", "docs/signed.txt", sign_key=key.private_pem)
            alice.put_bytes(b"short-lived", "tmp/gone.txt")
            alice.delete("tmp/gone.txt")
            bob.put_bytes(os.urandom(300_000), "b/one.bin")
            bob.put_bytes(b"bob v2", "b/one.bin")
            paths_a = ["docs/report.bin", "docs/signed.txt", "tmp/gone.txt"]
            before_a, before_b = snapshot(alice, paths_a), snapshot(bob, ["b/one.bin"])
            stats_a = alice.info().stats
        server.stop()
        drop_prefix(redis_url, server.prefix)  # every key of this store is gone
        refused = RunningServer(server.data_dir, redis_url, server.prefix, extra_args=server.args)
        assert "admin rebuild-index" in run_to_exit(refused).stderr  # the server names the fix

        report = rebuild(server, redis_url, tmp_path)
        assert report["problems"] == []
        assert len(report["namespaces"]) == 2
        alice_ns = next(n for n in report["namespaces"].values() if n["delete_markers"] == 1)
        assert alice_ns["versions"] == 6 and alice_ns["paths"] == 3
        # a second run refuses: the prefix is no longer empty
        assert "not empty" in rebuild(server, redis_url, tmp_path, code=1)["error"]["message"]

        server.start()
        with connect(server, "alice") as alice, connect(server, "bob") as bob:
            assert snapshot(alice, paths_a) == before_a
            assert snapshot(bob, ["b/one.bin"]) == before_b
            assert alice.get_bytes("docs/report.bin") == docs[-1]
            signed = alice.list_versions("docs/signed.txt")[0]
            assert signed.signature and signed.signer_public_key == key.public_key
            assert alice.list_versions("tmp/gone.txt")[0].deleted
            assert stats_a.chunk_count > 0 and alice.info().stats == stats_a
            _, cursor = alice.changes()
            outcome = alice.put_bytes(b"fourth", "docs/report.bin")
            assert outcome.version.version == 4
            assert [e.version for e in alice.changes(since=cursor)[0]] == [4]
            assert alice.put_bytes(b"again", "tmp/gone.txt").version.version == 3


def test_acknowledged_commit_survives_sigkill_and_metadata_loss(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"first", "a.txt")
            acked = os.urandom(100_000)
            assert client.put_bytes(acked, "a.txt").version.version == 2
        server.stop(signal.SIGKILL)
        drop_prefix(redis_url, prefix)
        report = rebuild(server, redis_url, tmp_path)
        assert report["problems"] == []
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.get_bytes("a.txt") == acked
            assert client.get_bytes("a.txt", version=1) == b"first"
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_unrecoverable_version_is_listed_not_invented(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix, extra_env=SMALL_CHUNKS).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"kept", "keep.txt")
            client.put_bytes(os.urandom(300_000), "lost.bin")  # a manifest stored in a pack
            lost = client.list_versions("lost.bin")[0].manifest_digest
        server.stop()
        drop_prefix(redis_url, prefix)
        pack_id, where = manifest_records(server.data_dir)[lost]
        with open(pack.pack_path(server.data_dir, pack_id), "r+b") as f:  # damage its payload
            f.seek(where.offset + where.length - 100)
            f.write(b"\0" * 50)
        report = rebuild(server, redis_url, tmp_path, code=5)
        assert len(report["problems"]) == 1 and "lost.bin version 1" in report["problems"][0]
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.get_bytes("keep.txt") == b"kept"
            assert [f.path for f in client.list_files("")[0]] == ["keep.txt"]
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_inline_and_pack_manifests_come_back_from_the_data_dir(redis_url, tmp_path):
    """Small manifests live only in their version records (and so in the journal), large ones only
    as pack records: no manifest file is written, and a rebuild recovers both kinds."""
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix, extra_env=SMALL_CHUNKS).start()
    big = bytearray(os.urandom(400_000))
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"small v1", "s.txt")
            client.put_bytes(b"small v2", "s.txt")
            client.put_bytes(bytes(big), "big.bin")
            big[200_000:200_010] = b"0123456789"
            client.put_bytes(bytes(big), "big.bin")
            paths = ["s.txt", "big.bin"]
            before = snapshot(client, paths)
            diffs = [client.diff(p).SerializeToString(deterministic=True) for p in paths]
            small = [v.manifest_digest for v in client.list_versions("s.txt")]
            large = [v.manifest_digest for v in client.list_versions("big.bin")]
        server.stop()
        assert not (server.data_dir / "manifests").exists()
        assert set(manifest_records(server.data_dir)) == set(large)
        journaled = {(e.record.path, e.record.version): e.record for e in read_all(server.data_dir / "journal")[0]}
        assert all(0 < len(journaled["s.txt", v].manifest) <= INLINE_MANIFEST_BYTES for v in (1, 2))
        assert {journaled["s.txt", v].manifest_digest for v in (1, 2)} == set(small)
        assert not any(journaled["big.bin", v].manifest for v in (1, 2))
        drop_prefix(redis_url, prefix)
        assert rebuild(server, redis_url, tmp_path)["problems"] == []
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert snapshot(client, paths) == before
            assert [client.diff(p).SerializeToString(deterministic=True) for p in paths] == diffs
            big[0:4] = b"head"
            assert client.put_bytes(bytes(big), "big.bin").version.version == 3
            assert client.get_bytes("big.bin") == bytes(big)
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_embedded_valkey_data_removed_then_rebuilt(tmp_path):
    server = RunningServer(tmp_path / "data", "", new_prefix()).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            data = os.urandom(400_000)
            client.put_bytes(data, "big.bin")
            client.put_bytes(b"small", "big.bin")
            client.delete("big.bin")
            client.put_bytes(b"other", "d/other.txt")
        server.stop()  # stops its Valkey too
        shutil.rmtree(server.data_dir / "valkey")
        report = rebuild(server, "", tmp_path)
        assert report["problems"] == [] and sum(n["versions"] for n in report["namespaces"].values()) == 4
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.get_bytes("big.bin", version=1) == data
            assert [v.deleted for v in client.list_versions("big.bin")] == [True, False, False]
            assert [f.path for f in client.list_files("")[0]] == ["d/other.txt"]
    finally:
        server.kill()


def test_retry_after_a_lost_journal_record_journals_the_head(redis_url, tmp_path):
    """Crash after the commit script, before the journal fsync: the client got no answer and retries;
    the retry finds its content as head ("unchanged") and journals it, so what it is told survives."""
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"v1", "f.txt")
            client.put_bytes(b"v2", "f.txt")
        server.stop(signal.SIGKILL)
        seg = segments(server.data_dir / "journal")[-1]
        raw = seg.read_bytes()
        cut = scan(raw[: len(raw) - 1])[1]  # the offset where the last record starts
        seg.write_bytes(raw[:cut])  # as if the crash came before its fsync
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.put_bytes(b"v2", "f.txt").version.version == 2  # the retry: unchanged
        server.stop()
        drop_prefix(redis_url, prefix)
        assert rebuild(server, redis_url, tmp_path)["problems"] == []
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.get_bytes("f.txt") == b"v2"
            assert [v.version for v in client.list_versions("f.txt")] == [2, 1]
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_store_from_before_the_journal_is_journaled_on_start(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"old 1", "old.txt")
            client.put_bytes(b"old 2", "old.txt")
            client.delete("old.txt")
            feed_before = client.changes()
        server.stop()
        shutil.rmtree(server.data_dir / "journal")  # as written by a version without the journal
        server.start()  # journals the versions Redis holds
        server.stop()
        drop_prefix(redis_url, prefix)
        assert rebuild(server, redis_url, tmp_path)["problems"] == []
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert client.get_bytes("old.txt", version=2) == b"old 2"
            assert client.list_versions("old.txt")[0].deleted
            assert client.changes() == feed_before  # same entries under the same ids
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_forgotten_versions_stay_gone_after_metadata_loss(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as c:
            for n in range(5):
                c.put_bytes(b"nightly %d" % n, "db/dump.sql")
            c.put_bytes(b"other", "db/other")
            c.put_bytes(b"other 2", "db/other")
            c.delete("db/other")
            results = list(c.forget("db/", pb.RetentionPolicy(keep_last=2)))
            assert [r.removed for r in results] == [3, 0]
            before = snapshot(c, ["db/dump.sql", "db/other"])
            stats = c.info().stats
            oldest_left = c.list_versions("db/dump.sql")[-1]
        server.stop()
        drop_prefix(redis_url, prefix)  # Redis lost everything

        report = rebuild(server, redis_url, tmp_path)
        assert report["problems"] == []
        [ns] = report["namespaces"].values()
        assert ns["versions"] == 5 and ns["forgotten"] == 3

        server.start()
        with StratusClient.connect(server.address, insecure=True) as c:
            assert snapshot(c, ["db/dump.sql", "db/other"]) == before  # history, bytes, listing and feed
            assert [v.version for v in c.list_versions("db/dump.sql")] == [5, 4]
            after = c.info().stats  # the chunk index holds only the remaining versions' chunks now
            assert (after.version_count, after.logical_bytes, after.file_count) == (
                stats.version_count, stats.logical_bytes, stats.file_count)
            as_of = c.stat("db/dump.sql", as_of_ms=oldest_left.created_ms)
            assert as_of.version == 4
            events, _ = c.changes(prefix="db/dump.sql")
            assert [(e.kind, e.version) for e in events if e.kind == "forgotten"] == [
                ("forgotten", 1), ("forgotten", 2), ("forgotten", 3)]
            assert c.put_bytes(b"nightly 5", "db/dump.sql").version.version == 6
            assert [v.version for v in c.list_versions("db/dump.sql")] == [6, 5, 4]
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)
