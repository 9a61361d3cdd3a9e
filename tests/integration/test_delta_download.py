"""Delta downloads against real server processes: a fetched chunk comes as a delta frame against a
chunk of the client's old local copy, only ever against a base the caller's namespace holds, and
the client falls back to a plain frame when its old copy changed under it."""

from __future__ import annotations

import io
import os
import shutil

import grpc
import pytest
from cli_helpers import MIB, write_random
from server_fixtures import RunningServer, drop_prefix, new_prefix
from tls_fixtures import connect, tls_server

from bench.datasets import scattered_edits
from cas import delta
from cas.digest import digest
from cas.errors import IntegrityError
from cas.pipeline import Pipeline
from cli import download
from cli.client import StratusClient
from cli.localdir import Folder, LocalTarget
from proto import stratus_pb2 as pb

SIZE = 4 * MIB
ONE_CHUNK = 15_000  # below the servers' minimum chunk size (16 KiB): always exactly one chunk


def edited(data: bytes, at: int) -> bytes:
    """``data`` with 1 KiB of new random bytes at ``at``."""
    return data[:at] + os.urandom(1024) + data[at + 1024:]


def new_chunk_bytes(client: StratusClient, old: bytes, new: bytes) -> int:
    """Uncompressed bytes of the chunks of ``new`` that ``old`` lacks (what a plain get fetches)."""
    with Pipeline(client.params.chunking) as pipe:
        held = {c.digest for c in pipe.hash_stream(io.BytesIO(old), None)}
        return sum(c.length for c in pipe.hash_stream(io.BytesIO(new), None) if c.digest not in held)


def two_versions(client: StratusClient, remote: str, tmp_path) -> tuple[bytes, bytes]:
    """Put v1 (random), then v2 = v1 with 10 scattered 4 KiB overwrites; returns their bytes."""
    src = write_random(tmp_path / "src" / "data.bin", SIZE)
    v1 = src.read_bytes()
    client.put_file(src, remote)
    scattered_edits(src)
    client.put_file(src, remote)
    return v1, src.read_bytes()


def test_get_over_the_old_copy_moves_deltas_not_whole_chunks(server, client, prefix, tmp_path):
    assert client.server_info().delta_downloads
    remote = prefix + "data.bin"
    src = write_random(tmp_path / "src" / "data.bin", SIZE)
    client.put_file(src, remote)
    local = tmp_path / "local" / "data.bin"
    local.parent.mkdir()
    v1 = client.get_file(remote, local)
    assert v1.bytes_fetched >= SIZE and v1.chunks_delta == 0  # nothing local to be a base
    old = local.read_bytes()
    # v2 comes from elsewhere: another client edits its own copy and puts it.
    scattered_edits(src)
    with StratusClient.connect(server.address, insecure=True) as other:
        other.put_file(src, remote)
    got = client.get_file(remote, local)
    assert local.read_bytes() == src.read_bytes()
    assert got.chunks_fetched >= 10 and got.chunks_delta == got.chunks_fetched
    plain = new_chunk_bytes(client, old, src.read_bytes())
    assert plain >= 10 * client.params.chunking.min_size
    # 10 x 4 KiB of random bytes cannot take much less than 40 KiB; whole chunks would be `plain`.
    assert 40 * 1024 <= got.bytes_fetched <= 10 * 4096 * 1.5 + 2 * 4096
    assert got.bytes_fetched * 5 < plain


def test_an_old_copy_that_changes_during_the_download_falls_back_to_plain_frames(client, prefix, tmp_path):
    remote = prefix + "data.bin"
    v1, v2 = two_versions(client, remote, tmp_path)
    local = tmp_path / "data.bin"
    local.write_bytes(v1)
    rc = client.remote
    version, manifest = download.fetch_manifest(rc, remote, None, None)
    with Folder.open_root(tmp_path) as root:
        plan = download.plan_local(rc.params.chunking, version, manifest, LocalTarget(root, (), local.name, local),
                                   bases=True)
        try:
            assert plan.old and len(plan.old) >= 10
            with open(local, "r+b") as f:  # same inode: the plan's fd sees it
                f.write(os.urandom(SIZE))
            download.fetch_and_write(rc, [plan])
        finally:
            plan.close()
    o = plan.outcome
    assert o.status == "downloaded" and o.error is None
    assert local.read_bytes() == v2
    assert o.chunks_delta == 0 and o.chunks_fetched == o.chunks_total  # every local byte was stale


def test_a_server_with_delta_downloads_off_sends_plain_frames(redis_url, tmp_path):
    key_prefix = new_prefix()
    running = RunningServer(tmp_path / "server", redis_url, key_prefix,
                            extra_env={"STRATUS_DELTA_DOWNLOADS": "0"}).start()
    try:
        with StratusClient.connect(running.address, insecure=True) as c:
            assert not c.server_info().delta_downloads
            v1, v2 = two_versions(c, "f/data.bin", tmp_path)
            local = tmp_path / "local.bin"
            local.write_bytes(v1)
            got = c.get_file("f/data.bin", local)
            assert local.read_bytes() == v2 and got.chunks_delta == 0
            assert got.bytes_fetched >= new_chunk_bytes(c, v1, v2)  # random bytes: frames ~ chunks
            first = next(v.manifest_digest for v in c.list_versions("f/data.bin") if v.version == 1)
            assert not manifest_answer(c, "f/data.bin", first).base_manifest_digest  # the full form
    finally:
        running.stop()
        drop_prefix(redis_url, key_prefix)


# ---- hostile proposals (mTLS, two tenants) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(redis_url, tmp_path_factory):
    with tls_server(tmp_path_factory.mktemp("deltas"), redis_url, ["alice", "bob"]) as running:
        yield running


def chunk_digests(client: StratusClient, data: bytes) -> list[bytes]:
    with Pipeline(client.params.chunking) as pipe:
        return [c.digest for c in pipe.hash_stream(io.BytesIO(data), None)]


def answers(client: StratusClient, digests: list[bytes], bases: dict[bytes, tuple[bytes, ...]]) -> list[tuple]:
    """(digest, frame, base) of each chunk GetChunks sends when ``bases`` are proposed."""
    proposals = [pb.DeltaBase(digest=d, base=b) for d, several in bases.items() for b in several]
    request = pb.GetChunksRequest(digests=digests, bases=proposals)
    return [(c.digest, c.frame, c.base) for batch in client.stub.GetChunks(request) for c in batch.chunks]


def test_only_bases_the_caller_holds_are_used_and_others_leave_no_trace(tenants, tmp_path):
    with connect(tenants, "alice") as alice, connect(tenants, "bob") as bob:
        base_data = os.urandom(ONE_CHUNK)
        wanted_data = edited(base_data, 5000)
        alice.put_bytes(bytes(base_data), "a/old.bin")
        alice.put_bytes(wanted_data, "a/new.bin")
        bobs = edited(base_data, 9000)  # like `wanted`, bob's only
        bob.put_bytes(bobs, "b/secret.bin")
        (held,) = chunk_digests(alice, bytes(base_data))
        (wanted,) = chunk_digests(alice, wanted_data)
        (foreign,) = chunk_digests(bob, bobs)

        plain = answers(alice, [wanted], {})
        assert plain[0][2] == b""
        for hostile in ((foreign,), (digest(os.urandom(64)),), (wanted,), (held, foreign), (foreign, held)):
            assert answers(alice, [wanted], {wanted: hostile}) == plain  # one bad base spoils the proposal

        (got,) = answers(alice, [wanted], {wanted: (held,)})
        assert got[2] == held and len(got[1]) < len(plain[0][1]) / 4
        assert delta.decode_verified(wanted, got[1], base_data, alice.params.chunking.max_size) == wanted_data


def test_malformed_proposals_are_refused(tenants):
    with connect(tenants, "alice") as alice:
        alice.put_bytes(b"x" * 1000, "a/x.bin")
        (d,) = chunk_digests(alice, b"x" * 1000)
        with pytest.raises(grpc.RpcError) as info:
            answers(alice, [d], {d: (b"short",)})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            answers(alice, [d], {d: tuple(digest(bytes([i])) for i in range(5))})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_tree_get_over_old_copies_uses_deltas_for_big_and_small_files(client, prefix, tmp_path):
    src = tmp_path / "src"
    write_random(src / "big.bin", 2 * MIB)
    (src / "small.bin").write_bytes(os.urandom(300_000))
    for name in ("big.bin", "small.bin"):
        client.put_file(src / name, prefix + name)
    out = tmp_path / "out"
    shutil.copytree(src, out)
    for name in ("big.bin", "small.bin"):
        scattered_edits(src / name, count=3)
        client.put_file(src / name, prefix + name)
    from cli.restore import Downloader, GetOptions
    from cli.statecache import StateCache

    cache = StateCache(tmp_path / "cache")
    try:
        report = Downloader(client, cache, GetOptions("test")).get_tree(prefix, out, as_of_ms=None)
    finally:
        cache.close()
    assert report.stats.files_failed == 0 and report.stats.files_downloaded == 2
    for name in ("big.bin", "small.bin"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert report.stats.chunks_delta == report.stats.chunks_fetched >= 4
    assert report.stats.bytes_fetched < 6 * 4096 * 1.5 + 4 * 4096


GRANTS = """
[identities.owner]
namespace = "team"

[identities.reader]

[[grants]]
identities = ["reader"]
namespace = "team"
prefix = "reports/"
access = "read"
"""


def test_a_prefix_grantee_gets_deltas_only_against_chunks_of_its_view(redis_url, tmp_path):
    with tls_server(tmp_path, redis_url, ["owner", "reader"], access=GRANTS) as running, \
            connect(running, "owner") as owner, connect(running, "reader", namespace="team") as reader:
        old = os.urandom(ONE_CHUNK)
        new = edited(old, 5000)
        owner.put_bytes(old, "secret/old.bin")  # the same bytes as reports/old.bin, outside the grant
        owner.put_bytes(new, "reports/new.bin")
        (base,) = chunk_digests(owner, old)
        (wanted,) = chunk_digests(owner, new)
        reader.stub.GetManifest(pb.GetManifestRequest(path="reports/new.bin"))  # puts `wanted` in its view
        plain = answers(reader, [wanted], {})
        assert answers(reader, [wanted], {wanted: (base,)}) == plain  # the namespace holds it; the view does not
        owner.put_bytes(old, "reports/old.bin")
        reader.stub.GetManifest(pb.GetManifestRequest(path="reports/old.bin"))
        (got,) = answers(reader, [wanted], {wanted: (base,)})
        assert got[2] == base and len(got[1]) < len(plain[0][1]) / 4


def test_deltas_stop_when_the_callers_chunk_budget_is_spent(redis_url, tmp_path):
    # A budget of 64 tokens that does not refill in the test's time; each proposed base costs one.
    env = {"STRATUS_UPLOAD_CHUNKS_PER_SECOND": "0.001", "STRATUS_UPLOAD_CHUNKS_BURST": "64",
           "STRATUS_MAX_CHUNKS_PER_MESSAGE": "64"}
    key_prefix = new_prefix()
    running = RunningServer(tmp_path / "server", redis_url, key_prefix, extra_env=env).start()
    try:
        with StratusClient.connect(running.address, insecure=True) as writer:
            old = os.urandom(ONE_CHUNK)
            new = edited(old, 5000)
            writer.put_bytes(old, "f/old.bin")
            writer.put_bytes(new, "f/new.bin")
            (base,) = chunk_digests(writer, old)
            (wanted,) = chunk_digests(writer, new)
            # A connection of its own: a plaintext caller's budget is per connection (its address
            # and port). The writer's stays open, so the reader's cannot reuse its port and budget.
            with StratusClient.connect(running.address, insecure=True) as reader:
                plain = answers(reader, [wanted], {})
                kinds = [answers(reader, [wanted], {wanted: (base,) * 4})[0][2] for _ in range(20)]
                assert kinds == [base] * 16 + [b""] * 4  # 16 x 4 tokens, then plain frames
                assert answers(reader, [wanted], {wanted: (base,)}) == plain
                assert answers(reader, [wanted], {}) == plain  # plain requests cost nothing and still work
    finally:
        running.stop()
        drop_prefix(redis_url, key_prefix)


# ---- the manifest as a delta of the one the client holds ----------------------------------------------


def manifest_answer(client: StratusClient, path: str, base: bytes) -> pb.GetManifestResponse:
    return client.stub.GetManifest(pb.GetManifestRequest(path=path, base_manifest_digest=base))


def test_get_manifest_answers_as_pieces_of_a_version_of_the_same_path(client, prefix, tmp_path):
    remote = prefix + "data.bin"
    v1, v2 = two_versions(client, remote, tmp_path)
    client.put_bytes(v1, prefix + "copy.bin")  # the same manifest as v1, but another path
    versions = client.list_versions(remote)
    old_digest = next(v.manifest_digest for v in versions if v.version == 1)
    full = manifest_answer(client, remote, b"")
    assert not full.base_manifest_digest and not full.pieces and len(full.manifest.chunks) > 40
    delta_form = manifest_answer(client, remote, old_digest)
    assert delta_form.base_manifest_digest == old_digest and not delta_form.manifest.chunks
    assert delta_form.ByteSize() * 2 < full.ByteSize() and delta_form.version == full.version
    # The client side expands it and checks it against the version's manifest digest.
    base = download.fetch_manifest(client.remote, remote, 1, None)[1]
    assert download.fetch_manifest(client.remote, remote, None, None, base=base) == \
        download.fetch_manifest(client.remote, remote, None, None)
    for unusable in (digest(os.urandom(8)), b"short", digest(b"")):
        assert manifest_answer(client, remote, unusable) == full
    other = prefix + "other.bin"
    client.put_bytes(os.urandom(1000), other)
    other_digest = manifest_answer(client, other, b"").version.manifest_digest
    assert manifest_answer(client, remote, other_digest) == full  # another path's manifest is no base


def test_a_manifest_delta_against_a_base_not_offered_is_refused(client, prefix, tmp_path):
    remote = prefix + "data.bin"
    two_versions(client, remote, tmp_path)
    with pytest.raises(IntegrityError):
        download._expand(remote, manifest_answer(client, remote, b""), None, 1 << 20)
    v1 = download.fetch_manifest(client.remote, remote, 1, None)[1]
    answer = client.stub.GetManifest(pb.GetManifestRequest(path=remote, base_manifest_digest=v1.digest()))
    answer.base_manifest_digest = digest(b"not the base")
    with pytest.raises(IntegrityError):
        download._expand(remote, answer, v1, 1 << 20)
