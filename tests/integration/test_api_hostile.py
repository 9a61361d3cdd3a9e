"""Hostile and malformed input over real gRPC: precise status codes, and nothing changes."""

from __future__ import annotations

import hashlib
import os
import struct
import uuid

import grpc
import pytest
import redis
import zstandard
from api_helpers import put_chunks as _put
from stored_chunks import indexed_records, store_format

from cas import codec
from cas.digest import digest
from proto import stratus_pb2 as pb


def _redis_value(client: redis.Redis, key: bytes) -> object:
    """The full value of ``key``, read according to its type."""
    kind = client.type(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        return client.xrange(key)
    if kind == b"string":
        return client.get(key)
    if kind == b"set":
        return sorted(client.smembers(key))
    if kind == b"list":
        return client.lrange(key, 0, -1)
    raise AssertionError(f"unexpected key type {kind!r} for {key!r}")


def _state(server) -> tuple[dict[bytes, object], dict[str, str]]:
    """Every Redis key of this server with its value, and every file of its data dir with its hash;
    of packs, every record the location index names (a refused upload stream may have appended
    records that nothing names: inert bytes, like any discarded batch's)."""
    client = redis.Redis.from_url(server.redis_url)
    try:
        keys = {key: _redis_value(client, key) for key in client.scan_iter(match=f"{server.prefix}:*", count=1000)}
    finally:
        client.close()
    files = {
        str(p.relative_to(server.data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in server.data_dir.rglob("*") if p.is_file() and p.name != "LOCK" and "packs" not in p.parts
    }
    if store_format(server.data_dir) == "packs":
        files.update(indexed_records(server))
    return keys, files


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def stub(server):
    return server.stub()


def test_wrong_digest_is_refused_and_nothing_is_stored(server, stub):
    good = os.urandom(5000)
    other = os.urandom(5000)
    before = _state(server)
    # A batch with one good and one lying chunk: the whole batch is refused.
    code, details = _code(lambda: _put(stub, [(digest(good), codec.encode(good)), (digest(good), codec.encode(other))]))
    assert code == grpc.StatusCode.DATA_LOSS
    assert "digest mismatch" in details
    assert _state(server) == before


def _zstd(data: bytes, content_size: int | None) -> bytes:
    """A zstd frame of ``data`` whose header declares ``content_size`` (None: no content size)."""
    if content_size is None:
        return zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data)
    frame = bytearray(zstandard.ZstdCompressor(level=3).compress(data))
    assert frame[4] >> 6 == 2 and not frame[4] & 0x23  # 4-byte content size after one window byte
    frame[6:10] = struct.pack("<I", content_size)
    return bytes(frame)


ZEROS = bytes(64 << 20)  # compresses to ~2 KB


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">2sBBI", b"SV", 1, 1, len(ZEROS)) + _zstd(ZEROS, len(ZEROS)),
        struct.pack(">2sBBI", b"SV", 1, 1, 1000) + _zstd(ZEROS, len(ZEROS)),
        struct.pack(">2sBBI", b"SV", 1, 1, 1000) + _zstd(ZEROS, 1000),
        struct.pack(">2sBBI", b"SV", 1, 1, 1000) + _zstd(ZEROS, None),
    ],
    ids=["honest-headers", "frame-header-lies", "both-headers-lie", "no-content-size"],
)
def test_decompression_bombs_are_resource_exhausted(server, stub, frame):
    """64 MiB of zeros in a ~2 KB frame, whatever its headers claim: RESOURCE_EXHAUSTED, as documented."""
    before = _state(server)
    code, details = _code(lambda: _put(stub, [(digest(ZEROS[:1000]), frame)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert _state(server) == before


def test_oversize_chunk_is_resource_exhausted(server, stub):
    before = _state(server)
    big = os.urandom(300 * 1024)  # over the 256 KiB maximum chunk size
    code, _ = _code(lambda: _put(stub, [(digest(big), codec.encode(big))]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    small = os.urandom(1000)  # a frame that declares more than the limit is refused from its header
    lying = struct.pack(">2sBBI", b"SV", 1, 0, 300 * 1024) + small
    code, _ = _code(lambda: _put(stub, [(digest(small), lying)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
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
    assert keys == before[0]  # no version, head, event, index or statistics change
    # Only the (unreferenced, content-addressed) manifest blob may have been written.
    assert {name: h for name, h in files.items() if not name.startswith("manifests/")} == {
        name: h for name, h in before[1].items() if not name.startswith("manifests/")}
    assert set(before[1]) <= set(files) and all(files[name] == h for name, h in before[1].items())


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


@pytest.mark.parametrize("method", ["Stat", "CommitFile", "CommitFiles", "FindMissingChunks", "PutChunks", "GetChunks"])
def test_undecodable_request_bytes_are_invalid_argument(server, method):
    """Bytes that are no protobuf message at all: INVALID_ARGUMENT naming the problem, not UNKNOWN."""
    before = _state(server)
    channel, name = server.channel(), f"/stratus.v1.Stratus/{method}"
    garbage = b"\xff\xff\xff\xff"  # a field tag whose varint never ends
    if method == "PutChunks":
        valid = pb.ChunkBatch(chunks=[pb.ChunkData(digest=digest(b"x"), frame=codec.encode(b"x"))])
        call = lambda: channel.stream_unary(name)(iter([valid.SerializeToString(), garbage]))  # noqa: E731
    elif method == "GetChunks":
        call = lambda: list(channel.unary_stream(name)(garbage))  # noqa: E731
    else:
        call = lambda: channel.unary_unary(name)(garbage)  # noqa: E731
    code, details = _code(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "not a valid protobuf message" in details
    assert _state(server) == before
    channel.close()
