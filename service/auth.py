"""Who is calling: the identity of a gRPC caller from its verified client certificate.

Under mutual TLS the TLS stack has already checked the client certificate against the CA
before any handler runs; this module only reads the verified result from the call's auth
context. The identity is the first URI subject alternative name when the certificate has one
(SPIFFE-style ``spiffe://example.org/backup``), else the subject common name. Without TLS or
without a client certificate there is no identity (``None``); the server decides whether that
means "anonymous" (insecure mode) or UNAUTHENTICATED.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Protocol

from cas.errors import UnauthenticatedError

ANONYMOUS = "anonymous"

_URI_KEY = "x509_uri"
_SAN_KEY = "x509_subject_alternative_name"
_CN_KEY = "x509_common_name"
_PEM_KEY = "x509_pem_cert"
_MAX_IDENTITY_BYTES = 1024


class _HasAuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Sequence[bytes]]: ...


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> str | None:
    """Identity from a gRPC auth-context mapping (property name -> list of byte values)."""
    uri = _first(auth.get(_URI_KEY))
    if uri is None and _URI_KEY not in auth and _SAN_KEY in auth:
        # Older gRPC cores only publish the combined SAN list; the certificate says which are URIs.
        uri = _uri_from_pem(auth.get(_PEM_KEY))
    if uri is not None:
        return uri
    return _first(auth.get(_CN_KEY))


def peer_identity(context: _HasAuthContext) -> str | None:
    """Identity of the caller of a grpc.aio (or sync) ServicerContext; None without a client cert."""
    return identity_from_auth_context(context.auth_context() or {})


def require_identity(context: _HasAuthContext) -> str:
    """Like :func:`peer_identity` but raises UnauthenticatedError when there is none."""
    identity = peer_identity(context)
    if identity is None:
        raise UnauthenticatedError("a client certificate signed by the server's CA is required")
    return identity


def _first(values: Sequence[bytes] | None) -> str | None:
    for value in values or ():
        if not value or len(value) > _MAX_IDENTITY_BYTES:
            continue
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            continue
        # An identity goes into logs and keys: refuse control characters outright.
        if text.isprintable():
            return text
    return None


def _uri_from_pem(pems: Sequence[bytes] | None) -> str | None:
    if not pems:
        return None
    return _uri_of_certificate(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _uri_of_certificate(pem: bytes) -> str | None:
    # Cached: parsing the certificate on every call costs more than the rest of a Stat.
    from cryptography import x509  # only needed on gRPC builds without the x509_uri property

    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    return _first([u.encode() for u in san.get_values_for_type(x509.UniformResourceIdentifier)])
