"""Delta hints on upload (ChunkData.base_hints) against real mTLS servers.

``alice`` and ``mallory`` have namespaces of their own; ``owner`` lives in ``team`` and ``writer``
may read and write ``inbox/writer/`` there (a chunk view). An edited version's new chunks are
stored as delta records against the previous version's chunks, and the disk holds less than on a
server started with ``delta_hints = false``; every version reads back exactly. A hint is used only
when the caller's own chunk index (its view) holds the base: hints naming anything else change
neither the answers nor how the chunk is stored.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import grpc
import pytest
from stored_chunks import index_entries, stored_bytes
from tls_fixtures import connect, tls_server

from cas.chunker import ChunkParams
from cas.pack import RecordType
from cas.pipeline import EncodedChunk, Pipeline
from cli.client import StratusClient
from cli.smallfiles import upload_group
from proto import stratus_pb2 as pb

ACCESS = """
[identities.alice]
[identities.mallory]
[identities.owner]
namespace = "team"
[identities.writer]

[[grants]]
identities = ["writer"]
namespace = "team"
prefix = "inbox/writer/"
access = "read-write"
"""
CLIENTS = ["alice", "mallory", "owner", "writer"]
WORDS = [f"{w}{n}" for n, w in enumerate("lorem ipsum dolor sit amet consectetur adipiscing elit sed do".split() * 40)]


def text(seed: int, size: int) -> bytes:
    """Source-code-like text: compresses, and differs per seed."""
    rng = random.Random(seed)
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def edited(data: bytes, seed: int, every: int = 20_000) -> bytes:
    """``data`` with a small edit every ``every`` bytes, so nearly every chunk changes a little."""
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(every // 2, every)
        out.append(data[pos:pos + step])
        out.append(f" edit{rng.randint(0, 10**6)} ".encode())
        pos += step
    return b"".join(out)


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    with tls_server(tmp_path_factory.mktemp("hints"), redis_url, CLIENTS, access=ACCESS) as running:
        yield running


@pytest.fixture(scope="module")
def plain_server(redis_url, tmp_path_factory):
    """The same server with delta hints switched off (the A/B baseline)."""
    with tls_server(tmp_path_factory.mktemp("nohints"), redis_url, CLIENTS, access=ACCESS,
                    extra_env={"STRATUS_DELTA_HINTS": "false"}) as running:
        yield running


def encoded(client: StratusClient, data: bytes) -> list[EncodedChunk]:
    """``data`` chunked and framed the way the server wants."""
    info = client.server_info()
    c = info.chunking
    with Pipeline(ChunkParams(c.min_size, c.avg_size, c.max_size), info.compression_level) as pipe:
        return list(pipe.process_stream(io.BytesIO(data)))


def manifest_digests(client: StratusClient, path: str, version: int | None = None) -> list[bytes]:
    at = pb.VersionSelector(version=version or 0)
    return [r.digest for r in client.stub.GetManifest(pb.GetManifestRequest(path=path, at=at)).manifest.chunks]


def kinds(server, digests: list[bytes]) -> list[RecordType]:
    entries = index_entries(server, digests)
    assert all(e is not None for e in entries)
    return [e.type for e in entries]  # type: ignore[union-attr]


def put_one(client: StratusClient, chunk: EncodedChunk, hints: list[bytes]) -> pb.PutChunksResponse:
    data = pb.ChunkData(digest=chunk.digest, frame=chunk.frame, base_hints=hints)
    return client.stub.PutChunks(iter([pb.ChunkBatch(chunks=[data])]))


def test_server_announces_delta_hints_unless_switched_off(server, plain_server):
    with connect(server, "alice") as on, connect(plain_server, "alice") as off:
        assert on.server_info().delta_hints
        assert not off.server_info().delta_hints


@pytest.mark.parametrize("cached", [False, True], ids=["fetched-base", "cached-base"])
def test_edited_version_is_stored_as_deltas_and_smaller(server, plain_server, tmp_path, cached):
    v1 = text(1 + cached, 1_500_000)
    v2 = edited(v1, 3)
    path = f"docs/{'cached' if cached else 'fetched'}.txt"
    grown, sent = {}, {}
    for name, srv in (("hints", server), ("plain", plain_server)):
        cache = tmp_path / f"manifests-{name}" if cached else None
        with StratusClient.connect(srv.address, tls_dir=srv.pki, client_name="alice", manifest_cache=cache) as c:
            c.put_bytes(v1, path)
            before = stored_bytes(srv.data_dir)
            outcome = c.put_bytes(v2, path)
            grown[name] = stored_bytes(srv.data_dir) - before
            sent[name] = (outcome.chunks_sent, outcome.bytes_sent)
            assert outcome.chunks_sent >= 10  # nearly every chunk changed
            assert c.get_bytes(path, version=1) == v1
            assert c.get_bytes(path, version=2) == v2
            old = set(manifest_digests(c, path, 1))
            new = [d for d in manifest_digests(c, path, 2) if d not in old]
        stored = kinds(srv, new)
        if name == "hints":
            assert stored.count(RecordType.DELTA) >= len(new) - 1, stored
            entries = index_entries(srv, new)
            assert all(e.base in old for e in entries if e.type == RecordType.DELTA)  # type: ignore[union-attr]
        else:
            assert RecordType.DELTA not in stored
    assert grown["hints"] < 0.5 * grown["plain"], grown
    assert sent["hints"] == sent["plain"]  # hints change how chunks are stored, not which are sent


def test_chains_past_the_maximum_depth_read_back_exactly(server, tmp_path):
    versions = [text(10, 600_000)]
    for n in range(6):
        versions.append(edited(versions[-1], 20 + n, every=60_000))
    with StratusClient.connect(server.address, tls_dir=server.pki, client_name="alice",
                               manifest_cache=tmp_path / "m") as c:
        for data in versions:
            c.put_bytes(data, "chain/file.txt")
        for n, data in enumerate(versions, start=1):
            assert c.get_bytes("chain/file.txt", version=n) == data
        digests = list(dict.fromkeys(d for n in range(1, len(versions) + 1)
                                     for d in manifest_digests(c, "chain/file.txt", n)))
    entries = index_entries(server, digests)
    depths = [e.depth for e in entries if e is not None]
    assert max(depths) == 4  # chains reached the policy's maximum and stopped there
    assert sum(e.type == RecordType.DELTA for e in entries if e is not None) > len(digests) // 2


def test_a_group_of_small_files_sends_hints_for_edited_files(server, tmp_path):
    with connect(server, "alice") as c:
        files = {f"tree/f{n}.txt": text(100 + n, 60_000) for n in range(4)}
        for path, data in files.items():
            c.put_bytes(data, path)
        local = tmp_path / "tree"
        local.mkdir()
        for path, data in files.items():
            (local / Path(path).name).write_bytes(edited(data, 7, every=8_000))
        outcomes = upload_group(c.remote, [(str(local / Path(p).name), p) for p in files])
        assert [o.status for o in outcomes] == ["uploaded"] * 4
        for path, data in files.items():
            new = manifest_digests(c, path)
            assert c.get_bytes(path) == edited(data, 7, every=8_000)
            assert RecordType.DELTA in kinds(server, new)


def test_hints_the_caller_does_not_hold_are_ignored_like_none(server):
    base, similar = text(30, 70_000), None
    with connect(server, "alice") as alice, connect(server, "mallory") as mallory:
        alice.put_bytes(base, "secret.txt")
        held = encoded(alice, base)
        assert len(held) == 1
        similar = encoded(mallory, edited(base, 31))
        other = encoded(mallory, edited(base, 32))
        assert len(similar) == len(other) == 1
        random_digest = bytes(random.Random(5).randbytes(32))
        # mallory names alice's chunk, a digest nobody holds, and the chunk itself: all ignored
        hinted = put_one(mallory, similar[0], [held[0].digest, random_digest, similar[0].digest])
        unhinted = put_one(mallory, other[0], [])
        assert (hinted.received, hinted.stored) == (unhinted.received, unhinted.stored) == (1, 1)
        assert hinted.frame_bytes == len(similar[0].frame)
        assert kinds(server, [similar[0].digest, other[0].digest]) == [RecordType.CHUNK, RecordType.CHUNK]
        # the same hint from the namespace that holds the base is used
        mine = encoded(alice, edited(base, 33))
        assert put_one(alice, mine[0], [held[0].digest]).stored == 1
        assert kinds(server, [mine[0].digest]) == [RecordType.DELTA]
        assert alice.stub.GetChunks(pb.GetChunksRequest(digests=[mine[0].digest])) is not None


@pytest.mark.parametrize("hints", [[b"\x01" * 32] * 4, [b"\x02" * 31]], ids=["four-hints", "short-digest"])
def test_malformed_hints_are_invalid_argument(server, hints):
    with connect(server, "mallory") as mallory:
        chunk = encoded(mallory, text(40, 30_000))[0]
        with pytest.raises(grpc.RpcError) as refused:
            put_one(mallory, chunk, hints)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert mallory.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=[chunk.digest])).missing


def test_prefix_grantee_hints_only_within_its_chunk_view(server):
    private = text(50, 70_000)
    with connect(server, "owner") as owner, connect(server, "writer", namespace="team") as writer:
        owner.put_bytes(private, "private/plan.txt")
        outside = encoded(owner, private)[0].digest
        # a chunk of the namespace outside the writer's prefix is not a base the writer may use
        probe = encoded(writer, edited(private, 51))[0]
        assert put_one(writer, probe, [outside]).stored == 1
        assert kinds(server, [probe.digest]) == [RecordType.CHUNK]
        # versions under its own prefix are
        v1 = text(52, 900_000)
        v2 = edited(v1, 53)
        writer.put_bytes(v1, "inbox/writer/notes.txt")
        writer.put_bytes(v2, "inbox/writer/notes.txt")
        assert writer.get_bytes("inbox/writer/notes.txt") == v2
        assert owner.get_bytes("inbox/writer/notes.txt", version=1) == v1
        old = set(manifest_digests(writer, "inbox/writer/notes.txt", 1))
        new = [d for d in manifest_digests(writer, "inbox/writer/notes.txt", 2) if d not in old]
        assert RecordType.DELTA in kinds(server, new)
