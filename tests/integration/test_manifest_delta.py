"""Manifest deltas against a real server: a re-upload with a warm manifest cache moves little
metadata, the server validates every delta and only accepts a base of the same path."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import grpc
import pytest
from cli_helpers import MIB, write_random

from cas.digest import digest
from cas.manifest import ChunkRef, Manifest
from cli.client import StratusClient, channel_options
from cli.manifestdelta import ManifestCache, commit_file, delta_pieces
from proto import stratus_pb2 as pb

pytest_plugins = ["cli_fixtures"]  # the `cli` fixture

KIB = 1024


class RequestBytes(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Sums the serialised size of every request message, per method."""

    def __init__(self) -> None:
        self.by_method: collections.Counter[str] = collections.Counter()

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        self.by_method[details.method.rsplit("/", 1)[-1]] += request.ByteSize()
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        name = details.method.rsplit("/", 1)[-1]

        def counted():  # noqa: ANN202
            for message in request_iterator:
                self.by_method[name] += message.ByteSize()
                yield message

        return continuation(details, counted())

    def metadata_bytes(self) -> int:
        """Everything except the chunk frames of PutChunks."""
        return sum(n for method, n in self.by_method.items() if method != "PutChunks")


def counted_client(server, cache: Path | None) -> tuple[StratusClient, RequestBytes]:
    counter = RequestBytes()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address, options=channel_options()), counter)
    return StratusClient(channel, target=server.address, manifest_cache=cache), counter


def scatter_edits(path: Path, count: int = 10, size: int = 4 * KIB) -> None:
    total = path.stat().st_size
    with open(path, "r+b") as f:
        for n in range(count):
            f.seek((2 * n + 1) * total // (2 * count + 1))
            f.write(os.urandom(size))


def file_chunks(client: StratusClient, path: str) -> tuple[pb.VersionInfo, Manifest]:
    response = client.stub.GetManifest(pb.GetManifestRequest(path=path))
    refs = tuple(ChunkRef(bytes(c.digest), c.length) for c in response.manifest.chunks)
    return response.version, Manifest(refs, response.manifest.size, bytes(response.manifest.file_digest))


def delta_commit(path: str, base_digest: bytes, pieces: list[pb.ManifestPiece], size: int,
                 file_digest: bytes) -> pb.CommitFileRequest:
    return pb.CommitFileRequest(
        path=path, manifest=pb.Manifest(size=size, file_digest=file_digest),
        base_manifest_digest=base_digest, pieces=pieces,
    )


def copy(start: int, count: int) -> pb.ManifestPiece:
    return pb.ManifestPiece(copy=pb.ManifestRun(start=start, count=count))


# ---- the client ------------------------------------------------------------------------------


def test_warm_cache_reupload_sends_little_metadata(server, prefix, tmp_path):
    src = write_random(tmp_path / "big", 64 * MIB)
    client, counter = counted_client(server, tmp_path / "manifests")
    cold, cold_counter = counted_client(server, None)
    with client, cold:
        assert client.server_info().manifest_deltas
        first = client.put_file(src, prefix + "big")
        assert not first.manifest_delta
        scatter_edits(src)

        counter.by_method.clear()
        put = client.put_file(src, prefix + "big")
        assert put.manifest_delta and not put.unchanged and put.version.version == 2
        assert 0 < put.chunks_sent <= 25 and put.digests_checked <= 2 * put.chunks_sent
        # The README's promise: ~1 KB of metadata for ten 4 KiB edits, whatever the file size (one
        # digest asked about, one literal chunk and one copied run per changed chunk: ~90 bytes).
        # Measured: ~1,000 bytes for 10-11 changed chunks of this 64 MiB file.
        assert counter.metadata_bytes() <= 90 * put.chunks_sent + 200, counter.by_method
        assert counter.metadata_bytes() < 2_500, counter.by_method

        # The same change without the cache: every digest twice (the control for the bound above).
        cold.put_file(src, prefix + "cold")
        scatter_edits(src)
        cold_counter.by_method.clear()
        full = cold.put_file(src, prefix + "cold")
        assert not full.manifest_delta and full.digests_checked >= full.chunks_total * 0.9
        assert cold_counter.metadata_bytes() > 60_000, cold_counter.by_method

        # The delta-committed version is the file, byte for byte, for a reader without any cache.
        cold.get_file(prefix + "big", tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() != src.read_bytes()  # src changed again since
        second = client.put_file(src, prefix + "big")
        assert second.manifest_delta
        cold.get_file(prefix + "big", tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == src.read_bytes()
        assert client.stat(prefix + "big").manifest_digest == cold.stat(prefix + "cold").manifest_digest


def test_get_file_fills_the_cache(server, prefix, tmp_path):
    src = write_random(tmp_path / "src", 8 * MIB)
    writer, _ = counted_client(server, None)
    reader, counter = counted_client(server, tmp_path / "manifests")
    with writer, reader:
        writer.put_file(src, prefix + "f")
        local = tmp_path / "local"
        reader.get_file(prefix + "f", local)
        scatter_edits(local, count=2)
        counter.by_method.clear()
        put = reader.put_file(local, prefix + "f")
        assert put.manifest_delta
        assert counter.by_method["CommitFile"] < 2_000, counter.by_method
        assert writer.get_bytes(prefix + "f") == local.read_bytes()


def test_unknown_base_falls_back_to_the_full_manifest(server, prefix, tmp_path):
    client, _ = counted_client(server, tmp_path / "manifests")
    with client:
        a = client.put_bytes(os.urandom(6 * MIB), prefix + "a")
        _, manifest = file_chunks(client, prefix + "a")
        # A stale base: the manifest of another path is refused, so the full form goes instead.
        data = os.urandom(6 * MIB)
        client.put_bytes(data, prefix + "b")
        _, b_manifest = file_chunks(client, prefix + "b")
        full = pb.CommitFileRequest(path=prefix + "b", manifest=pb.Manifest(
            chunks=[pb.ChunkRef(digest=c.digest, length=c.length) for c in b_manifest.chunks][::-1],
            size=b_manifest.size, file_digest=b_manifest.file_digest))
        bad = delta_commit(prefix + "b", bytes.fromhex(a.version.manifest_digest),
                           delta_pieces(manifest.chunks, b_manifest.chunks), b_manifest.size,
                           b_manifest.file_digest)
        response, used = commit_file(client._remote, full, bad)
        assert used is None and response.version.version == 2
        assert response.version.chunk_count == len(b_manifest.chunks)


def test_manifest_cache_rejects_a_corrupt_entry(tmp_path):
    refs = tuple(ChunkRef(os.urandom(32), 1000) for _ in range(100))
    manifest = Manifest(refs, 100_000, os.urandom(32))
    cache = ManifestCache(tmp_path)
    cache.put(manifest)
    assert cache.get(manifest.digest()) == manifest
    (entry,) = tmp_path.glob("*.svm")
    entry.write_bytes(entry.read_bytes()[:-1] + b"\0")
    assert cache.get(manifest.digest()) is None


def test_delta_pieces_round_trip():
    base = [ChunkRef(bytes([n]) * 32, 100 + n) for n in range(50)]
    new = base[:10] + [ChunkRef(b"x" * 32, 7)] + base[11:30] + base[40:] + base[30:40] + [base[0]]
    pieces = delta_pieces(base, new)
    expanded: list[ChunkRef] = []
    for p in pieces:
        if p.WhichOneof("piece") == "copy":
            expanded.extend(base[p.copy.start : p.copy.start + p.copy.count])
        else:
            expanded.append(ChunkRef(p.chunk.digest, p.chunk.length))
    assert expanded == new
    assert sum(p.WhichOneof("piece") == "chunk" for p in pieces) == 1 and len(pieces) == 6


# ---- the server's checks ---------------------------------------------------------------------------


def test_server_expands_a_valid_delta(server, prefix, tmp_path):
    client, _ = counted_client(server, None)
    with client:
        data = os.urandom(5 * MIB)
        first = client.put_bytes(data, prefix + "f")
        _, base = file_chunks(client, prefix + "f")
        n = len(base.chunks)
        assert n > 10
        # Rotate: the last chunks first. Content, size and digest follow from the base.
        tail = sum(c.length for c in base.chunks[n - 3 :])
        rotated = data[-tail:] + data[:-tail]
        request = delta_commit(prefix + "f", bytes.fromhex(first.version.manifest_digest),
                               [copy(n - 3, 3), copy(0, n - 3)],
                               len(data), digest(rotated))
        response = client.stub.CommitFile(request)
        assert response.version.version == 2 and response.version.chunk_count == n
        assert client.get_bytes(prefix + "f") == rotated
        # An older version of the same path is a valid base too.
        again = delta_commit(prefix + "f", bytes.fromhex(first.version.manifest_digest), [copy(0, n)], len(data),
                             base.file_digest)
        assert client.stub.CommitFile(again).version.version == 3
        assert client.get_bytes(prefix + "f") == data


@pytest.mark.parametrize("pieces, size_delta", [
    ([copy(0, 0)], 0),            # an empty run
    (["last+1"], 0),              # past the end
    ([copy(2**32 - 1, 2)], 0),    # overflowing start
    (["all"], 1),                 # size not the sum of the chunks
])
def test_bad_delta_is_invalid_argument_and_changes_nothing(server, prefix, pieces, size_delta):
    client, _ = counted_client(server, None)
    with client:
        data = os.urandom(3 * MIB)
        first = client.put_bytes(data, prefix + "f")
        _, base = file_chunks(client, prefix + "f")
        n = len(base.chunks)
        real = {"last+1": copy(n - 1, 2), "all": copy(0, n)}
        request = delta_commit(prefix + "f", bytes.fromhex(first.version.manifest_digest),
                               [real.get(p, p) if isinstance(p, str) else p for p in pieces],
                               len(data) + size_delta, base.file_digest)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CommitFile(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        head = client.stat(prefix + "f")
        assert head.version == 1 and head.manifest_digest.hex() == first.version.manifest_digest
        assert client.get_bytes(prefix + "f") == data


def test_delta_with_chunks_in_the_manifest_is_invalid(server, prefix):
    client, _ = counted_client(server, None)
    with client:
        first = client.put_bytes(os.urandom(MIB), prefix + "f")
        _, base = file_chunks(client, prefix + "f")
        request = delta_commit(prefix + "f", bytes.fromhex(first.version.manifest_digest), [copy(0, len(base.chunks))],
                               base.size, base.file_digest)
        request.manifest.chunks.add(digest=base.chunks[0].digest, length=base.chunks[0].length)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CommitFile(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_base_of_another_path_is_refused(server, prefix):
    client, _ = counted_client(server, None)
    with client:
        secret = client.put_bytes(os.urandom(2 * MIB), prefix + "secret")
        _, secret_manifest = file_chunks(client, prefix + "secret")
        mine = client.put_bytes(os.urandom(2 * MIB), prefix + "mine")
        n = len(secret_manifest.chunks)
        steal = delta_commit(prefix + "mine", bytes.fromhex(secret.version.manifest_digest), [copy(0, n)],
                             secret_manifest.size, secret_manifest.file_digest)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CommitFile(steal)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # A path with no versions at all, and a base nobody has.
        steal.path = prefix + "new"
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CommitFile(steal)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        steal.path, steal.base_manifest_digest = prefix + "mine", os.urandom(32)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CommitFile(steal)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The same in a batch: refused per file, the other file commits.
        steal.base_manifest_digest = bytes.fromhex(secret.version.manifest_digest)
        ok = delta_commit(prefix + "secret", bytes.fromhex(secret.version.manifest_digest), [copy(0, n)],
                          secret_manifest.size, secret_manifest.file_digest)
        ok.mode = 0o600
        results = client.stub.CommitFiles(pb.CommitFilesRequest(files=[steal, ok])).results
        assert results[0].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert results[1].ok.version.version == 2
        assert client.stat(prefix + "mine").manifest_digest.hex() == mine.version.manifest_digest


# ---- the CLI ----------------------------------------------------------------------------------------


def test_cli_put_twice_uses_the_delta(cli, prefix, tmp_path):
    src = write_random(tmp_path / "data.bin", 12 * MIB)
    first = cli.json("put", str(src), prefix + "data.bin")
    assert first["files"][0]["manifest_delta"] is False
    scatter_edits(src, count=3)
    second = cli.json("put", str(src), prefix + "data.bin")
    (outcome,) = second["files"]
    assert outcome["status"] == "uploaded" and outcome["manifest_delta"] is True
    assert outcome["chunks_sent"] < outcome["chunks_total"] // 4
    assert any((tmp_path / "cache" / "manifests").glob("*.svm"))
    cli("get", prefix + "data.bin", str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
