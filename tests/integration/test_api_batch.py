"""CommitFiles and GetManifests over real gRPC against a real server: per-file results, limits, tenants."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable

import grpc
import pytest
import redis
from server_fixtures import RunningServer, drop_prefix, new_prefix
from test_security_api import connect, tls_server  # noqa: F401 - the module's TLS server fixture

from cas import codec
from cas.digest import digest
from cas.errors import InvalidInputError, MissingChunksError, NotFoundError, VersionConflictError
from cli.client import StratusClient
from proto import stratus_pb2 as pb

OK = "ok"


def _code(status: grpc.StatusCode) -> int:
    return status.value[0]


def _base() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


def _upload(stub, blobs: list[bytes]) -> list[pb.Manifest]:
    """Send each blob as one chunk; returns a one-chunk manifest per blob (blobs under 16 KiB)."""
    chunks = [pb.ChunkData(digest=digest(b), frame=codec.encode(b)) for b in blobs]
    stub.PutChunks(iter([pb.ChunkBatch(chunks=chunks)]))
    return [_manifest(b) for b in blobs]


def _manifest(blob: bytes, repeat: int = 1) -> pb.Manifest:
    d = digest(blob)
    return pb.Manifest(chunks=[pb.ChunkRef(digest=d, length=len(blob))] * repeat, size=len(blob) * repeat,
                       file_digest=d)


def _commit(path: str, manifest: pb.Manifest, **fields) -> pb.CommitFileRequest:
    return pb.CommitFileRequest(path=path, manifest=manifest, **fields)


@pytest.fixture
def client(server):
    with StratusClient(server.channel()) as c:
        yield c


def test_a_batch_of_300_files_commits_and_lists(server, client):
    base = _base()
    blobs = [f"file {n} ".encode() * (n + 1) for n in range(300)]
    manifests = _upload(client.stub, blobs)
    requests = [_commit(f"{base}/f{n:03d}", m, mode=0o640) for n, m in enumerate(manifests)]
    response = client.stub.CommitFiles(pb.CommitFilesRequest(files=requests))
    assert [r.WhichOneof("result") for r in response.results] == [OK] * 300
    assert [r.ok.version.path for r in response.results] == [r.path for r in requests]
    assert {r.ok.version.version for r in response.results} == {1}
    assert not any(r.ok.unchanged for r in response.results)
    listed = list(client.iter_files(f"{base}/"))
    assert [f.path for f in listed] == [r.path for r in requests]
    assert [f.size for f in listed] == [len(b) for b in blobs]
    assert client.get_bytes(f"{base}/f299") == blobs[299]
    # The same batch again writes nothing new.
    again = client.commit_many(requests)
    assert all(isinstance(a, pb.CommitFileResponse) and a.unchanged and a.version.version == 1 for a in again)


def test_failures_stay_with_their_file(client):
    base = _base()
    good = _upload(client.stub, [b"first good", b"second good", b"existing"])
    client.stub.CommitFile(_commit(f"{base}/existing", good[2]))
    absent = os.urandom(100)
    requests = [
        _commit(f"{base}/good1", good[0]),
        _commit("../escape", good[0]),
        _commit(f"{base}/existing", good[0], if_version=5),
        _commit(f"{base}/missing", _manifest(absent)),
        _commit(f"{base}/signed", good[1], signature=b"\x01" * 64, signer_public_key=b"\x02" * 32),
        _commit(f"{base}/good2", good[1]),
        _commit(f"{base}/good1", good[1]),  # the same path twice in one call
    ]
    results = client.stub.CommitFiles(pb.CommitFilesRequest(files=requests)).results
    kinds = [r.WhichOneof("result") for r in results]
    assert kinds == [OK, "error", "error", "error", "error", OK, "error"]
    assert results[1].error.code == _code(grpc.StatusCode.INVALID_ARGUMENT)
    assert results[2].error.code == _code(grpc.StatusCode.ABORTED)
    assert "expected head version 5" in results[2].error.message
    assert results[3].error.code == _code(grpc.StatusCode.FAILED_PRECONDITION)
    assert list(results[3].error.detail.missing_chunks.digests) == [digest(absent)]
    assert results[3].error.detail.reason == pb.ErrorDetail.MISSING_CHUNKS
    conflict = results[2].error.detail
    assert conflict.reason == pb.ErrorDetail.VERSION_CONFLICT
    assert (conflict.version_conflict.path, conflict.version_conflict.expected) == (f"{base}/existing", 5)
    assert conflict.version_conflict.actual == 1
    assert results[4].error.code == _code(grpc.StatusCode.DATA_LOSS)
    assert results[6].error.code == _code(grpc.StatusCode.INVALID_ARGUMENT)
    assert client.get_bytes(f"{base}/good1") == b"first good"
    assert client.get_bytes(f"{base}/good2") == b"second good"
    assert client.get_bytes(f"{base}/existing") == b"existing"
    for path in ("missing", "signed"):
        with pytest.raises(NotFoundError):
            client.stat(f"{base}/{path}")
    # The client wrapper hands back the typed error of each file.
    answers = client.commit_many(requests[1:4])
    assert isinstance(answers[0], InvalidInputError)
    assert isinstance(answers[1], VersionConflictError)
    assert (answers[1].expected, answers[1].actual) == (5, 1)
    assert isinstance(answers[2], MissingChunksError) and answers[2].missing == [digest(absent)]


def _commands(redis_url: str, prefix: str, action: Callable[[], object]) -> list[str]:
    """The names of the Redis/Valkey commands clients sent naming keys under ``prefix`` while
    ``action`` runs (MONITOR on a connection of its own; an ECHO of a marker ends the recording)."""
    monitor_client = redis.Redis.from_url(redis_url)
    seen: list[str] = []
    marker = f"end-{uuid.uuid4().hex}"
    started = threading.Event()

    def record() -> None:
        with monitor_client.monitor() as m:
            started.set()
            for cmd in m.listen():
                if marker in cmd["command"]:
                    return
                if f"{prefix}:" in cmd["command"] and cmd.get("client_type") != "lua":  # not a script's own
                    seen.append(cmd["command"].split()[0].upper())

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    started.wait(10)
    try:
        action()
    finally:
        redis.Redis.from_url(redis_url).echo(marker)
        thread.join(30)
        monitor_client.close()
    return seen


def test_a_batch_is_one_commit_script_call(server, client, redis_url):
    base = _base()
    blobs = [f"round trip {n}".encode() for n in range(41)]
    manifests = _upload(client.stub, blobs)
    client.stub.CommitFile(_commit(f"{base}/existing", manifests[0]))
    absent = os.urandom(64)
    requests = [_commit(f"{base}/new{n:02d}", m) for n, m in enumerate(manifests[1:])] + [
        _commit(f"{base}/existing", manifests[1], if_version=7),
        _commit(f"{base}/missing", _manifest(absent)),
    ]

    def commit(files: list[pb.CommitFileRequest]) -> list[pb.CommitFileResult]:
        results: list[pb.CommitFileResult] = []
        call = lambda: results.extend(client.stub.CommitFiles(pb.CommitFilesRequest(files=files)).results)  # noqa: E731
        calls.append(_commands(redis_url, server.prefix, call))
        return results

    calls: list[list[str]] = []
    results = commit(requests)
    assert calls[-1] == ["EVALSHA"]  # 42 files, one metadata round trip
    assert [r.ok.version.version for r in results[:40]] == [1] * 40
    assert results[40].error.code == _code(grpc.StatusCode.ABORTED)
    assert results[40].error.detail.version_conflict.actual == 1
    assert list(results[41].error.detail.missing_chunks.digests) == [digest(absent)]
    assert client.get_bytes(f"{base}/new39") == blobs[40]
    # Files that already have a head: the first call finds them, the second writes against them.
    again = [_commit(f"{base}/new{n:02d}", manifests[(n + 2) % 41]) for n in range(40)]
    assert [r.ok.version.version for r in commit(again)] == [2] * 40
    assert calls[-1] == ["EVALSHA"] * 2
    assert client.list_versions(f"{base}/new00")[0].new_chunks == 1
    # Unchanged files are known from the first call's answer: nothing is written.
    assert all(r.ok.unchanged and r.ok.version.version == 2 for r in commit(again))
    assert calls[-1] == ["EVALSHA"]


def test_an_over_limit_batch_is_refused_whole(client):
    base = _base()
    (manifest,) = _upload(client.stub, [b"limit"])
    limit = client.info().max_batch_files
    assert limit == 1000
    requests = [_commit(f"{base}/f{n}", manifest) for n in range(limit + 1)]
    with pytest.raises(grpc.RpcError) as info:
        client.stub.CommitFiles(pb.CommitFilesRequest(files=requests))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(client.iter_files(f"{base}/")) == []
    with pytest.raises(grpc.RpcError) as info:
        client.stub.GetManifests(pb.GetManifestsRequest(files=[pb.GetManifestRequest(path="x")] * (limit + 1)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_get_manifests_fails_only_the_missing_path(client):
    base = _base()
    manifests = _upload(client.stub, [b"one", b"two"])
    client.commit_many([_commit(f"{base}/a", manifests[0]), _commit(f"{base}/b", manifests[0])])
    client.commit_many([_commit(f"{base}/b", manifests[1])])
    requests = [
        pb.GetManifestRequest(path=f"{base}/a"),
        pb.GetManifestRequest(path=f"{base}/nothing"),
        pb.GetManifestRequest(path=f"{base}/b", at=pb.VersionSelector(version=1)),
        pb.GetManifestRequest(path=f"{base}/b"),
        pb.GetManifestRequest(path="/absolute"),
    ]
    results = client.stub.GetManifests(pb.GetManifestsRequest(files=requests)).results
    assert [r.WhichOneof("result") for r in results] == [OK, "error", OK, OK, "error"]
    assert results[1].error.code == _code(grpc.StatusCode.NOT_FOUND)
    assert results[4].error.code == _code(grpc.StatusCode.INVALID_ARGUMENT)
    assert results[0].ok.manifest == manifests[0] and results[0].ok.version.version == 1
    assert results[2].ok.manifest == manifests[0] and results[2].ok.version.version == 1
    assert results[3].ok.manifest == manifests[1] and results[3].ok.version.version == 2
    answers = client.get_manifests(requests)
    assert isinstance(answers[1], NotFoundError) and isinstance(answers[4], InvalidInputError)
    assert [a.version.version for a in answers if isinstance(a, pb.GetManifestResponse)] == [1, 1, 2]


def test_small_limits_split_batches_and_cap_responses(redis_url, tmp_path):
    prefix = new_prefix()
    env = {"STRATUS_MAX_BATCH_FILES": "10", "STRATUS_MAX_MANIFEST_CHUNKS": "50"}
    running = RunningServer(tmp_path / "data", redis_url, prefix, extra_env=env).start()
    try:
        with StratusClient(running.channel()) as c:
            assert c.info().max_batch_files == 10
            (manifest,) = _upload(c.stub, [b"x" * 100])
            fat = _manifest(b"x" * 100, repeat=30)  # 30 chunk references, one chunk
            with pytest.raises(grpc.RpcError) as info:
                c.stub.CommitFiles(pb.CommitFilesRequest(files=[_commit("a", fat), _commit("b", fat)]))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The client splits by entries (25 files: 3 calls) and by chunks (30 + 30 > 50).
            requests = [_commit(f"many/f{n:02d}", manifest) for n in range(25)]
            requests += [_commit("fat1", fat), _commit("fat2", fat)]
            assert all(isinstance(a, pb.CommitFileResponse) for a in c.commit_many(requests))
            assert len(list(c.iter_files(""))) == 27
            # A response stops at 50 chunks; the entry beyond it is refused and fetched on its own.
            gets = [pb.GetManifestRequest(path="fat1"), pb.GetManifestRequest(path="fat2")]
            raw = c.stub.GetManifests(pb.GetManifestsRequest(files=gets)).results
            assert raw[0].WhichOneof("result") == OK
            assert raw[1].error.code == _code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            answers = c.get_manifests(gets)
            assert [len(a.manifest.chunks) for a in answers] == [30, 30]
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


def test_batches_keep_tenants_apart(tls_server):  # noqa: F811 - the imported fixture
    base = _base()
    with connect(tls_server, "alice") as alice, connect(tls_server, "bob") as bob, \
            connect(tls_server, "reader") as reader:
        manifests = _upload(alice.stub, [b"alice's secret", b"alice's other"])
        done = alice.commit_many([_commit(f"{base}/s", manifests[0]), _commit(f"{base}/t", manifests[1])])
        assert all(isinstance(a, pb.CommitFileResponse) for a in done)
        # Bob cannot commit alice's chunks (they are not in his namespace) nor read her paths.
        results = bob.stub.CommitFiles(pb.CommitFilesRequest(files=[_commit(f"{base}/s", manifests[0])])).results
        assert results[0].error.code == _code(grpc.StatusCode.FAILED_PRECONDITION)
        gets = pb.GetManifestsRequest(files=[pb.GetManifestRequest(path=f"{base}/s")])
        assert bob.stub.GetManifests(gets).results[0].error.code == _code(grpc.StatusCode.NOT_FOUND)
        # Asking for alice's namespace is refused; the read-only identity may read, not write.
        with pytest.raises(grpc.RpcError) as info:
            bob.stub.GetManifests(gets, metadata=[("stratus-namespace", "team")])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reader.stub.GetManifests(gets).results[0].ok.manifest == manifests[0]
        write = pb.CommitFilesRequest(files=[_commit(f"{base}/r", manifests[0])])
        assert reader.stub.CommitFiles(write).results[0].error.code == _code(grpc.StatusCode.PERMISSION_DENIED)
    lines = [json.loads(line) for line in tls_server.audit.read_text().splitlines()]
    batch = [e for e in lines if e["method"] == "CommitFiles" and e["identity"] == "alice"]
    assert batch and batch[-1]["files"] == 2 and batch[-1]["failed"] == 0 and batch[-1]["status"] == "OK"
