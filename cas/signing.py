"""Ed25519 signatures over file versions.

A client may sign what it commits; the server stores the signature and the signer's public key
with the version, and anyone who later downloads the version can check that the bytes are the
ones the key holder committed under that path. What is signed is :func:`signed_message`, a
domain-separated, unambiguous encoding of (path, manifest digest, file digest, size)::

    b"stratusvault-sig-v1\\0"
    uint32 BE  len(path_utf8) || path_utf8      # the normalised remote path
    uint32 BE  32             || manifest_digest
    uint32 BE  32             || file_digest
    uint64 BE  size

The namespace is deliberately not part of the message: it is assigned by the server from the
caller's identity, so a client cannot know it in advance for every deployment.

Key files: the private key is an unencrypted PKCS#8 PEM file written with mode 0600; the public
key is 32 raw bytes, written to text files as hex. :func:`load_public_key` also accepts base64,
PEM ``PUBLIC KEY`` and ``ssh-ed25519`` forms so that keys can be pasted from other tools.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cas.errors import InvalidDigestError, InvalidInputError, InvalidPathError, SignatureError

SIGNATURE_DOMAIN = b"stratusvault-sig-v1\0"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_DIGEST_SIZE = 32
_MAX_SIZE = 2**64 - 1

PrivateKeyLike = Ed25519PrivateKey | bytes
PublicKeyLike = Ed25519PublicKey | bytes


class KeyPair(NamedTuple):
    """A fresh key pair: ``(private_pem, public_key)``; unpacks like a plain tuple."""

    private_pem: bytes  # unencrypted PKCS#8 PEM
    public_key: bytes  # raw 32 bytes


# ---- the signed message ----------------------------------------------------------------------


def signed_message(path: str, manifest_digest: bytes, file_digest: bytes, size: int) -> bytes:
    """Return the exact bytes that are signed for a version of ``path``.

    ``path`` must be the normalised remote path (the form the server stores), or the server will
    compute a different message. Raises InvalidPathError, InvalidDigestError or InvalidInputError
    for values that cannot be encoded.
    """
    if not isinstance(path, str) or not path:
        raise InvalidPathError("signed path must be a non-empty string")
    try:
        path_bytes = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPathError(f"signed path is not valid Unicode: {exc.reason}") from None
    for name, d in (("manifest digest", manifest_digest), ("file digest", file_digest)):
        if not isinstance(d, bytes | bytearray | memoryview) or len(d) != _DIGEST_SIZE:
            raise InvalidDigestError(f"{name} must be {_DIGEST_SIZE} bytes")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_SIZE:
        raise InvalidInputError(f"size must be an integer in [0, 2**64), got {size!r}")
    return b"".join(
        (
            SIGNATURE_DOMAIN,
            struct.pack(">I", len(path_bytes)),
            path_bytes,
            struct.pack(">I", _DIGEST_SIZE),
            bytes(manifest_digest),
            struct.pack(">I", _DIGEST_SIZE),
            bytes(file_digest),
            struct.pack(">Q", size),
        )
    )


# ---- keys --------------------------------------------------------------------------------------


def generate_key() -> KeyPair:
    """Generate a new Ed25519 key pair."""
    key = Ed25519PrivateKey.generate()
    return KeyPair(_private_pem(key), public_key_bytes(key))


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte public key of a private or public key object."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_from_pem(pem: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Parse a PEM private key; InvalidInputError if it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInputError(f"not a usable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError(f"private key is {type(key).__name__}, expected Ed25519")
    return key


def save_private_key(path: str | Path, key: PrivateKeyLike, *, overwrite: bool = False) -> None:
    """Write a private key (object or PEM bytes) as PKCS#8 PEM with mode 0600.

    Refuses to replace an existing file (FileExistsError) unless ``overwrite`` is true; the file
    is never visible with wider permissions or half-written.
    """
    pem = _private_pem(_as_private_key(key))
    _write_file(Path(path), pem, 0o600, overwrite)


def save_public_key(path: str | Path, public_key: PublicKeyLike, *, overwrite: bool = False) -> None:
    """Write a public key as one line of hex (mode 0644)."""
    raw = _as_public_bytes(public_key)
    _write_file(Path(path), raw.hex().encode() + b"\n", 0o644, overwrite)


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM private key file written by :func:`save_private_key` (or openssl genpkey)."""
    return private_key_from_pem(Path(path).read_bytes(), password)


def load_public_key(source: str | Path | bytes | Ed25519PublicKey) -> bytes:
    """Return the raw 32-byte public key from whatever form the user has at hand.

    Accepted: a key object; 32 raw bytes; text (str or bytes) in hex, base64 (standard or
    URL-safe, padding optional), PEM ``PUBLIC KEY`` or ``ssh-ed25519 AAAA...`` form; a Path, or
    a str that is not a key but names an existing file, whose content is any of the above.
    Raises InvalidInputError for anything else.
    """
    if isinstance(source, Ed25519PublicKey):
        return public_key_bytes(source)
    if isinstance(source, Path):
        return _public_from_content(source.read_bytes(), str(source))
    if isinstance(source, bytes | bytearray):
        return _public_from_content(bytes(source), "public key")
    if isinstance(source, str):
        parsed = _parse_public_text(source)
        if parsed is not None:
            return parsed
        if source.strip() and os.path.isfile(source):
            return _public_from_content(Path(source).read_bytes(), source)
        raise InvalidInputError("not an Ed25519 public key (hex, base64, PEM or ssh-ed25519) nor a key file")
    raise InvalidInputError(f"cannot read a public key from {type(source).__name__}")


def _public_from_content(data: bytes, what: str) -> bytes:
    if len(data) == PUBLIC_KEY_SIZE:
        return _validated_public(data)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    parsed = _parse_public_text(text) if text is not None else None
    if parsed is None:
        raise InvalidInputError(f"{what}: not an Ed25519 public key")
    return parsed


def _parse_public_text(text: str) -> bytes | None:
    text = text.strip()
    if not text:
        return None
    if text.startswith("-----BEGIN"):
        try:
            pub = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            return None
        return public_key_bytes(pub) if isinstance(pub, Ed25519PublicKey) else None
    if text.startswith("ssh-ed25519 "):
        try:
            pub = serialization.load_ssh_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            return None
        return public_key_bytes(pub) if isinstance(pub, Ed25519PublicKey) else None
    raw: bytes | None = None
    if len(text) == 2 * PUBLIC_KEY_SIZE:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    elif len(text) in (43, 44):  # base64 of 32 bytes, unpadded or padded
        padded = text + "=" * (-len(text) % 4)
        try:
            altchars = b"-_" if ("-" in text or "_" in text) else None
            raw = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != PUBLIC_KEY_SIZE:
        return None
    try:
        return _validated_public(raw)
    except InvalidInputError:
        return None


def _validated_public(raw: bytes) -> bytes:
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidInputError(f"invalid Ed25519 public key: {exc}") from None
    return bytes(raw)


def fingerprint(public_key: PublicKeyLike) -> str:
    """Short stable name of a public key for display: ``ed25519:`` + 32 hex chars of its SHA-256."""
    raw = _as_public_bytes(public_key)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


# ---- sign / verify -----------------------------------------------------------------------------


def sign(private_key: PrivateKeyLike, message: bytes) -> bytes:
    """Sign ``message`` (normally from :func:`signed_message`); returns the 64-byte signature."""
    return _as_private_key(private_key).sign(bytes(message))


def verify(public_key: PublicKeyLike, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raises SignatureError when missing, malformed or wrong."""
    if not signature:
        raise SignatureError("signature is missing")
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    if not public_key:
        raise SignatureError("signer public key is missing")
    try:
        pub = (
            public_key
            if isinstance(public_key, Ed25519PublicKey)
            else Ed25519PublicKey.from_public_bytes(bytes(public_key))
        )
    except ValueError:
        raise SignatureError(f"signer public key must be {PUBLIC_KEY_SIZE} valid Ed25519 bytes") from None
    try:
        pub.verify(bytes(signature), bytes(message))
    except InvalidSignature:
        raise SignatureError(f"signature does not verify under key {fingerprint(pub)}") from None


def sign_version(
    private_key: PrivateKeyLike, path: str, manifest_digest: bytes, file_digest: bytes, size: int
) -> bytes:
    """Sign a version in one call: ``sign(key, signed_message(...))``."""
    return sign(private_key, signed_message(path, manifest_digest, file_digest, size))


def verify_version(
    public_key: PublicKeyLike,
    signature: bytes,
    path: str,
    manifest_digest: bytes,
    file_digest: bytes,
    size: int,
    *,
    trusted_keys: Collection[bytes] | None = None,
) -> None:
    """Verify a version's signature; with ``trusted_keys`` the signer must also be one of them."""
    verify(public_key, signed_message(path, manifest_digest, file_digest, size), signature)
    if trusted_keys is not None and _as_public_bytes(public_key) not in {bytes(k) for k in trusted_keys}:
        raise SignatureError(f"signer {fingerprint(public_key)} is not a trusted key")


# ---- helpers -----------------------------------------------------------------------------------


def _as_private_key(key: PrivateKeyLike) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, bytes | bytearray):
        return private_key_from_pem(bytes(key))
    raise InvalidInputError(f"expected an Ed25519 private key or PEM bytes, got {type(key).__name__}")


def _as_public_bytes(key: PublicKeyLike) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return public_key_bytes(key)
    if isinstance(key, bytes | bytearray) and len(key) == PUBLIC_KEY_SIZE:
        return bytes(key)
    raise InvalidInputError(f"expected a {PUBLIC_KEY_SIZE}-byte Ed25519 public key")


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    if not overwrite:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widen beyond `mode`
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
