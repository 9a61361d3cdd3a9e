"""BLAKE3-256 digests: the names of chunks, manifests and whole files.

A digest is always the raw 32 bytes in memory and on the wire; hex is only for humans and file names.
"""

from __future__ import annotations

import blake3

from cas.errors import InvalidDigestError

DIGEST_SIZE = 32
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def digest(data: bytes | memoryview) -> bytes:
    """Return the raw 32-byte BLAKE3-256 digest of ``data``."""
    return blake3.blake3(data).digest()


def to_hex(d: bytes) -> str:
    """Return the lowercase hex form of a digest (validated first)."""
    return check_digest(d).hex()


def from_hex(s: str) -> bytes:
    """Parse a 64-character hex digest; raise :class:`InvalidDigestError` on anything else.

    ``bytes.fromhex`` alone is too lenient (it skips whitespace), so the characters are checked first.
    """
    if not isinstance(s, str) or len(s) != 2 * DIGEST_SIZE or not _HEX_DIGITS.issuperset(s):
        raise InvalidDigestError(f"not a {2 * DIGEST_SIZE}-character hex digest: {s!r:.80}")
    return bytes.fromhex(s)


def check_digest(d: bytes) -> bytes:
    """Return ``d`` as ``bytes`` if it is a 32-byte digest, else raise :class:`InvalidDigestError`."""
    if not isinstance(d, bytes | bytearray | memoryview):
        raise InvalidDigestError(f"digest must be bytes, not {type(d).__name__}")
    d = bytes(d)
    if len(d) != DIGEST_SIZE:
        raise InvalidDigestError(f"digest must be {DIGEST_SIZE} bytes, got {len(d)}")
    return d


def new_hasher() -> blake3.blake3:
    """Return a fresh incremental BLAKE3 hasher for whole-file digests."""
    return blake3.blake3()
