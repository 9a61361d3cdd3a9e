"""mTLS, identities, namespaces and grants, end to end against a real TLS server."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import grpc
import pytest
import redis
from cli_helpers import isolated_env, overrides, run_process
from server_fixtures import RunningServer, drop_prefix, new_prefix, run_to_exit
from tls_fixtures import connect
from tls_fixtures import tls_server as start_tls_server

from cas.digest import digest
from cas.errors import NotFoundError, PermissionDeniedError, ServerUnavailableError, SignatureError
from cas.signing import generate_key, private_key_from_pem
from cli.client import StratusClient
from cli.localserver import LocalServer
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb
from service.certs import add_client, create_dev_pki

ACCESS = """
[identities.alice]
namespace = "team"

[identities.reader]
namespace = "team"
access = "read"

[identities.bob]

[identities.ops]
admin = true
"""


@pytest.fixture(scope="module")
def tls_server(redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    audit = root / "audit.log"
    clients = ["alice", "reader", "bob", "ops", "stranger"]
    with start_tls_server(root, redis_url, clients, access=ACCESS, extra_args=["--audit-log", str(audit)]) as running:
        # a certificate of this CA that has expired, and a second CA the server does not trust
        add_client(root / "pki", "expired", not_valid_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                   not_valid_after=dt.datetime(2020, 2, 1, tzinfo=dt.UTC))
        create_dev_pki(root / "other", clients=["alice"])
        running.other_pki = root / "other"
        running.audit = audit
        yield running


def test_mtls_round_trip_and_identity(tls_server):
    with connect(tls_server, "alice") as alice:
        info = alice.info()
        assert (info.identity, info.namespace) == ("alice", "team")
        data = os.urandom(300_000)
        alice.put_bytes(data, "shared/report.bin")
        assert alice.get_bytes("shared/report.bin") == data
        assert alice.stat("shared/report.bin").identity == "alice"


@pytest.mark.parametrize("how", ["no-cert", "expired"])
def test_bad_client_certificates_cannot_connect(tls_server, how):
    if how == "no-cert":
        creds = grpc.ssl_channel_credentials(root_certificates=(tls_server.pki / "ca.pem").read_bytes())
        stub = pb_stub(grpc.secure_channel(tls_server.address, creds))
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerInfo(pb.ServerInfoRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        return
    client = connect(tls_server, "expired")
    with client, pytest.raises(ServerUnavailableError):
        client.info()


def credentials(trust: Path, cert_dir: Path, name: str) -> grpc.ChannelCredentials:
    """Trust ``trust``/ca.pem; present ``cert_dir``'s certificate of ``name``."""
    return grpc.ssl_channel_credentials(
        root_certificates=(trust / "ca.pem").read_bytes(),
        private_key=(cert_dir / f"client-{name}-key.pem").read_bytes(),
        certificate_chain=(cert_dir / f"client-{name}.pem").read_bytes(),
    )


def test_server_refuses_a_client_certificate_from_another_ca(tls_server):
    # The client trusts the real server (its CA), so only the server can end this handshake:
    # the same client code with a certificate of the real CA gets through.
    genuine = pb_stub(grpc.secure_channel(tls_server.address, credentials(tls_server.pki, tls_server.pki, "alice")))
    assert genuine.ServerInfo(pb.ServerInfoRequest(), timeout=10).identity == "alice"
    foreign = pb_stub(grpc.secure_channel(
        tls_server.address, credentials(tls_server.pki, tls_server.other_pki, "alice")))
    for _ in range(3):  # not a transient failure: every attempt is refused
        with pytest.raises(grpc.RpcError) as info:
            foreign.ServerInfo(pb.ServerInfoRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # and the client trusting the other CA cannot reach the real server either
    with StratusClient.connect(tls_server.address, tls_dir=tls_server.other_pki, client_name="alice") as client:
        with pytest.raises(ServerUnavailableError):
            client.info()


def pb_stub(channel):
    from proto import stratus_pb2_grpc

    return stratus_pb2_grpc.StratusStub(channel)


def test_tenants_cannot_see_or_infer_each_other(tls_server):
    secret = os.urandom(200_000)
    with connect(tls_server, "alice") as alice, connect(tls_server, "bob") as bob:
        alice.put_bytes(secret, "private/plan.bin")
        _, alice_cursor = alice.changes()
        assert bob.info().namespace == "bob"
        with pytest.raises(NotFoundError):
            bob.stat("private/plan.bin")
        with pytest.raises(NotFoundError):
            bob.get_bytes("private/plan.bin")
        with pytest.raises(NotFoundError):
            bob.list_versions("private/plan.bin")
        assert [f.path for f in bob.iter_files("")] == []
        assert bob.changes()[0] == []
        # Chunk existence does not leak: alice's chunks are "missing" for bob, and unreadable.
        chunk = alice.stub.GetManifest(pb.GetManifestRequest(path="private/plan.bin")).manifest.chunks[0].digest
        assert list(bob.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=[chunk])).missing) == [chunk]
        with pytest.raises(grpc.RpcError) as info:
            list(bob.stub.GetChunks(pb.GetChunksRequest(digests=[chunk])))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # Asking for alice's namespace explicitly is refused.
        with pytest.raises(grpc.RpcError) as info:
            bob.stub.Stat(pb.StatRequest(path="private/plan.bin"), metadata=[("stratus-namespace", "team")])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Bob can upload the very same bytes (he proves he has them) and it dedups on disk.
        bob.put_bytes(secret, "mine.bin")
        assert bob.get_bytes("mine.bin") == secret
        assert alice.changes(since=alice_cursor)[0] == []


def test_read_only_identity_cannot_write(tls_server):
    with connect(tls_server, "alice") as alice, connect(tls_server, "reader") as reader:
        alice.put_bytes(b"figures", "ro/figures.csv")
        assert reader.get_bytes("ro/figures.csv") == b"figures"
        for attempt in (
            lambda: reader.put_bytes(b"vandal", "ro/figures.csv"),
            lambda: reader.delete("ro/figures.csv"),
            lambda: reader.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=[digest(b"x")])),
        ):
            with pytest.raises((PermissionDeniedError, grpc.RpcError)) as info:
                attempt()
            if isinstance(info.value, grpc.RpcError):
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert alice.get_bytes("ro/figures.csv") == b"figures"


def test_unknown_identity_is_refused_by_the_policy_namespace_reservation(tls_server):
    # "stranger" is not in the access file, so it gets its own namespace; it cannot claim "team".
    with connect(tls_server, "stranger") as stranger:
        assert stranger.info().namespace == "stranger"
        with pytest.raises(grpc.RpcError) as info:
            stranger.stub.ListFiles(pb.ListFilesRequest(), metadata=[("stratus-namespace", "team")])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_store_wide_statistics_are_for_admins_only(tls_server):
    with connect(tls_server, "ops") as ops, connect(tls_server, "alice") as alice:
        alice.put_bytes(os.urandom(10_000), "stats/x")
        assert ops.info().stats.store_chunk_count > 0
        assert alice.info().stats.store_chunk_count == 0


def test_signed_versions_and_tampering(tls_server):
    pair = generate_key()
    key = private_key_from_pem(pair.private_pem)
    other = generate_key()
    with connect(tls_server, "alice") as alice:
        version = alice.put_bytes(b"signed content", "sig/doc", sign_key=key).version
        assert version.signed and version.signer_public_key == pair.public_key.hex()
        assert len(alice.stat("sig/doc").signature) == 64
        assert alice.get_bytes("sig/doc") == b"signed content"
        out = tls_server.data_dir / "out"
        alice.get_file("sig/doc", out, verify_key=pair.public_key)
        assert out.read_bytes() == b"signed content"
        with pytest.raises(SignatureError):
            alice.get_file("sig/doc", tls_server.data_dir / "out2", verify_key=other.public_key)
        assert not (tls_server.data_dir / "out2").exists()
        alice.put_bytes(b"unsigned", "sig/plain")
        with pytest.raises(SignatureError):
            alice.get_file("sig/plain", tls_server.data_dir / "out3", verify_key=pair.public_key)
        # Flip one byte of the stored signature behind the server's back.
        client = redis.Redis.from_url(tls_server.redis_url)
        key_name = f"{tls_server.prefix}:{{team}}:v:sig/doc"
        record = json.loads(client.hget(key_name, "1"))
        field = next(k for k in record if k == "signature")
        raw = bytearray(bytes.fromhex(record[field]))
        raw[0] ^= 1
        record[field] = raw.hex()
        client.hset(key_name, "1", json.dumps(record))
        client.close()
        with pytest.raises(SignatureError):
            alice.get_file("sig/doc", out, verify_key=pair.public_key)
        assert out.read_bytes() == b"signed content"


def test_a_forged_signature_is_refused_at_commit(tls_server):
    pair = generate_key()
    with connect(tls_server, "alice") as alice:
        empty = pb.Manifest(size=0, file_digest=digest(b""))
        with pytest.raises(grpc.RpcError) as info:
            alice.stub.CommitFile(pb.CommitFileRequest(
                path="sig/forged", manifest=empty, signature=os.urandom(64), signer_public_key=pair.public_key,
            ))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(NotFoundError):
            alice.stat("sig/forged")


def test_audit_log_has_one_line_per_call(tls_server):
    with connect(tls_server, "alice") as alice:
        alice.put_bytes(b"audited", "audit/me")
        with pytest.raises(NotFoundError):
            alice.stat("audit/none")
    lines = [json.loads(line) for line in tls_server.audit.read_text().splitlines()]
    commits = [e for e in lines if e["method"] == "CommitFile" and e.get("path") == "audit/me"]
    assert commits, lines[-6:]
    assert commits[-1]["identity"] == "alice" and commits[-1]["status"] == "OK"
    assert commits[-1]["version"] == 1 and commits[-1]["bytes"] == len(b"audited")
    misses = [e for e in lines if e["method"] == "Stat" and e.get("path") == "audit/none"]
    assert misses and misses[-1]["status"] == "NOT_FOUND"
    assert all({"time", "peer", "duration_ms"} <= e.keys() for e in lines)


def test_rate_limit_per_identity_gives_a_retry_hint(redis_url, tmp_path):
    prefix = new_prefix()
    running = RunningServer(
        tmp_path / "data", redis_url, prefix,
        extra_env={"STRATUS_RATE_LIMIT_PER_SECOND": "2", "STRATUS_RATE_LIMIT_BURST": "5"},
    ).start()
    try:
        stub = running.stub()
        codes = []
        for _ in range(12):
            try:
                stub.ListFiles(pb.ListFilesRequest())
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                detail = error_detail(exc)
                assert detail.reason == pb.ErrorDetail.RATE_LIMITED and detail.retry_after_ms > 0
                assert "retry in" in exc.details()
        assert codes[:5] == ["OK"] * 5
        assert "RESOURCE_EXHAUSTED" in codes[5:]
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


def test_rate_limit_is_per_identity_over_mtls(redis_url, tmp_path):
    env = {"STRATUS_RATE_LIMIT_PER_SECOND": "0.2", "STRATUS_RATE_LIMIT_BURST": "4"}
    with start_tls_server(tmp_path, redis_url, ["alice", "bob"], extra_env=env) as running:
        alice = pb_stub(grpc.secure_channel(running.address, credentials(running.pki, running.pki, "alice")))
        bob = pb_stub(grpc.secure_channel(running.address, credentials(running.pki, running.pki, "bob")))

        def codes(stub, n: int) -> list[str]:
            out = []
            for _ in range(n):
                try:
                    stub.Stat(pb.StatRequest(path="nothing"), timeout=10)
                except grpc.RpcError as exc:
                    out.append(exc.code().name)
            return out

        alice_codes = codes(alice, 10)
        assert alice_codes[:4] == ["NOT_FOUND"] * 4
        assert alice_codes[4:].count("RESOURCE_EXHAUSTED") >= 5
        # alice is throttled; bob, calling right after, still has his whole burst
        assert codes(bob, 4) == ["NOT_FOUND"] * 4
        assert codes(alice, 1) == ["RESOURCE_EXHAUSTED"]


def serve(tmp_path: Path, redis_url: str, prefix: str, *args: str) -> LocalServer:
    """``stratus serve`` in plaintext on every interface with ``args`` (not started yet)."""
    return LocalServer(tmp_path / "data", listen="0.0.0.0:0", redis_url=redis_url, args=args, through_cli=True,
                       env={**overrides(isolated_env(tmp_path)), "STRATUS_REDIS_PREFIX": prefix})


def test_plaintext_on_a_non_loopback_address_needs_insecure_any_host(redis_url, tmp_path):
    prefix = new_prefix()
    try:
        refused = run_to_exit(serve(tmp_path, redis_url, prefix))
        out, err = refused.stdout, refused.stderr
        assert refused.returncode != 0
        assert "refusing plaintext on 0.0.0.0:0" in err and "--insecure-any-host" in err
        assert "serving on" not in out
        started = serve(tmp_path, redis_url, prefix, "--insecure-any-host").start()
        try:
            assert re.search(r"serving on \S+:(\d+)", started.ready_line), started.ready_line
            # bound to every interface; only ever reached here through loopback
            with StratusClient.connect(started.address, insecure=True) as client:
                assert client.info().namespace == "default"
        finally:
            started.stop()
    finally:
        drop_prefix(redis_url, prefix)


def test_client_name_picks_the_certificate(tls_server, tmp_path):
    env = isolated_env(tmp_path)
    base = ["--json", "--server", tls_server.address, "--tls-dir", str(tls_server.pki)]

    def identity(*args: str, extra: dict[str, str] | None = None) -> str:
        done = run_process([*base, *args, "info"], {**env, **(extra or {})})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["identity"]

    assert identity() == "alice"  # client.pem: the first client of `certs init`
    assert identity("--client-name", "bob") == "bob"
    assert identity(extra={"STRATUS_CLIENT_NAME": "ops"}) == "ops"
    assert identity("--client-name", "reader", extra={"STRATUS_CLIENT_NAME": "ops"}) == "reader"
    missing = run_process([*base, "--client-name", "ghost", "info"], env)
    assert missing.returncode != 0
    assert "client-ghost.pem" in json.loads(missing.stdout)["error"]["message"]
