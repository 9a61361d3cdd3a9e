"""Prefix grants end to end: real transfers over mTLS through the library and the CLI.

``owner`` lives in namespace ``team``. ``reader`` may read ``reports/`` and ``shared/`` there,
``writer`` may read and write ``inbox/writer/``, ``outsider`` holds no grant on ``team``. A
grantee gets what its grant covers and nothing else: not the other paths (calls, listings,
change feed), and not the chunks of the namespace outside its prefixes.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from cli_helpers import Cli, isolated_env, run_process, write_random
from stored_chunks import stored_bytes
from tls_fixtures import connect, tls_server

from cas.chunker import ChunkParams
from cas.digest import digest
from cas.errors import MissingChunksError, NotFoundError, PermissionDeniedError
from cas.pipeline import Pipeline
from cli.rpc_errors import error_detail
from cli.settings import resolve
from proto import stratus_pb2 as pb

ACCESS = """
[identities.owner]
namespace = "team"

[identities.reader]
[identities.writer]
[identities.outsider]
[identities.admin]
admin = true

[[grants]]
identities = ["reader"]
namespace = "team"
prefix = "reports/"
access = "read"

[[grants]]
identities = ["reader"]
namespace = "team"
prefix = "shared"
access = "read"

[[grants]]
identities = ["writer"]
namespace = "team"
prefix = "inbox/writer/"
access = "read-write"
"""

TEAM_FILES = {
    "reports/q1.csv": 300_000, "reports/q2.csv": 1_000, "shared/a.txt": 10, "shared/deep/b.txt": 20,
    "private/salaries.csv": 200_000, "reports-old/x.csv": 30, "shared-not/y": 40, "inbox/other/z": 50,
}


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("grants")
    with tls_server(root, redis_url, ["owner", "reader", "writer", "outsider", "admin"], access=ACCESS) as running:
        with connect(running, "owner") as owner:
            running.team = {path: os.urandom(size) for path, size in TEAM_FILES.items()}
            for path, data in running.team.items():
                owner.put_bytes(data, path)
        yield running


def chunks_of(client, data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(digest, frame, length) of ``data`` chunked the way the server chunks."""
    info = client.server_info()
    c = info.chunking
    with Pipeline(ChunkParams(c.min_size, c.avg_size, c.max_size), info.compression_level) as pipe:
        return [(ch.digest, ch.frame, ch.length) for ch in pipe.process_stream(io.BytesIO(data))]


def put_chunks(client, chunks: list[tuple[bytes, bytes, int]]) -> pb.PutChunksResponse:
    batch = pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f, _ in chunks])
    return client.stub.PutChunks(iter([batch]))


def chunks_manifest(chunks: list[tuple[bytes, bytes, int]], data: bytes) -> pb.Manifest:
    """A manifest message naming ``chunks``."""
    refs = [pb.ChunkRef(digest=d, length=n) for d, _, n in chunks]
    return pb.Manifest(chunks=refs, size=sum(n for _, _, n in chunks), file_digest=digest(data))


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_read_grantee_gets_files_under_its_prefix_and_nothing_else(server):
    with connect(server, "reader", namespace="team") as reader:
        info = reader.info()
        assert (info.identity, info.namespace) == ("reader", "team")
        assert reader.get_bytes("reports/q1.csv") == server.team["reports/q1.csv"]  # GetManifest + GetChunks
        assert reader.get_bytes("shared/deep/b.txt") == server.team["shared/deep/b.txt"]
        assert reader.stat("reports/q2.csv").size == 1_000
        data = b"".join(m.data for m in reader.stub.Download(pb.DownloadRequest(path="reports/q1.csv")))
        assert data == server.team["reports/q1.csv"]
        for outside in ("private/salaries.csv", "reports-old/x.csv", "shared-not/y", "nothing/here"):
            with pytest.raises(PermissionDeniedError):
                reader.get_bytes(outside)
            with pytest.raises(PermissionDeniedError):
                reader.stat(outside)
        with pytest.raises(PermissionDeniedError):
            reader.put_bytes(b"vandal", "reports/q1.csv")
        with pytest.raises(PermissionDeniedError):
            reader.delete("reports/q1.csv")
        assert code_of(lambda: reader.stub.FindMissingChunks(
            pb.FindMissingChunksRequest(digests=[digest(b"x")]))) == grpc.StatusCode.PERMISSION_DENIED
        # the namespace's size is not shown to someone who may read only part of it
        assert info.stats == pb.StoreStats()
    with connect(server, "owner") as owner:
        assert owner.get_bytes("reports/q1.csv") == server.team["reports/q1.csv"]
        assert owner.info().stats.file_count == len(TEAM_FILES)


def test_read_grantee_cannot_fetch_chunks_from_outside_its_prefixes(server):
    secret = server.team["private/salaries.csv"]
    with connect(server, "reader", namespace="team") as reader:
        private = chunks_of(reader, secret)[0][0]
        unknown = digest(os.urandom(64))
        answers = []
        for d in (private, unknown):
            with pytest.raises(grpc.RpcError) as info:
                list(reader.stub.GetChunks(pb.GetChunksRequest(digests=[d])))
            answers.append((info.value.code(), info.value.details().replace(d.hex(), "<d>")))
        assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.NOT_FOUND
        # chunks of a file it may read are fetched once it has been given that file's manifest
        manifest = reader.stub.GetManifest(pb.GetManifestRequest(path="reports/q1.csv")).manifest
        frames = [c for b in reader.stub.GetChunks(pb.GetChunksRequest(digests=[r.digest for r in manifest.chunks]))
                  for c in b.chunks]
        assert [c.digest for c in frames] == [r.digest for r in manifest.chunks]


def test_read_write_grantee_puts_and_gets_under_its_prefix_only(server):
    with connect(server, "writer", namespace="team") as writer, connect(server, "owner") as owner:
        data = os.urandom(400_000)
        version = writer.put_bytes(data, "inbox/writer/upload.bin").version
        assert version.identity == "writer"
        assert writer.get_bytes("inbox/writer/upload.bin") == data
        assert owner.get_bytes("inbox/writer/upload.bin") == data
        writer.put_bytes(data + b"more", "inbox/writer/upload.bin")
        assert owner.get_bytes("inbox/writer/upload.bin") == data + b"more"
        small = {f"inbox/writer/tree/{n}.txt": os.urandom(100 + n) for n in range(5)}
        for path, content in small.items():
            writer.put_bytes(content, path)
        for path, content in small.items():
            assert owner.get_bytes(path) == content
        upload = writer.stub.Upload(iter([pb.UploadRequest(header=pb.UploadHeader(path="inbox/writer/thin.bin")),
                                          pb.UploadRequest(data=b"thin client")]))
        assert upload.version.size == len(b"thin client")
        assert writer.get_bytes("inbox/writer/thin.bin") == b"thin client"
        for outside in ("inbox/other/z", "inbox/writer", "private/new.bin", "top.bin"):
            with pytest.raises(PermissionDeniedError):
                writer.put_bytes(b"nope", outside)
            with pytest.raises(PermissionDeniedError):
                writer.get_bytes(outside)
        with pytest.raises(NotFoundError):
            owner.stat("private/new.bin")
        assert owner.get_bytes("inbox/other/z") == server.team["inbox/other/z"]


def test_read_write_grantee_learns_nothing_about_chunks_outside_its_prefix(server):
    secret = server.team["private/salaries.csv"]
    with connect(server, "writer", namespace="team") as writer:
        held = chunks_of(writer, secret)
        guess = chunks_of(writer, os.urandom(len(secret)))
        digests = [d for d, _, _ in held]
        missing = writer.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing
        assert list(missing) == digests  # the namespace holds them, yet they are "missing" for the grantee
        # a commit naming chunks it never held is refused, like a commit of chunks nobody holds
        answers = []
        for chunks, path in ((held, "inbox/writer/steal.csv"), (guess, "inbox/writer/guess.csv")):
            manifest = chunks_manifest(chunks, secret)
            with pytest.raises(grpc.RpcError) as info:
                writer.stub.CommitFile(pb.CommitFileRequest(path=path, manifest=manifest))
            detail = error_detail(info.value)
            answers.append((info.value.code(), len(detail.missing_chunks.digests)))
        assert answers[0] == (grpc.StatusCode.FAILED_PRECONDITION, len(held))
        assert answers[1] == (grpc.StatusCode.FAILED_PRECONDITION, len(guess))
        batch = writer.stub.CommitFiles(pb.CommitFilesRequest(files=[
            pb.CommitFileRequest(path="inbox/writer/steal-many.csv", manifest=chunks_manifest(held, secret))]))
        error = batch.results[0].error
        assert (error.code, list(error.detail.missing_chunks.digests)) == (
            grpc.StatusCode.FAILED_PRECONDITION.value[0], digests)
        # uploading the bytes proves it holds them: stored counts them as new to its view, like a guess
        put, other = put_chunks(writer, held), put_chunks(writer, guess)
        assert (put.received, put.stored) == (len(held), len(held))
        assert (other.received, other.stored) == (len(guess), len(guess))
        # ... and now it may commit them (under its own prefix) and read them back
        version = writer.stub.CommitFile(pb.CommitFileRequest(
            path="inbox/writer/steal.csv", manifest=chunks_manifest(held, secret))).version
        assert version.size == len(secret)
        assert writer.get_bytes("inbox/writer/steal.csv") == secret


def test_uploads_by_a_grantee_deduplicate_on_disk(server):
    before = stored_bytes(server.data_dir)
    with connect(server, "writer", namespace="team") as writer:
        writer.put_bytes(server.team["reports/q1.csv"], "inbox/writer/copy-of-q1.csv")
        assert writer.get_bytes("inbox/writer/copy-of-q1.csv") == server.team["reports/q1.csv"]
    assert stored_bytes(server.data_dir) == before


def test_identity_without_a_grant_cannot_name_the_namespace(server):
    with connect(server, "outsider", namespace="team") as outsider:
        for call in (
            lambda: outsider.info(),
            lambda: outsider.get_bytes("reports/q1.csv"),
            lambda: outsider.put_bytes(b"x", "inbox/writer/x"),
            lambda: outsider.changes(),
        ):
            with pytest.raises(PermissionDeniedError):
                call()
    with connect(server, "outsider") as outsider:
        assert outsider.info().namespace == "outsider"


def test_listings_and_change_feed_show_only_granted_prefixes(server):
    with connect(server, "owner") as owner:
        everything = [f.path for f in owner.iter_files("")]
    granted = sorted(p for p in everything if p.startswith(("reports/", "shared/")))
    assert len(granted) < len(everything)
    with connect(server, "reader", namespace="team") as reader:
        assert [f.path for f in reader.iter_files("")] == granted
        assert [f.path for f in reader.iter_files("", page_size=1)] == granted  # paging across prefixes
        assert [f.path for f in reader.iter_files("", page_size=3)] == granted
        assert [f.path for f in reader.iter_files("rep")] == [p for p in granted if p.startswith("reports/")]
        assert [f.path for f in reader.iter_files("shared/deep/")] == ["shared/deep/b.txt"]
        for refused in ("private/", "reports-old/", "inbox/"):
            with pytest.raises(PermissionDeniedError):
                reader.list_files(refused)
        events, _ = reader.changes()
        assert sorted({e.path for e in events}) == granted
        assert {e.path for e in reader.changes(prefix="r")[0]} == {p for p in granted if p.startswith("reports/")}
        with pytest.raises(PermissionDeniedError):
            reader.changes(prefix="private/")
        seen = watch_paths(reader, since="0")
        assert sorted(seen) == granted


def watch_paths(client, since: str, seconds: float = 1.5) -> list[str]:
    paths = []
    deadline = time.monotonic() + seconds
    try:
        for event in client.stub.Watch(pb.WatchRequest(since=since), timeout=max(0.1, deadline - time.monotonic())):
            paths.append(event.path)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return paths


def test_live_watch_of_a_grantee_skips_events_outside_its_prefixes(server):
    with connect(server, "reader", namespace="team") as reader, connect(server, "owner") as owner:
        _, cursor = reader.changes()
        owner.put_bytes(b"new private", "private/new-live.txt")
        owner.put_bytes(b"new report", "reports/live.csv")
        assert [e.path for e in reader.changes(since=cursor)[0]] == ["reports/live.csv"]
        assert watch_paths(reader, since=cursor) == ["reports/live.csv"]


def cli_for(server, tmp: Path, name: str, namespace: str | None = None, *, how: str = "flag") -> Cli:
    """The CLI with ``name``'s certificate, the namespace given as a flag, variable or config key."""
    env = isolated_env(tmp)
    cli = Cli(server.address, tmp, env)
    base = ["--server", server.address, "--tls-dir", str(server.pki), "--client-name", name]
    if namespace and how == "flag":
        base += ["--namespace", namespace]
    elif namespace and how == "env":
        env["STRATUS_NAMESPACE"] = namespace
    elif namespace:
        Path(env["STRATUS_CLIENT_CONFIG"]).write_text(f'namespace = "{namespace}"\n')
    cli.base = base  # type: ignore[attr-defined]
    return cli


def run(cli: Cli, *args: str, code: int = 0):
    return cli(*cli.base, *args, code=code, connect=False)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_cli_read_grantee(server, tmp_path, how):
    cli = cli_for(server, tmp_path, "reader", "team", how=how)
    assert run(cli, "--json", "info").stdout.count('"team"') >= 1
    run(cli, "get", "reports/q1.csv", str(tmp_path / "q1.csv"))
    assert (tmp_path / "q1.csv").read_bytes() == server.team["reports/q1.csv"]
    run(cli, "get", "reports/", str(tmp_path / "reports"))
    assert {"q1.csv", "q2.csv"} <= {p.name for p in (tmp_path / "reports").iterdir()}
    refused = run(cli, "get", "private/salaries.csv", str(tmp_path / "s.csv"), code=1)
    assert "may not read" in refused.stderr
    assert not (tmp_path / "s.csv").exists()
    listing = run(cli, "--json", "ls", "--all").stdout
    assert "reports/q1.csv" in listing and "private" not in listing and "inbox" not in listing
    (tmp_path / "vandal.txt").write_bytes(b"vandal")
    run(cli, "put", str(tmp_path / "vandal.txt"), "reports/q1.csv", code=1)


def test_cli_read_write_grantee_puts_a_tree_and_big_file_under_its_prefix(server, tmp_path):
    cli = cli_for(server, tmp_path, "writer", "team")
    tree = tmp_path / "tree"
    for n in range(12):
        write_random(tree / f"d{n % 3}" / f"f{n}.bin", 1_000 + n)
    big = write_random(tmp_path / "big.bin", 6 << 20)
    run(cli, "put", str(tree), "inbox/writer/tree")
    run(cli, "put", str(big), "inbox/writer/big.bin")
    with open(big, "r+b") as f:  # a small edit: the second put sends a manifest delta
        f.seek(3 << 20)
        f.write(b"edited")
    second = json.loads(run(cli, "--json", "put", str(big), "inbox/writer/big.bin").stdout)
    assert second["files"][0]["manifest_delta"] is True
    assert second["files"][0]["chunks_sent"] < second["files"][0]["chunks_total"] // 10
    run(cli, "get", "inbox/writer/", str(tmp_path / "back"))
    assert (tmp_path / "back" / "big.bin").read_bytes() == big.read_bytes()
    for n in range(12):
        rel = Path(f"d{n % 3}") / f"f{n}.bin"
        assert (tmp_path / "back" / "tree" / rel).read_bytes() == (tree / rel).read_bytes()
    with connect(server, "owner") as owner:
        assert owner.get_bytes("inbox/writer/big.bin") == big.read_bytes()
    refused = run(cli, "put", str(big), "inbox/other/big.bin", code=1)
    assert "may not write" in refused.stderr
    run(cli, "put", str(tree), "private/tree", code=1)
    with connect(server, "owner") as owner:
        assert [f.path for f in owner.iter_files("private/tree")] == []


def test_cli_without_a_grant_is_refused_as_a_real_process(server, tmp_path):
    env = isolated_env(tmp_path)
    env["STRATUS_NAMESPACE"] = "team"
    done = run_process(["--server", server.address, "--tls-dir", str(server.pki), "--client-name", "outsider",
                        "ls"], env)
    assert done.returncode == 1, done.stderr
    assert "no access to namespace 'team'" in done.stderr
    ok = run_process(["--server", server.address, "--tls-dir", str(server.pki), "--client-name", "reader",
                      "get", "reports/q2.csv", str(tmp_path / "q2.csv")], env)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "q2.csv").read_bytes() == server.team["reports/q2.csv"]


def test_admin_statistics_stay_store_wide_for_admins_only(server):
    with connect(server, "admin") as admin, connect(server, "reader", namespace="team") as reader:
        assert admin.info().stats.store_chunk_count > 0
        assert reader.info().stats.store_chunk_count == 0


def test_grantee_commit_of_unheld_chunks_raises_the_typed_error(server):
    # the client library maps the refusal to MissingChunksError like any missing-chunk commit
    with connect(server, "writer", namespace="team") as writer:
        other = os.urandom(100_000)
        held = chunks_of(writer, other)
        manifest = chunks_manifest(held, other)
        with pytest.raises(MissingChunksError):
            writer._remote.call(writer.stub.CommitFile, pb.CommitFileRequest(path="inbox/writer/s", manifest=manifest))


def test_namespace_setting_precedence(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('namespace = "from-file"\ninsecure = true\n')
    env = {"STRATUS_CLIENT_CONFIG": str(config)}
    assert resolve(environ=env).namespace == "from-file"
    assert resolve(environ={**env, "STRATUS_NAMESPACE": "from-env"}).namespace == "from-env"
    assert resolve(namespace="from-flag", environ={**env, "STRATUS_NAMESPACE": "from-env"}).namespace == "from-flag"
    config.write_text("insecure = true\n")
    assert resolve(environ=env).namespace is None
