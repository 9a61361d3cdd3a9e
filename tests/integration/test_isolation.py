"""No tenant learns anything about another namespace, through any call (real mTLS server).

alice stores some content. carol probes every call of the API with that content, its digests and
its path *before* alice stores it (nobody holds it); bob probes the same way *after*. Every answer
- response fields, status codes, error messages, trailers - must be the same for both, once the
prober's own name and the times are taken out.
"""

from __future__ import annotations

import io
import os
import re
import time

import grpc
import pytest
from tls_fixtures import connect, tls_server

from cas.chunker import ChunkParams
from cas.digest import digest, new_hasher
from cas.manifest import Manifest, ManifestBuilder
from cas.pipeline import Pipeline
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb

PATH = "secret/plan.bin"


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    with tls_server(tmp_path_factory.mktemp("isolation"), redis_url, ["alice", "bob", "carol"]) as running:
        yield running


class Content:
    """Bytes chunked exactly as the server chunks them: digests, frames and the manifest."""

    def __init__(self, data: bytes, info: pb.ServerInfoResponse) -> None:
        c = info.chunking
        hasher, builder = new_hasher(), ManifestBuilder()
        with Pipeline(ChunkParams(c.min_size, c.avg_size, c.max_size), info.compression_level) as pipe:
            chunks = list(pipe.process_stream(io.BytesIO(data), hasher))
        for chunk in chunks:
            builder.add(chunk.digest, chunk.length)
        self.data = data
        self.frames = [(chunk.digest, chunk.frame) for chunk in chunks]
        self.digests = [d for d, _ in self.frames]
        self.manifest: Manifest = builder.build(hasher.digest())

    def manifest_message(self) -> pb.Manifest:
        m = self.manifest
        return pb.Manifest(chunks=[pb.ChunkRef(digest=r.digest, length=r.length) for r in m.chunks],
                           size=m.size, file_digest=m.file_digest)


class Normalizer:
    """Replaces what legitimately differs between two probers: their names, digests, times."""

    def __init__(self, name: str, content: Content) -> None:
        self.name = name
        self.names = {d: f"<chunk {n}>" for n, d in enumerate(content.digests)}
        self.names[content.manifest.digest()] = "<manifest>"
        self.names[content.manifest.file_digest] = "<file>"

    def digest(self, d: bytes) -> str:
        return self.names.get(d, "<other digest>")

    def text(self, text: str) -> str:
        for d, label in self.names.items():
            text = text.replace(d.hex(), label).replace(d.hex()[:16], label)
        return re.sub(rf"\b{self.name}\b", "<me>", text)

    def error(self, err: grpc.RpcError) -> tuple:
        detail = error_detail(err) or pb.ErrorDetail()
        missing = list(detail.missing_chunks.digests)
        del detail.missing_chunks.digests[:]  # compared by name below; the rest of the detail as text
        return (err.code().name, self.text(err.details() or ""), self.text(str(detail)),
                [self.digest(d) for d in missing])

    def version(self, v: pb.VersionInfo) -> tuple:
        return (v.path, v.version, self.digest(v.manifest_digest), v.size, self.text(v.identity), v.deleted,
                v.chunk_count, v.new_chunks, v.new_bytes, self.digest(v.file_digest))

    def event(self, e: pb.Event) -> tuple:
        return (e.kind, e.path, e.version, e.size, self.text(e.identity), self.digest(e.manifest_digest))


def attempt(norm: Normalizer, fn):
    """The call's normalised answer, or its normalised error."""
    try:
        return ("ok", fn())
    except grpc.RpcError as err:
        return ("error", norm.error(err))


def diff_answer(n: Normalizer, d: pb.DiffResponse) -> tuple:
    return (n.version(d.to), list(d.changed), d.shared_chunks, d.new_chunks, d.shared_bytes, d.new_bytes)


def probe(client, name: str, content: Content) -> dict[str, object]:
    """Every call of the API aimed at ``content`` and PATH, answers normalised."""
    stub, n = client.stub, Normalizer(name, content)
    out: dict[str, object] = {}
    digests = content.digests
    stats = stub.ServerInfo(pb.ServerInfoRequest()).stats
    out["ServerInfo"] = (n.text(stub.ServerInfo(pb.ServerInfoRequest()).namespace), str(stats))
    out["FindMissingChunks"] = attempt(n, lambda: [n.digest(d) for d in stub.FindMissingChunks(
        pb.FindMissingChunksRequest(digests=digests)).missing])
    out["GetChunks"] = attempt(n, lambda: [len(b.chunks) for b in stub.GetChunks(pb.GetChunksRequest(digests=digests))])
    out["GetChunks one"] = attempt(n, lambda: list(stub.GetChunks(pb.GetChunksRequest(digests=digests[-1:]))))
    out["ReportDamagedChunks"] = attempt(n, lambda: list(stub.ReportDamagedChunks(
        pb.ReportDamagedChunksRequest(digests=digests)).damaged))
    out["GetManifest"] = attempt(n, lambda: stub.GetManifest(pb.GetManifestRequest(path=PATH)).version.version)
    out["GetManifests"] = attempt(n, lambda: [
        (r.WhichOneof("result"), r.error.code, n.text(r.error.message))
        for r in stub.GetManifests(pb.GetManifestsRequest(files=[pb.GetManifestRequest(path=PATH)])).results])
    out["Stat"] = attempt(n, lambda: n.version(stub.Stat(pb.StatRequest(path=PATH))))
    out["ListVersions"] = attempt(n, lambda: list(stub.ListVersions(pb.ListVersionsRequest(path=PATH)).versions))
    out["Diff"] = attempt(n, lambda: stub.Diff(pb.DiffRequest(path=PATH)).new_chunks)
    out["Download"] = attempt(n, lambda: [len(m.data) for m in stub.Download(pb.DownloadRequest(path=PATH))])
    out["ListFiles"] = attempt(n, lambda: [f.path for f in stub.ListFiles(pb.ListFilesRequest()).files])
    out["ListFiles secret/"] = attempt(n, lambda: [
        f.path for f in stub.ListFiles(pb.ListFilesRequest(prefix="secret/", include_deleted=True)).files])
    out["Changes"] = attempt(n, lambda: [n.event(e) for e in stub.Changes(pb.ChangesRequest()).events])
    out["Watch"] = attempt(n, lambda: [n.event(e) for e in stub.Watch(pb.WatchRequest(since="0"), timeout=1.5)])
    out["Delete"] = attempt(n, lambda: n.version(stub.Delete(pb.DeleteRequest(path=PATH))))
    commit = pb.CommitFileRequest(path=PATH, manifest=content.manifest_message())
    out["CommitFile unheld chunks"] = attempt(n, lambda: n.version(stub.CommitFile(commit).version))
    delta = pb.CommitFileRequest(
        path=PATH, manifest=pb.Manifest(size=content.manifest.size, file_digest=content.manifest.file_digest),
        base_manifest_digest=content.manifest.digest(),
        pieces=[pb.ManifestPiece(copy=pb.ManifestRun(start=0, count=len(content.manifest.chunks)))],
    )
    out["CommitFile delta on their manifest"] = attempt(n, lambda: n.version(stub.CommitFile(delta).version))
    out["CommitFiles unheld chunks"] = attempt(n, lambda: [
        (r.error.code, n.text(r.error.message), [n.digest(d) for d in r.error.detail.missing_chunks.digests])
        for r in stub.CommitFiles(pb.CommitFilesRequest(files=[commit, delta])).results])
    put = stub.PutChunks(iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f in content.frames])]))
    out["PutChunks"] = (put.received, put.stored, put.frame_bytes)
    again = stub.PutChunks(iter([pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f in content.frames])]))
    out["PutChunks again"] = (again.received, again.stored, again.frame_bytes)
    out["CommitFile held chunks"] = attempt(n, lambda: n.version(stub.CommitFile(commit).version))
    out["GetChunks held"] = attempt(n, lambda: [
        (n.digest(c.digest), len(c.frame)) for b in stub.GetChunks(pb.GetChunksRequest(digests=digests))
        for c in b.chunks])
    out["ReportDamagedChunks held"] = attempt(n, lambda: list(stub.ReportDamagedChunks(
        pb.ReportDamagedChunksRequest(digests=digests)).damaged))
    upload = stub.Upload(iter([pb.UploadRequest(header=pb.UploadHeader(path="secret/copy.bin")),
                               pb.UploadRequest(data=content.data)]))
    out["Upload"] = n.version(upload.version)
    out["Diff held"] = attempt(n, lambda: diff_answer(n, stub.Diff(pb.DiffRequest(path=PATH))))
    out["ServerInfo after"] = str(stub.ServerInfo(pb.ServerInfoRequest()).stats)
    return out


def test_every_call_answers_the_same_whether_another_namespace_holds_the_content(server):
    data = os.urandom(700_000) + b"tail" * 50_000
    with connect(server, "alice") as alice, connect(server, "bob") as bob, connect(server, "carol") as carol:
        content = Content(data, alice.info())
        assert len(content.digests) >= 3
        nobody = probe(carol, "carol", content)
        alice.put_bytes(data, PATH)
        alice.put_bytes(data, "secret/copy.bin")
        assert alice.get_bytes(PATH) == data
        somebody = probe(bob, "bob", content)
    assert nobody == somebody
    # and the answers are the ones of a namespace that holds nothing
    assert nobody["FindMissingChunks"] == ("ok", [f"<chunk {i}>" for i in range(len(content.digests))])
    assert nobody["GetChunks"][1][0] == "NOT_FOUND"
    assert nobody["GetChunks one"][1][0] == "NOT_FOUND"
    assert nobody["ReportDamagedChunks"] == ("ok", [False] * len(content.digests))
    assert nobody["CommitFile unheld chunks"][1][0] == "FAILED_PRECONDITION"
    assert nobody["CommitFile delta on their manifest"][1][0] == "NOT_FOUND"
    assert nobody["PutChunks"][:2] == (len(content.digests), len(content.digests))
    assert nobody["PutChunks again"][:2] == (len(content.digests), 0)


def test_stored_counts_only_the_callers_own_namespace(server):
    # The finding: uploading another tenant's exact bytes returned stored 0, a wrong guess 1.
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        secret = os.urandom(50_000)
        alice.put_bytes(secret, "guess/secret.bin")
        content = Content(secret, bob.info())
        guess = Content(os.urandom(50_000), bob.info())

        def stored(c: Content) -> int:
            batch = pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f in c.frames])
            return bob.stub.PutChunks(iter([batch])).stored

        assert stored(content) == len(content.digests) and stored(guess) == len(guess.digests)
        assert stored(content) == 0 and stored(guess) == 0  # now bob's own


def test_another_tenants_activity_does_not_move_my_statistics_or_feed(server):
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        bob.put_bytes(b"bob's own", "mine.txt")
        before, (_, cursor) = bob.info().stats, bob.changes()
        for n in range(3):
            alice.put_bytes(os.urandom(30_000), f"busy/{n}.bin")
        alice.delete("busy/0.bin")
        assert bob.info().stats == before
        assert bob.changes(since=cursor)[0] == []
        events = []
        deadline = time.monotonic() + 1.5
        try:
            for event in bob.stub.Watch(pb.WatchRequest(since=cursor), timeout=max(0.1, deadline - time.monotonic())):
                events.append(event)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert events == []


def test_get_chunks_of_a_digest_only_another_namespace_holds_is_not_found_like_nobodys(server):
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        data = os.urandom(40_000)
        alice.put_bytes(data, "nf/data.bin")
        held = Content(data, bob.info()).digests[0]
        unheld = digest(os.urandom(100))
        answers = []
        for d in (held, unheld):
            with pytest.raises(grpc.RpcError) as info:
                list(bob.stub.GetChunks(pb.GetChunksRequest(digests=[d])))
            answers.append((info.value.code(), info.value.details().replace(d.hex(), "<d>")))
        assert answers[0] == answers[1]
        assert answers[0][0] == grpc.StatusCode.NOT_FOUND
