"""Dev PKI files, and real mutual TLS with grpc.aio: who gets in, who does not, and who they are."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cas.errors import UnauthenticatedError
from service import auth, certs

# ---- files ------------------------------------------------------------------------------------


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> certs.DevPki:
    return certs.create_dev_pki(tmp_path_factory.mktemp("tls") / "tls", ["vault.example.com", "10.1.2.3"],
                                ["alice", "bob"])


def test_layout_and_permissions(pki):
    names = sorted(p.name for p in pki.directory.iterdir())
    assert names == sorted([
        "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem",
        "client-alice.pem", "client-alice-key.pem", "client-bob.pem", "client-bob-key.pem",
    ])
    for path in pki.directory.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith("-key.pem"):
            assert mode == 0o600, path.name
        else:
            assert mode & 0o022 == 0, path.name
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert pki.clients["bob"] == (pki.directory / "client-bob.pem", pki.directory / "client-bob-key.pem")
    # the default client pair is the first client's
    assert (pki.directory / "client.pem").read_bytes() == (pki.directory / "client-alice.pem").read_bytes()


def test_certificate_contents(pki):
    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _cert(pki.server_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "vault.example.com"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("10.1.2.3"),
    }
    assert _eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("alice", "bob"):
        client = _cert(pki.clients[name][0])
        assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert _eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert client.issuer == ca.subject
        client.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)


def test_never_overwrites_and_leaves_directory_untouched(tmp_path):
    out = tmp_path / "tls"
    out.mkdir()
    (out / "client-carol.pem").write_text("precious")
    with pytest.raises(certs.PkiFileExistsError) as info:
        certs.create_dev_pki(out, [], ["alice", "carol"])
    assert info.value.paths == [out / "client-carol.pem"]
    assert [p.name for p in out.iterdir()] == ["client-carol.pem"]
    assert (out / "client-carol.pem").read_text() == "precious"


def test_second_init_refused_then_overwrite_replaces(tmp_path):
    first = certs.create_dev_pki(tmp_path, [], ["alice"])
    old_ca = first.ca_cert.read_bytes()
    with pytest.raises(certs.PkiFileExistsError):
        certs.create_dev_pki(tmp_path, [], ["alice"])
    assert first.ca_cert.read_bytes() == old_ca
    certs.create_dev_pki(tmp_path, [], ["alice"], overwrite=True)
    assert first.ca_cert.read_bytes() != old_ca
    assert stat.S_IMODE(first.ca_key.stat().st_mode) == 0o600


@pytest.mark.parametrize("clients, servers", [(["../evil"], []), (["a/b"], []), ([""], []), (["x" * 65], []),
                                              (["ok"], ["bad name"]), (["ok"], ["-x.com"])])
def test_invalid_names_are_refused_before_writing(tmp_path, clients, servers):
    with pytest.raises(certs.PkiError):
        certs.create_dev_pki(tmp_path / "tls", servers, clients)
    assert not (tmp_path / "tls").exists() or not any((tmp_path / "tls").iterdir())


def test_credential_loaders(pki, tmp_path):
    s = certs.server_credentials(pki.directory)
    assert s.cert == pki.server_cert.read_bytes() and s.key == pki.server_key.read_bytes()
    assert s.ca == pki.ca_cert.read_bytes()
    c = certs.client_credentials(pki.directory)
    assert c.cert == (pki.directory / "client.pem").read_bytes()
    b = certs.client_credentials(pki.directory, "bob")
    assert b.cert == pki.clients["bob"][0].read_bytes() and b.key == pki.clients["bob"][1].read_bytes()
    with pytest.raises(certs.TlsFilesMissingError, match="client-zed.pem"):
        certs.client_credentials(pki.directory, "zed")
    with pytest.raises(certs.TlsFilesMissingError, match="stratus certs init"):
        certs.server_credentials(tmp_path)


def test_add_client_uses_existing_ca(tmp_path):
    pki = certs.create_dev_pki(tmp_path, [], [])
    assert not (tmp_path / "client.pem").exists()
    cert, key = certs.add_client(tmp_path, "dave", make_default=True)
    _cert(cert).verify_directly_issued_by(_cert(pki.ca_cert))
    assert _cert(cert).not_valid_after_utc - _cert(cert).not_valid_before_utc > dt.timedelta(days=364)
    end = dt.datetime(2001, 1, 2, tzinfo=dt.UTC)
    old, _ = certs.add_client(tmp_path, "old", not_valid_before=end - dt.timedelta(days=1),
                              not_valid_after=end)
    assert _cert(old).not_valid_after_utc == end
    with pytest.raises(certs.PkiError, match="before it starts"):
        certs.add_client(tmp_path, "never", not_valid_before=end, not_valid_after=end)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "client.pem").read_bytes() == cert.read_bytes()
    with pytest.raises(certs.PkiFileExistsError):
        certs.add_client(tmp_path, "dave")


def test_ca_load_detects_mismatched_key(tmp_path):
    certs.create_dev_pki(tmp_path / "a", [], [])
    certs.create_dev_pki(tmp_path / "b", [], [])
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(certs.PkiError, match="not the key"):
        certs.CertificateAuthority.load(tmp_path / "a")


# ---- real mutual TLS --------------------------------------------------------------------------


class _RecordingHealth(health.aio.HealthServicer):
    """The stock health service, also noting who the server thinks each caller is."""

    def __init__(self) -> None:
        super().__init__()
        self.identities: list[str | None] = []

    async def Check(self, request, context):
        self.identities.append(auth.peer_identity(context))
        return await super().Check(request, context)


@asynccontextmanager
async def _server(key: bytes | None, cert: bytes | None, ca: bytes | None,
                  require_client_auth: bool = True) -> AsyncIterator[tuple[int, _RecordingHealth]]:
    server = grpc.aio.server()
    servicer = _RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if key is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                            require_client_auth=require_client_auth)
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield port, servicer
    finally:
        await server.stop(None)


async def _stub_check(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse:
    return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


async def _check(port: int, ca: bytes, key: bytes | None = None, cert: bytes | None = None,
                 host: str = "127.0.0.1", name_override: str | None = None) -> str:
    """SERVING, or the status code name of the failure."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", name_override)] if name_override else []
    async with grpc.aio.secure_channel(f"{host}:{port}", creds, options=options) as channel:
        try:
            reply = await _stub_check(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _run(coro):
    return asyncio.run(coro)


def test_valid_client_is_served_and_identified(pki):
    s = certs.server_credentials(pki.directory)

    async def scenario():
        async with _server(*s) as (port, servicer):
            alice = certs.client_credentials(pki.directory)
            bob = certs.client_credentials(pki.directory, "bob")
            results = [
                await _check(port, alice.ca, alice.key, alice.cert),
                await _check(port, bob.ca, bob.key, bob.cert, host="localhost"),
            ]
            return results, servicer.identities

    results, identities = _run(scenario())
    assert results == ["SERVING", "SERVING"]
    assert identities == ["alice", "bob"]


def test_grpc_credential_helpers(pki):
    async def scenario():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", certs.grpc_server_credentials(pki.directory))
        await server.start()
        try:
            creds = certs.grpc_channel_credentials(pki.directory, "bob")
            async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
                reply = await _stub_check(channel)
            # the helper's server side demands a client certificate
            without_cert = await _check(port, pki.ca_cert.read_bytes())
            return reply.status, without_cert
        finally:
            await server.stop(None)

    assert _run(scenario()) == (health_pb2.HealthCheckResponse.SERVING, "UNAVAILABLE")


def test_refused_clients(pki, tmp_path):
    s = certs.server_credentials(pki.directory)
    stranger = certs.create_dev_pki(tmp_path / "other", [], ["alice"])  # same name, another CA
    ca = certs.CertificateAuthority.load(pki.directory)
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue_client("old", not_valid_before=now - dt.timedelta(days=30),
                              not_valid_after=now - dt.timedelta(days=1))
    future = ca.issue_client("early", not_valid_before=now + dt.timedelta(days=1),
                             not_valid_after=now + dt.timedelta(days=30))

    async def scenario():
        async with _server(*s) as (port, servicer):
            other = certs.client_credentials(stranger.directory)
            results = {
                "no client cert": await _check(port, s.ca),
                "other CA": await _check(port, s.ca, other.key, other.cert),
                "expired": await _check(port, s.ca, expired.key_pem, expired.cert_pem),
                "not yet valid": await _check(port, s.ca, future.key_pem, future.cert_pem),
                # serverAuth-only certificate presented as a client certificate
                "server cert as client": await _check(port, s.ca, s.key, s.cert),
                "control": await _check(port, s.ca, *certs.client_credentials(pki.directory)[:2]),
            }
            return results, servicer.identities

    results, identities = _run(scenario())
    assert results == {
        "no client cert": "UNAVAILABLE", "other CA": "UNAVAILABLE", "expired": "UNAVAILABLE",
        "not yet valid": "UNAVAILABLE", "server cert as client": "UNAVAILABLE", "control": "SERVING",
    }
    assert identities == ["alice"]  # only the control call reached a handler


def test_client_refuses_client_certificate_as_server_certificate(pki):
    ca = certs.CertificateAuthority.load(pki.directory)
    alice = certs.client_credentials(pki.directory, "alice")
    # Same CA, same name (CN=alice, checked through the name override), only the key usage differs.
    proper = ca.issue_server(["alice"])

    async def scenario():
        async with _server(alice.key, alice.cert, alice.ca) as (port, _):
            as_client_cert = await _check(port, alice.ca, alice.key, alice.cert, name_override="alice")
        async with _server(proper.key_pem, proper.cert_pem, alice.ca) as (port, _):
            as_server_cert = await _check(port, alice.ca, alice.key, alice.cert, name_override="alice")
        return as_client_cert, as_server_cert

    assert _run(scenario()) == ("UNAVAILABLE", "SERVING")


def test_client_refuses_server_from_another_ca(pki, tmp_path):
    stranger = certs.create_dev_pki(tmp_path / "other", [], [])
    impostor = certs.server_credentials(stranger.directory)
    alice = certs.client_credentials(pki.directory)

    async def scenario():
        async with _server(impostor.key, impostor.cert, alice.ca) as (port, servicer):
            return await _check(port, alice.ca, alice.key, alice.cert), servicer.identities

    assert _run(scenario()) == ("UNAVAILABLE", [])


def test_identity_prefers_uri_san(pki):
    ca = certs.CertificateAuthority.load(pki.directory)
    workload = ca.issue_client("backup", uri="spiffe://example.org/backup")
    s = certs.server_credentials(pki.directory)

    async def scenario():
        async with _server(*s) as (port, servicer):
            assert await _check(port, s.ca, workload.key_pem, workload.cert_pem) == "SERVING"
            return servicer.identities

    assert _run(scenario()) == ["spiffe://example.org/backup"]


def test_no_identity_without_client_certificate(pki):
    s = certs.server_credentials(pki.directory)

    async def scenario():
        async with _server(*s, require_client_auth=False) as (port, servicer):
            assert await _check(port, s.ca) == "SERVING"
        async with _server(None, None, None) as (port, plain):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await _stub_check(channel)
        return servicer.identities + plain.identities

    assert _run(scenario()) == [None, None]


class _Context:
    def __init__(self, auth_context):
        self._auth = auth_context

    def auth_context(self):
        return self._auth


def test_identity_from_auth_context_rules():
    assert auth.identity_from_auth_context({}) is None
    assert auth.identity_from_auth_context({"x509_common_name": [b"alice"]}) == "alice"
    assert auth.identity_from_auth_context(
        {"x509_common_name": [b"alice"], "x509_uri": [b"spiffe://a/b"]}) == "spiffe://a/b"
    # identities with control characters or invalid UTF-8 are not identities
    assert auth.identity_from_auth_context({"x509_common_name": [b"a\nb"]}) is None
    assert auth.identity_from_auth_context({"x509_common_name": [b"\xff"]}) is None
    assert auth.require_identity(_Context({"x509_common_name": [b"bob"]})) == "bob"
    with pytest.raises(UnauthenticatedError):
        auth.require_identity(_Context({"transport_security_type": [b"ssl"]}))
