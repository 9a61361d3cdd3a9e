"""Hostile and malformed input over real gRPC: precise status codes, and nothing changes."""

from __future__ import annotations

import os
import struct
import uuid

import grpc
import pytest
import redis
import zstandard

from cas import codec
from cas.digest import digest
from proto import stratus_pb2 as pb


def _state(server) -> tuple[set[bytes], int]:
    """Redis keys of this server and the number of chunk files on its disk."""
    client = redis.Redis.from_url(server.redis_url)
    try:
        keys = set(client.scan_iter(match=f"{server.prefix}:*", count=1000))
    finally:
        client.close()
    files = sum(1 for p in (server.data_dir / "chunks").rglob("*") if p.is_file())
    return keys, files


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def stub(server):
    return server.stub()


def _put(stub, chunks):
    return stub.PutChunks(iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f in chunks])]))


def test_wrong_digest_is_refused_and_nothing_is_stored(server, stub):
    good = os.urandom(5000)
    other = os.urandom(5000)
    before = _state(server)
    # A batch with one good and one lying chunk: the whole batch is refused.
    code, details = _code(lambda: _put(stub, [(digest(good), codec.encode(good)), (digest(good), codec.encode(other))]))
    assert code == grpc.StatusCode.DATA_LOSS
    assert "digest mismatch" in details
    assert _state(server) == before


def test_oversize_chunk_and_decompression_bomb(server, stub):
    before = _state(server)
    big = os.urandom(300 * 1024)  # over the 256 KiB maximum chunk size
    code, _ = _code(lambda: _put(stub, [(digest(big), codec.encode(big))]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # 64 MiB of zeros compresses to a tiny frame that lies about its length.
    zeros = bytes(64 << 20)
    payload = zstandard.ZstdCompressor(level=3).compress(zeros)
    bomb = struct.pack(">2sBBI", b"SV", 1, 1, 1000) + payload
    code, _ = _code(lambda: _put(stub, [(digest(zeros[:1000]), bomb)]))
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert _state(server) == before


@pytest.mark.parametrize(
    "frame",
    [b"", b"XX\x01\x00\x00\x00\x00\x05hello", b"SV\x09\x00\x00\x00\x00\x05hello", b"SV\x01\x07\x00\x00\x00\x05hello",
     b"SV\x01\x00\x00\x00\x00\x09hello", b"SV\x01\x01\x00\x00\x00\x05notzstd"],
    ids=["empty", "bad-magic", "bad-version", "bad-method", "short-raw", "bad-zstd"],
)
def test_malformed_frames_are_invalid_argument(server, stub, frame):
    before = _state(server)
    code, _ = _code(lambda: _put(stub, [(digest(b"hello"), frame)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert _state(server) == before


def test_bad_digest_length_is_invalid_argument(server, stub):
    code, _ = _code(lambda: stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=[b"short"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_commit_with_missing_chunk_lists_it(server, stub):
    data = os.urandom(1000)
    before = _state(server)
    manifest = pb.Manifest(chunks=[pb.ChunkRef(digest=digest(data), length=1000)], size=1000, file_digest=digest(data))
    request = pb.CommitFileRequest(path=f"t/{uuid.uuid4().hex}", manifest=manifest)
    code, details = _code(lambda: stub.CommitFile(request))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert digest(data).hex()[:16] in details
    keys, files = _state(server)
    assert files == before[1]
    # Only the manifest blob may have been written; no version, head or event keys appeared.
    assert keys == before[0]


def test_inconsistent_manifest_is_invalid_argument(server, stub):
    data = os.urandom(1000)
    manifest = pb.Manifest(chunks=[pb.ChunkRef(digest=digest(data), length=1000)], size=999, file_digest=digest(data))
    code, details = _code(lambda: stub.CommitFile(pb.CommitFileRequest(path="t/x", manifest=manifest)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "size" in details


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", "a/./b", "nul\x00byte", "ctl\x07", "x" * 5000, "dir/"])
def test_hostile_paths_are_invalid_argument(server, stub, path):
    before = _state(server)
    empty = pb.Manifest(size=0, file_digest=digest(b""))
    code, _ = _code(lambda: stub.CommitFile(pb.CommitFileRequest(path=path, manifest=empty)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(lambda: stub.Stat(pb.StatRequest(path=path)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert _state(server) == before


def test_unknown_path_and_version_are_not_found(server, stub):
    code, _ = _code(lambda: stub.Stat(pb.StatRequest(path=f"nope/{uuid.uuid4().hex}")))
    assert code == grpc.StatusCode.NOT_FOUND
    path = f"t/{uuid.uuid4().hex}"
    empty = pb.Manifest(size=0, file_digest=digest(b""))
    stub.CommitFile(pb.CommitFileRequest(path=path, manifest=empty))
    code, details = _code(lambda: stub.GetManifest(pb.GetManifestRequest(path=path, at=pb.VersionSelector(version=7))))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "version 7" in details


def test_garbage_page_token_is_invalid_argument(server, stub):
    code, _ = _code(lambda: stub.ListFiles(pb.ListFilesRequest(page_token="%%%not-base64")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_digests_is_resource_exhausted(server, stub):
    digests = [os.urandom(32) for _ in range(100_001)]
    code, _ = _code(lambda: stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_upload_without_header_is_invalid_argument(server, stub):
    code, _ = _code(lambda: stub.Upload(iter([pb.UploadRequest(data=b"hello")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
