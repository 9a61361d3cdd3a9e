"""A chunk whose frame fails the client's check is reported (ReportDamagedChunks), re-verified by
the server, marked damaged and healed by the next upload; reports reveal nothing about other
namespaces, never mark a good chunk, and are bounded and paid for by the reporter.

Real mTLS server processes (verify_reads off, the default), real gRPC, real disk.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import grpc
import pytest
from tls_fixtures import connect, tls_server

from cas import codec
from cas.digest import digest
from cas.errors import CasError, IntegrityError, LimitExceededError
from cli.client import StratusClient
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb

MAX_DIGESTS = 2000


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    # The files layout: there GetChunks (verify_reads off) sends a frame whose payload is damaged
    # and only the client notices, which is what reports are for. In packs every record carries a
    # checksum, so the server finds such damage itself (tests/integration/test_self_heal.py).
    env = {"STRATUS_STORE_FORMAT": "files",
           "STRATUS_MAX_FIND_DIGESTS": str(MAX_DIGESTS), "STRATUS_ADMISSION_WAIT_S": "0.2",
           "STRATUS_UPLOAD_CHUNKS_PER_SECOND": "500", "STRATUS_UPLOAD_CHUNKS_BURST": "4096"}
    with tls_server(tmp_path_factory.mktemp("reports"), redis_url, ["alice", "bob", "carol"],
                    extra_env=env) as running:
        yield running


def chunk_file(server, d: bytes) -> Path:
    h = d.hex()
    return server.data_dir / "chunks" / h[:2] / h[2:4] / h


def quarantined(server, d: bytes) -> bool:
    return (server.data_dir / "chunks" / ".damaged" / d.hex()).exists()


def flip_payload(path: Path) -> None:
    """Flip one bit in the payload (past the header), so only a full decode notices."""
    blob = bytearray(path.read_bytes())
    blob[codec.HEADER_SIZE + (len(blob) - codec.HEADER_SIZE) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def content() -> bytes:
    """~400 KB in several chunks: random bytes (raw frames) and text (zstd frames)."""
    return os.urandom(200_000) + (uuid.uuid4().hex * 6000).encode()


def digests_of(client: StratusClient, path: str) -> list[bytes]:
    return [c.digest for c in client.stub.GetManifest(pb.GetManifestRequest(path=path)).manifest.chunks]


def failing(client: StratusClient, digests: list[bytes]) -> list[bytes]:
    """The digests whose frames, as GetChunks sends them, fail the client's decode and BLAKE3 check."""
    bad = []
    for batch in client.stub.GetChunks(pb.GetChunksRequest(digests=digests)):
        for chunk in batch.chunks:
            try:
                codec.decode_verified(chunk.digest, chunk.frame, 1 << 20)
            except CasError:  # a digest mismatch or an undecodable frame
                bad.append(chunk.digest)
    return bad


def missing(client: StratusClient, digests: list[bytes]) -> list[bytes]:
    return list(client.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing)


def report(client: StratusClient, digests: list[bytes]) -> list[bool]:
    return list(client.stub.ReportDamagedChunks(pb.ReportDamagedChunksRequest(digests=digests)).damaged)


def test_reported_damage_is_marked_and_healed_by_the_next_upload(server):
    data = content()
    with connect(server, "alice") as alice:
        alice.put_bytes(data, "heal/v1.bin")
        digests = digests_of(alice, "heal/v1.bin")
        target = digests[1]
        flip_payload(chunk_file(server, target))
        # verify_reads is off: GetChunks sends the damaged frame, only the client notices
        assert failing(alice, digests) == [target]
        # unknown to the server so far: a re-upload would skip the chunk
        assert missing(alice, digests) == []
        # a download finds it, fails, and reports it; the server re-verifies and marks it
        with pytest.raises(IntegrityError):
            alice.get_bytes("heal/v1.bin")
        assert quarantined(server, target) and not chunk_file(server, target).exists()
        # reported by hand it answers the same
        assert alice.report_damaged([target, digests[0]]) == [target]
        assert missing(alice, digests) == [target]
        with pytest.raises(grpc.RpcError) as info:
            list(alice.stub.GetChunks(pb.GetChunksRequest(digests=[target])))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        # reporting it again answers the same; the good chunk next to it was not touched
        assert report(alice, [target, digests[0]]) == [True, False]
        assert chunk_file(server, digests[0]).exists() and not quarantined(server, digests[0])
        # the next upload of the same content sends exactly that chunk and repairs it
        result = alice.put_bytes(data, "heal/v2.bin")
        assert (result.chunks_sent, result.chunks_total) == (1, len(digests))
        assert not quarantined(server, target)
        codec.decode_verified(target, chunk_file(server, target).read_bytes(), 1 << 20)
        assert alice.get_bytes("heal/v1.bin") == data
        assert alice.get_bytes("heal/v2.bin") == data
        assert missing(alice, digests) == [] and failing(alice, digests) == []


def test_reporting_good_chunks_marks_nothing(server):
    data = content()
    with connect(server, "alice") as alice:
        alice.put_bytes(data, "good/file.bin")
        digests = digests_of(alice, "good/file.bin")
        before = {d: chunk_file(server, d).read_bytes() for d in digests}
        assert report(alice, digests + digests[:1]) == [False] * (len(digests) + 1)
        assert alice.report_damaged(digests) == []
        assert {d: chunk_file(server, d).read_bytes() for d in digests} == before
        assert not any(quarantined(server, d) for d in digests)
        assert missing(alice, digests) == []
        assert alice.get_bytes("good/file.bin") == data


def test_reports_about_another_namespace_reveal_and_mark_nothing(server):
    data = content()
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        alice.put_bytes(data, "secret/file.bin")
        digests = digests_of(alice, "secret/file.bin")
        damaged, good = digests[0], digests[1]
        flip_payload(chunk_file(server, damaged))
        nobody = digest(os.urandom(1000))  # content stored nowhere
        # bob holds none of them: each answer is that of a good chunk, whatever the disk holds
        assert report(bob, [damaged, good, nobody]) == [False, False, False]
        assert bob.report_damaged([damaged, good, nobody]) == []
        # nothing was looked at: alice's damaged copy is still in place, unmarked
        assert chunk_file(server, damaged).exists() and not quarantined(server, damaged)
        assert missing(alice, digests) == []
        with pytest.raises(IntegrityError):
            alice.get_bytes("secret/file.bin")
        assert alice.report_damaged([damaged]) == [damaged]
        assert alice.put_bytes(data, "secret/again.bin").chunks_sent == 1
        assert alice.get_bytes("secret/file.bin") == data


def test_reports_are_bounded_and_cost_the_reporter_its_own_share(server):
    with connect(server, "carol") as carol, connect(server, "bob") as bob:
        # more digests than max_find_digests: refused whole, naming the limit
        with pytest.raises(LimitExceededError):
            carol.report_damaged([digest(bytes([i % 256, i // 256])) for i in range(MAX_DIGESTS + 1)])
        with pytest.raises(grpc.RpcError) as info:
            report(carol, [digest(i.to_bytes(4, "big")) for i in range(MAX_DIGESTS + 1)])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_detail(info.value).limit_exceeded.limit == "max_find_digests"
        # malformed digests are bad input
        with pytest.raises(grpc.RpcError) as info:
            report(carol, [b"short"])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # each digest named costs a chunk of carol's budget (500/s, burst 4096): she runs out...
        refused = None
        for _ in range(10):
            try:
                report(carol, [digest(os.urandom(8)) for _ in range(MAX_DIGESTS)])
            except grpc.RpcError as err:
                refused = err
                break
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "upload_chunks_per_second" in refused.details()
        assert error_detail(refused).retry_after_ms > 0
        # ...while bob's share is untouched
        assert report(bob, [digest(os.urandom(8)) for _ in range(MAX_DIGESTS)]) == [False] * MAX_DIGESTS


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


@pytest.fixture(scope="module")
def granted(redis_url, tmp_path_factory):
    with tls_server(tmp_path_factory.mktemp("reports-grants"), redis_url, ["owner", "reader"],
                    access=GRANTS, extra_env={"STRATUS_STORE_FORMAT": "files"}) as running:
        yield running


def test_a_prefix_grantee_reports_only_chunks_it_was_shown(granted):
    shown, hidden = content(), content()
    with connect(granted, "owner") as owner, connect(granted, "reader", namespace="team") as reader:
        owner.put_bytes(shown, "reports/q1.bin")
        owner.put_bytes(hidden, "private/salaries.bin")
        outside = digests_of(owner, "private/salaries.bin")[0]
        flip_payload(chunk_file(granted, outside))
        # outside the reader's prefix: answered like a good chunk, not looked at
        assert report(reader, [outside]) == [False]
        assert chunk_file(granted, outside).exists() and not quarantined(granted, outside)
        assert missing(owner, [outside]) == []
        # a chunk of a file it may read, once shown to it in the manifest, is its to report
        inside = digests_of(reader, "reports/q1.bin")[0]
        flip_payload(chunk_file(granted, inside))
        assert reader.report_damaged([inside, outside]) == [inside]
        assert quarantined(granted, inside) and missing(owner, [inside]) == [inside]
        assert owner.put_bytes(shown, "reports/q1-again.bin").chunks_sent == 1
        assert reader.get_bytes("reports/q1.bin") == shown
        # the owner reads its whole namespace: its report marks the other one
        assert owner.report_damaged([outside]) == [outside]
