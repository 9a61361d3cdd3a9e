"""Development PKI for mutual TLS, and the file-layout convention server and CLI share.

``stratus certs init DIR`` (:func:`create_dev_pki`) writes a private certificate authority and
certificates signed by it. One directory holds everything; server and clients find their files
by name::

    DIR/                          (created 0700)
      ca.pem                      CA certificate: both sides trust only this
      ca-key.pem          0600    CA private key: needed only to issue more certificates
      server.pem                  server certificate; SANs localhost, 127.0.0.1, ::1 + given names;
      server-key.pem      0600      ExtendedKeyUsage serverAuth only
      client-NAME.pem             one certificate per client, CN=NAME (the identity the server
      client-NAME-key.pem 0600      sees); ExtendedKeyUsage clientAuth only
      client.pem                  copy of the first client's pair: what the CLI uses when
      client-key.pem      0600      no client name is given

Keys are ECDSA P-256 (fast, supported by every gRPC TLS stack), unencrypted PKCS#8 PEM because
gRPC cannot read encrypted keys. Nothing is ever overwritten silently: existing files raise
:class:`PkiFileExistsError` unless ``overwrite=True`` is passed. In production give the server
only ``ca.pem``, ``server.pem`` and ``server-key.pem`` and keep ``ca-key.pem`` offline.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cas.errors import CasError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
DEFAULT_CLIENT_CERT = "client.pem"
DEFAULT_CLIENT_KEY = "client-key.pem"

DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
# Certificates start a little in the past so a peer whose clock lags slightly still accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*")


class PkiError(CasError):
    """TLS material that cannot be created or used."""


class PkiFileExistsError(PkiError):
    """Refusing to overwrite existing TLS files."""

    def __init__(self, paths: Sequence[Path]) -> None:
        names = ", ".join(str(p) for p in paths)
        super().__init__(f"refusing to overwrite existing TLS files: {names} (remove them or pass overwrite)")
        self.paths = list(paths)


class TlsFilesMissingError(PkiError):
    """The TLS directory lacks files that the convention requires."""

    def __init__(self, tls_dir: Path, paths: Sequence[Path]) -> None:
        names = ", ".join(p.name for p in paths)
        super().__init__(
            f"TLS directory {tls_dir} lacks {names}; create one with `stratus certs init {tls_dir}`"
        )
        self.tls_dir = tls_dir
        self.paths = list(paths)


class IssuedCertificate(NamedTuple):
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


class TlsFiles(NamedTuple):
    """PEM material for one side of an mTLS connection, in the order gRPC's factories take it."""

    key: bytes
    cert: bytes
    ca: bytes


@dataclass(frozen=True)
class DevPki:
    """Paths written by :func:`create_dev_pki`."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (cert, key)


def client_cert_files(name: str) -> tuple[str, str]:
    """File names ``(client-NAME.pem, client-NAME-key.pem)`` of a named client."""
    _check_client_name(name)
    return f"client-{name}.pem", f"client-{name}-key.pem"


def _check_client_name(name: str) -> None:
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name) or name in (".", ".."):
        raise PkiError(f"client name {name!r} must match [A-Za-z0-9._-]{{1,64}}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # A CA only signs certificates; an ECDSA leaf only signs handshakes.
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if not name.isascii() or not _DNS_NAME.fullmatch(name) or len(name) > 253:
            raise PkiError(f"server name {name!r} is neither an IP address nor an ASCII DNS name")
        entries.append(x509.DNSName(name.lower()))
    return list(dict.fromkeys(entries))


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its key, able to issue server and client certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str = "StratusVault development CA", days: int = DEFAULT_CA_DAYS
    ) -> CertificateAuthority:
        """Create a new self-signed CA (ECDSA P-256)."""
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, tls_dir: str | Path) -> CertificateAuthority:
        """Load ``ca.pem`` and ``ca-key.pem`` from a TLS directory."""
        directory = Path(tls_dir)
        paths = [directory / CA_CERT, directory / CA_KEY]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise TlsFilesMissingError(directory, missing)
        cert = x509.load_pem_x509_certificate(paths[0].read_bytes())
        key = serialization.load_pem_private_key(paths[1].read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise PkiError(f"{paths[1]} is not the key of {paths[0]}")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key, unencrypted PKCS#8 PEM."""
        return _key_pem(self.private_key)

    def issue_server(
        self,
        names: Sequence[str] = (),
        *,
        days: int = DEFAULT_DAYS,
        not_valid_before: dt.datetime | None = None,
        not_valid_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a serverAuth-only certificate for localhost, 127.0.0.1, ::1 and ``names``."""
        sans = _san_entries(["localhost", "127.0.0.1", "::1", *names])
        common_name = names[0] if names else "localhost"
        return self._issue(
            common_name, sans, ExtendedKeyUsageOID.SERVER_AUTH, days, not_valid_before, not_valid_after
        )

    def issue_client(
        self,
        name: str,
        *,
        days: int = DEFAULT_DAYS,
        not_valid_before: dt.datetime | None = None,
        not_valid_after: dt.datetime | None = None,
        uri: str | None = None,
    ) -> IssuedCertificate:
        """Issue a clientAuth-only certificate with CN=``name`` (and a SAN URI if ``uri`` is given).

        ``not_valid_before``/``not_valid_after`` override the validity window, e.g. to make an
        already expired certificate for tests.
        """
        _check_client_name(name)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
        return self._issue(
            name, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_valid_before, not_valid_after
        )

    def _issue(
        self,
        common_name: str,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
        not_valid_before: dt.datetime | None,
        not_valid_after: dt.datetime | None,
    ) -> IssuedCertificate:
        key = _new_key()
        now = _now()
        start = not_valid_before or now - _CLOCK_SKEW
        end = not_valid_after or now + dt.timedelta(days=days)
        if end <= start:
            raise PkiError("certificate validity ends before it starts")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# ---- writing -----------------------------------------------------------------------------------


def _check_free(paths: Sequence[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise PkiFileExistsError(existing)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    if overwrite and path.exists():
        path.unlink()  # a fresh inode: an old key file with wider permissions is not reused
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PkiFileExistsError([path]) from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pair(cert: Path, key: Path, issued: IssuedCertificate, overwrite: bool) -> None:
    _write(key, issued.key_pem, 0o600, overwrite)
    _write(cert, issued.cert_pem, 0o644, overwrite)


def create_dev_pki(
    directory: str | Path,
    server_names: Sequence[str] = (),
    clients: Sequence[str] = ("client",),
    days: int = DEFAULT_DAYS,
    *,
    ca_days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> DevPki:
    """Create a CA, a server certificate and one certificate per client in ``directory``.

    The first client's pair is also written as ``client.pem``/``client-key.pem``. All target
    files are checked before anything is written, so a refusal leaves the directory untouched.
    Raises PkiFileExistsError, or PkiError for invalid names.
    """
    out = Path(directory)
    names = list(dict.fromkeys(clients))
    for name in names:
        _check_client_name(name)
    _san_entries(list(server_names))  # validate before touching the disk

    pki = DevPki(out, out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    for name in names:
        cert_name, key_name = client_cert_files(name)
        pki.clients[name] = (out / cert_name, out / key_name)
    targets = [pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key]
    targets += [p for pair in pki.clients.values() for p in pair]
    if names:
        targets += [out / DEFAULT_CLIENT_CERT, out / DEFAULT_CLIENT_KEY]
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_free(targets, overwrite)

    ca = CertificateAuthority.create(days=max(ca_days, days))
    _write(pki.ca_key, ca.key_pem, 0o600, overwrite)
    _write(pki.ca_cert, ca.cert_pem, 0o644, overwrite)
    _write_pair(pki.server_cert, pki.server_key, ca.issue_server(server_names, days=days), overwrite)
    for i, name in enumerate(names):
        issued = ca.issue_client(name, days=days)
        _write_pair(*pki.clients[name], issued, overwrite)
        if i == 0:
            _write_pair(out / DEFAULT_CLIENT_CERT, out / DEFAULT_CLIENT_KEY, issued, overwrite)
    return pki


def add_client(
    tls_dir: str | Path,
    name: str,
    *,
    days: int = DEFAULT_DAYS,
    not_valid_before: dt.datetime | None = None,
    not_valid_after: dt.datetime | None = None,
    make_default: bool = False,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Issue one more client certificate with the CA in ``tls_dir``; returns (cert, key) paths.

    With ``make_default`` the pair is also written as ``client.pem``/``client-key.pem``.
    """
    directory = Path(tls_dir)
    ca = CertificateAuthority.load(directory)
    cert_name, key_name = client_cert_files(name)
    cert, key = directory / cert_name, directory / key_name
    targets = [cert, key]
    if make_default:
        targets += [directory / DEFAULT_CLIENT_CERT, directory / DEFAULT_CLIENT_KEY]
    _check_free(targets, overwrite)
    issued = ca.issue_client(
        name, days=days, not_valid_before=not_valid_before, not_valid_after=not_valid_after
    )
    _write_pair(cert, key, issued, overwrite)
    if make_default:
        _write_pair(directory / DEFAULT_CLIENT_CERT, directory / DEFAULT_CLIENT_KEY, issued, overwrite)
    return cert, key


# ---- loading -----------------------------------------------------------------------------------


def _read_all(directory: Path, names: Sequence[str]) -> list[bytes]:
    paths = [directory / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise TlsFilesMissingError(directory, missing)
    return [p.read_bytes() for p in paths]


def server_credentials(tls_dir: str | Path) -> TlsFiles:
    """Read the server's key, certificate and the CA that client certificates must chain to."""
    key, cert, ca = _read_all(Path(tls_dir), [SERVER_KEY, SERVER_CERT, CA_CERT])
    return TlsFiles(key, cert, ca)


def client_credentials(tls_dir: str | Path, name: str | None = None) -> TlsFiles:
    """Read a client's key and certificate (``client.pem`` unless ``name``) and the CA to trust."""
    if name is None:
        cert_name, key_name = DEFAULT_CLIENT_CERT, DEFAULT_CLIENT_KEY
    else:
        cert_name, key_name = client_cert_files(name)
    key, cert, ca = _read_all(Path(tls_dir), [key_name, cert_name, CA_CERT])
    return TlsFiles(key, cert, ca)


def grpc_server_credentials(tls_dir: str | Path) -> grpc.ServerCredentials:
    """gRPC server credentials that demand a client certificate signed by ``ca.pem``."""
    files = server_credentials(tls_dir)
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
    )


def grpc_channel_credentials(tls_dir: str | Path, name: str | None = None) -> grpc.ChannelCredentials:
    """gRPC channel credentials presenting a client certificate and trusting only ``ca.pem``."""
    files = client_credentials(tls_dir, name)
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert
    )
