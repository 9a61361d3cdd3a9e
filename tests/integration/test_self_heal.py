"""Self-healing storage against real mTLS servers: a damaged or missing chunk is never served,
never reported present, and is replaced by the next verified copy that arrives."""

from __future__ import annotations

import json
import os
import uuid

import grpc
import pytest
from cli_helpers import Cli, isolated_env
from server_fixtures import RunningServer, drop_prefix, new_prefix
from stored_chunks import damage_mark, flip_chunk, lose_chunk, read_frame, store_format
from tls_fixtures import connect, tls_server

from cas import codec
from cas.errors import IntegrityError
from cli.client import StratusClient
from proto import stratus_pb2 as pb

ACCESS = """
[identities.alice]
namespace = "team"

[identities.bob]

[identities.ops]
admin = true
"""


@pytest.fixture(scope="module")
def heal_server(redis_url, tmp_path_factory):
    with tls_server(tmp_path_factory.mktemp("heal"), redis_url, ["alice", "bob", "ops"], access=ACCESS) as running:
        yield running


def chunks_of(client: StratusClient, path: str) -> list[bytes]:
    return [c.digest for c in client.stub.GetManifest(pb.GetManifestRequest(path=path)).manifest.chunks]


def damage(server, d: bytes, how: str) -> None:
    if how == "flip":
        flip_chunk(server.data_dir, d)
    else:
        lose_chunk(server, d)


def content() -> bytes:
    """~890 KB, at least four chunks (the largest is 256 KiB): random bytes (raw frames) and text
    (zstd frames)."""
    return os.urandom(700_000) + (uuid.uuid4().hex * 6000).encode()


def assert_good_copy(server, d: bytes) -> None:
    codec.decode_verified(d, read_frame(server.data_dir, d), 1 << 20)
    assert not damage_mark(server.data_dir, d).exists()


def missing_for(client: StratusClient, digests: list[bytes]) -> list[bytes]:
    return list(client.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing)


def check_store(server, read_data: bool) -> pb.CheckStoreResponse:
    with connect(server, "ops") as ops:
        return ops.check_store(read_data)


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_another_tenants_upload_repairs_a_damaged_chunk(heal_server, how):
    data = content()
    with connect(heal_server, "alice") as alice, connect(heal_server, "bob") as bob:
        alice.put_bytes(data, "old/file.bin")
        target = chunks_of(alice, "old/file.bin")[1]
        damage(heal_server, target, how)
        # (b) before the repair: an integrity failure, never the damaged bytes
        with pytest.raises(IntegrityError):
            alice.get_bytes("old/file.bin")
        # (a) bob uploads the same content: every chunk travels (his namespace has none of them),
        # the server replaces the damaged copy with his verified one
        result = bob.put_bytes(data, "mine.bin")
        assert result.chunks_sent == result.chunks_total
        assert bob.get_bytes("mine.bin") == data
        assert_good_copy(heal_server, target)
        # (b) after the repair alice's old version reads back byte-identical
        assert alice.get_bytes("old/file.bin") == data
        assert missing_for(alice, [target]) == []


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_same_tenant_upload_sends_a_chunk_known_damaged(heal_server, how):
    data = content()
    with connect(heal_server, "alice") as alice:
        alice.put_bytes(data, "same/v1.bin")
        digests = chunks_of(alice, "same/v1.bin")
        target = digests[0]
        damage(heal_server, target, how)
        assert missing_for(alice, digests) == []  # not known yet: nothing has read it
        # The server finds it: on any read of a missing file, and on a Download (which it decodes).
        with pytest.raises(grpc.RpcError) as info:
            b"".join(r.data for r in alice.stub.Download(pb.DownloadRequest(path="same/v1.bin")))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert target.hex() in info.value.details()
        # Known damaged: "missing" for every namespace, and never served.
        assert missing_for(alice, digests) == [target]
        with pytest.raises(grpc.RpcError) as info:
            list(alice.stub.GetChunks(pb.GetChunksRequest(digests=[target])))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(IntegrityError):
            alice.get_bytes("same/v1.bin")
        # (a) a fresh upload of the same content by the same tenant sends exactly that chunk
        result = alice.put_bytes(data, "same/v2.bin")
        assert (result.chunks_sent, result.chunks_total) == (1, len(digests))
        assert_good_copy(heal_server, target)
        assert alice.get_bytes("same/v2.bin") == data
        assert alice.get_bytes("same/v1.bin") == data


def test_commit_never_references_a_damaged_chunk(heal_server):
    """A client that skips FindMissingChunks is told at commit to send the damaged chunk."""
    data = content()
    with connect(heal_server, "alice") as alice:
        alice.put_bytes(data, "contagion/a.bin")
        manifest = alice.stub.GetManifest(pb.GetManifestRequest(path="contagion/a.bin")).manifest
        target = manifest.chunks[2].digest
        lose_chunk(heal_server, target)
        with pytest.raises(grpc.RpcError):
            list(alice.stub.GetChunks(pb.GetChunksRequest(digests=[target])))
        with pytest.raises(grpc.RpcError) as info:
            alice.stub.CommitFile(pb.CommitFileRequest(path="contagion/b.bin", manifest=manifest))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(Exception):  # noqa: B017 - any error: the path must not exist
            alice.stat("contagion/b.bin")
        # the client library re-sends what the commit reports missing and commits again
        alice.put_bytes(data, "contagion/b.bin")
        assert alice.get_bytes("contagion/a.bin") == data


def test_admin_check_finds_damage_and_uploads_repair_it(heal_server, tmp_path):
    data = content()
    with connect(heal_server, "alice") as alice:
        alice.put_bytes(data, "checked/file.bin")
        digests = chunks_of(alice, "checked/file.bin")
    flipped, deleted = digests[0], digests[-1]
    flip_chunk(heal_server.data_dir, flipped)
    lose_chunk(heal_server, deleted)
    # a header-only check finds the lost chunk through the namespaces' chunk index; a flipped
    # payload only with --read-data in the files layout, always in packs (every record has a CRC)
    quick = check_store(heal_server, read_data=False)
    assert quick.missing == 1 and deleted in quick.damaged_digests
    assert (flipped in quick.damaged_digests) == (store_format(heal_server.data_dir) == "packs")
    # (c) the CLI: `stratus admin check --read-data` (admin identity) finds the flip, exit 5
    cli = Cli(heal_server.address, tmp_path, isolated_env(tmp_path))
    conn = ["--server", heal_server.address, "--tls-dir", str(heal_server.pki)]
    result = cli("--json", *conn, "--client-name", "ops", "admin", "check", "--read-data", connect=False, code=5)
    doc = json.loads(result.stdout)
    assert doc["damaged"] == (store_format(heal_server.data_dir) == "files") and doc["read_data"] is True
    assert {flipped.hex(), deleted.hex()} <= set(doc["damaged_digests"])
    assert doc["chunks_checked"] >= len(digests) - 1
    # not for other identities
    result = cli(*conn, "--client-name", "alice", "admin", "check", connect=False, code=1)
    assert "admin role" in result.stderr
    with connect(heal_server, "alice") as alice:
        assert set(missing_for(alice, digests)) == {flipped, deleted}
        result = alice.put_bytes(data, "checked/again.bin")
        assert result.chunks_sent == 2
        assert alice.get_bytes("checked/file.bin") == data
    assert_good_copy(heal_server, flipped)
    assert_good_copy(heal_server, deleted)
    after = check_store(heal_server, read_data=True)
    assert (after.damaged, after.missing) == (0, 0)
    assert not {flipped, deleted} & set(after.damaged_digests)


def test_marks_survive_a_restart(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix).start()
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            data = content()
            client.put_bytes(data, "r.bin")
            target = chunks_of(client, "r.bin")[0]
            flip_chunk(server.data_dir, target)
            assert client.check_store(read_data=True).damaged == 1
        server.stop()
        server.start()
        with StratusClient.connect(server.address, insecure=True) as client:
            assert missing_for(client, [target]) == [target]
            assert client.put_bytes(data, "r2.bin").chunks_sent == 1
            assert client.get_bytes("r.bin") == data
    finally:
        server.stop()
        drop_prefix(redis_url, prefix)


# ---- commits are checked against the store --------------------------------------------------


def _lying_manifest(manifest: pb.Manifest, index: int) -> pb.Manifest:
    """The manifest with chunk ``index`` one byte longer than it is (size adjusted to match)."""
    lie = pb.Manifest()
    lie.CopyFrom(manifest)
    lie.chunks[index].length += 1
    lie.size += 1
    return lie


def test_commit_refuses_chunk_lengths_that_contradict_the_store(heal_server):
    data = content()
    with connect(heal_server, "alice") as alice:
        alice.put_bytes(data, "lengths/true.bin")
        manifest = alice.stub.GetManifest(pb.GetManifestRequest(path="lengths/true.bin")).manifest
        # a chunk below the maximum size, so the lie is still a valid length (only the store contradicts it)
        index = next(i for i, c in enumerate(manifest.chunks) if c.length < 256 * 1024)
        lie = _lying_manifest(manifest, index)
        wrong = lie.chunks[index]
        expected = (f"chunk {wrong.digest.hex()} a length of {wrong.length} bytes but the stored chunk has "
                    f"{wrong.length - 1} bytes")
        # CommitFile
        with pytest.raises(grpc.RpcError) as info:
            alice.stub.CommitFile(pb.CommitFileRequest(path="lengths/lie.bin", manifest=lie))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in info.value.details()
        # CommitFiles: that entry fails with the same status, the honest one is committed
        reply = alice.stub.CommitFiles(pb.CommitFilesRequest(files=[
            pb.CommitFileRequest(path="lengths/lie.bin", manifest=lie),
            pb.CommitFileRequest(path="lengths/honest.bin", manifest=manifest),
        ]))
        assert reply.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert expected in reply.results[0].error.message
        assert reply.results[1].ok.version.version == 1
        # a manifest delta whose literal chunk lies about its length
        head = alice.stat("lengths/true.bin")
        n = len(manifest.chunks)
        delta = pb.CommitFileRequest(
            path="lengths/true.bin",
            manifest=pb.Manifest(size=lie.size, file_digest=manifest.file_digest),
            base_manifest_digest=head.manifest_digest,
            pieces=[*([pb.ManifestPiece(copy=pb.ManifestRun(start=0, count=index))] if index else []),
                    pb.ManifestPiece(chunk=wrong),
                    *([pb.ManifestPiece(copy=pb.ManifestRun(start=index + 1, count=n - index - 1))]
                      if index + 1 < n else [])],
        )
        with pytest.raises(grpc.RpcError) as info:
            alice.stub.CommitFile(delta)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in info.value.details()
        # nothing was written
        assert [f.path for f in alice.iter_files("lengths/")] == ["lengths/honest.bin", "lengths/true.bin"]
        assert alice.stat("lengths/true.bin").version == head.version
        assert alice.get_bytes("lengths/true.bin") == data
