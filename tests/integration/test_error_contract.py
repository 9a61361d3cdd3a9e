"""The error contract against a real server: every failure carries a stratus.v1.ErrorDetail in the
standard ``grpc-status-details-bin`` trailer (batch entries in their ItemError), and the client's
typed errors take their fields from it, never from the wording of the message."""

from __future__ import annotations

import errno
import os
import uuid

import grpc
import pytest
import redis
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cas.errors import (
    BackendUnavailableError,
    CasError,
    IntegrityError,
    InvalidInputError,
    LimitExceededError,
    MissingChunksError,
    NotFoundError,
    RateLimitedError,
    StorageFullError,
    VersionConflictError,
)
from cas.manifest import EMPTY_FILE_DIGEST
from cli.client import StratusClient
from cli.rpc_errors import error_detail, map_item_error, map_rpc_error, map_status
from proto import stratus_pb2 as pb
from service.errors import error_detail as service_detail
from service.errors import public_message, status_for, typed

DETAILS_KEY = "grpc-status-details-bin"


def _path() -> str:
    return f"ec-{uuid.uuid4().hex[:10]}/file"


def _fail(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


def _manifest(*blobs: bytes) -> pb.Manifest:
    return pb.Manifest(
        chunks=[pb.ChunkRef(digest=digest(b), length=len(b)) for b in blobs],
        size=sum(len(b) for b in blobs), file_digest=digest(b"".join(blobs)),
    )


@pytest.fixture
def client(server):
    with StratusClient(server.channel()) as c:
        yield c


def test_version_conflict_carries_path_and_versions(server, client):
    path = _path()
    client.put_bytes(b"one", path)
    client.put_bytes(b"two", path)
    empty = pb.Manifest(size=0, file_digest=EMPTY_FILE_DIGEST)
    err = _fail(server.stub().CommitFile, pb.CommitFileRequest(path=path, manifest=empty, if_version=7))
    assert err.code() == grpc.StatusCode.ABORTED
    keys = [k for k, _ in err.trailing_metadata()]
    assert DETAILS_KEY in keys and "sv-missing-chunks-bin" not in keys and "retry-after" not in keys
    detail = error_detail(err)
    assert detail.reason == pb.ErrorDetail.VERSION_CONFLICT
    typed = map_rpc_error(err)
    assert isinstance(typed, VersionConflictError)
    assert (typed.path, typed.expected, typed.actual) == (path, 7, 2)
    # The same through the client library.
    with pytest.raises(VersionConflictError) as info:
        client.put_bytes(b"three", path, if_version=1)
    assert (info.value.path, info.value.expected, info.value.actual) == (path, 1, 2)


def test_missing_chunks_at_commit_give_the_digests(server):
    absent = [os.urandom(64) for _ in range(3)]
    request = pb.CommitFileRequest(path=_path(), manifest=_manifest(*absent))
    err = _fail(server.stub().CommitFile, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    typed = map_rpc_error(err)
    assert isinstance(typed, MissingChunksError)
    assert sorted(typed.missing) == sorted(digest(b) for b in absent)
    assert error_detail(err).missing_chunks.total == 3


def test_each_failure_maps_to_its_typed_error(server):
    stub = server.stub()
    cases = [
        (NotFoundError, stub.Stat, pb.StatRequest(path=_path())),
        (InvalidInputError, stub.Stat, pb.StatRequest(path="../escape")),
        (IntegrityError, stub.PutChunks,
         iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(b"x"), frame=codec.encode(b"y"))])])),
        (LimitExceededError, stub.CommitFiles,
         pb.CommitFilesRequest(files=[pb.CommitFileRequest(path=f"lim/{n}") for n in range(1001)])),
    ]
    for cls, call, request in cases:
        err = _fail(call, request)
        assert error_detail(err) is not None, call
        assert type(map_rpc_error(err)) is cls


def test_limit_exceeded_names_the_limit(server):
    files = [pb.CommitFileRequest(path=f"lim/{n}") for n in range(1001)]
    err = _fail(server.stub().CommitFiles, pb.CommitFilesRequest(files=files))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    typed = map_rpc_error(err)
    assert isinstance(typed, LimitExceededError) and not isinstance(typed, RateLimitedError)
    assert (typed.limit, typed.value, typed.maximum) == ("max_batch_files", 1001, 1000)


def test_batch_item_errors_carry_their_detail(server, client):
    path = _path()
    client.put_bytes(b"existing", path)
    absent = os.urandom(50)
    empty = pb.Manifest(size=0, file_digest=EMPTY_FILE_DIGEST)
    answers = client.commit_many([
        pb.CommitFileRequest(path=path, manifest=empty, if_version=4),
        pb.CommitFileRequest(path=_path(), manifest=_manifest(absent)),
    ])
    conflict, missing = answers
    assert isinstance(conflict, VersionConflictError)
    assert (conflict.path, conflict.expected, conflict.actual) == (path, 4, 1)
    assert isinstance(missing, MissingChunksError) and missing.missing == [digest(absent)]
    got = client.get_manifests([pb.GetManifestRequest(path=_path())])
    assert isinstance(got[0], NotFoundError)


def test_a_rate_limited_call_says_when_to_retry(redis_url, tmp_path):
    prefix = new_prefix()
    env = {"STRATUS_RATE_LIMIT_PER_SECOND": "0.5", "STRATUS_RATE_LIMIT_BURST": "2"}
    running = RunningServer(tmp_path / "server", redis_url, prefix, extra_env=env).start()
    try:
        stub = running.stub()
        errors = []
        for _ in range(4):
            try:
                stub.Stat(pb.StatRequest(path="nothing/here"))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    errors.append(err)
        assert errors, "four calls with a burst of two were all answered"
        detail = error_detail(errors[0])
        assert detail.reason == pb.ErrorDetail.RATE_LIMITED and detail.retry_after_ms > 0
        typed = map_rpc_error(errors[0])
        assert isinstance(typed, RateLimitedError)
        assert 0 < typed.retry_after_s <= 2.0  # one token per 2 s
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


def test_client_behaviour_does_not_depend_on_the_message(server):
    path = _path()
    stub = server.stub()
    stub.CommitFile(pb.CommitFileRequest(path=path, manifest=pb.Manifest(size=0, file_digest=EMPTY_FILE_DIGEST)))
    err = _fail(stub.CommitFile, pb.CommitFileRequest(
        path=path, manifest=pb.Manifest(size=0, file_digest=EMPTY_FILE_DIGEST), if_version=9))
    detail = error_detail(err)
    # The server's detail with any wording at all gives the same typed error and fields.
    for text in ("", "zut alors", "expected head version 1, but the head is version 2"):
        again = map_status(err.code(), text, detail)
        assert isinstance(again, VersionConflictError)
        assert (again.path, again.expected, again.actual) == (path, 9, 1)
        item = map_item_error(pb.ItemError(code=err.code().value[0], message=text, detail=detail))
        assert (item.path, item.expected, item.actual) == (path, 9, 1)
    # A message that reads like a rate limit or a conflict changes nothing without the detail saying so.
    limit = map_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded; retry in 2.50 s", None)
    assert isinstance(limit, LimitExceededError) and not isinstance(limit, RateLimitedError)
    conflict = map_status(grpc.StatusCode.ABORTED, "a: expected head version 3, but the head is version 5", None)
    assert isinstance(conflict, VersionConflictError) and (conflict.expected, conflict.actual) == (-1, -1)
    # An unexpected reason falls back to the code.
    odd = map_status(grpc.StatusCode.INTERNAL, "boom", pb.ErrorDetail(reason=pb.ErrorDetail.INTERNAL))
    assert type(odd) is CasError


def test_faults_below_the_library_become_typed_errors():
    full = typed(OSError(errno.ENOSPC, "No space left on device"))
    quota = typed(OSError(errno.EDQUOT, "Disk quota exceeded"))
    down = typed(redis.exceptions.ConnectionError("Connection refused"))
    assert isinstance(full, StorageFullError) and not full.quota and str(full) == "server storage full"
    assert isinstance(quota, StorageFullError) and quota.quota
    assert isinstance(down, BackendUnavailableError) and down.retry_after_s > 0
    assert status_for(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(down) == grpc.StatusCode.UNAVAILABLE
    other = OSError(errno.EIO, "I/O error")
    assert typed(other) is other and status_for(other) == grpc.StatusCode.INTERNAL
    # Each detail decodes back to the same typed error on the client.
    for exc in (full, quota, down):
        back = map_status(status_for(exc), public_message(exc, "Test"), service_detail(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    assert map_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", service_detail(quota)).quota
