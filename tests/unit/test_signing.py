"""Ed25519 version signatures: message encoding, key files, sign/verify, tampering."""

from __future__ import annotations

import base64
import os
import stat
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import signing
from cas.errors import (
    InvalidDigestError,
    InvalidInputError,
    InvalidPathError,
    SignatureError,
)

MD = bytes(range(32))
FD = bytes(range(32, 64))


def _parse(message: bytes) -> tuple[str, bytes, bytes, int]:
    """An independent decoder: if every message decodes back to its fields, the encoding is injective."""
    assert message.startswith(signing.SIGNATURE_DOMAIN)
    rest = message[len(signing.SIGNATURE_DOMAIN) :]
    fields = []
    for _ in range(3):
        (n,) = struct.unpack(">I", rest[:4])
        fields.append(rest[4 : 4 + n])
        rest = rest[4 + n :]
    (size,) = struct.unpack(">Q", rest)
    return fields[0].decode("utf-8"), fields[1], fields[2], size


# ---- message ----------------------------------------------------------------------------------


def test_signed_message_layout_is_fixed():
    # A change here breaks every signature ever made: the expected bytes are spelled out.
    msg = signing.signed_message("a/b", MD, FD, 5)
    expected = (
        b"stratusvault-sig-v1\0"
        + b"\x00\x00\x00\x03a/b"
        + b"\x00\x00\x00\x20" + MD
        + b"\x00\x00\x00\x20" + FD
        + b"\x00\x00\x00\x00\x00\x00\x00\x05"
    )
    assert msg == expected


paths = st.text(min_size=1, max_size=40).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
digests = st.binary(min_size=32, max_size=32)
sizes = st.integers(min_value=0, max_value=2**64 - 1)
fields = st.tuples(paths, digests, digests, sizes)


@settings(max_examples=300, deadline=None)
@given(fields)
def test_signed_message_round_trips(f):
    assert _parse(signing.signed_message(*f)) == f


@settings(max_examples=300, deadline=None)
@given(fields, fields)
def test_distinct_fields_give_distinct_messages(a, b):
    if a != b:
        assert signing.signed_message(*a) != signing.signed_message(*b)
    else:
        assert signing.signed_message(*a) == signing.signed_message(*b)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_path_boundary_cannot_shift(a, b):
    # "ab" + digest vs "a" + ... : length prefixes keep path bytes from bleeding into the digest fields.
    if a != b:
        try:
            assert signing.signed_message(a, MD, FD, 1) != signing.signed_message(b, MD, FD, 1)
        except InvalidPathError:
            pass  # lone surrogates


@pytest.mark.parametrize(
    "args, error",
    [
        (("", MD, FD, 0), InvalidPathError),
        (("a\udc80", MD, FD, 0), InvalidPathError),
        (("a", MD[:31], FD, 0), InvalidDigestError),
        (("a", MD, FD + b"x", 0), InvalidDigestError),
        (("a", "00" * 32, FD, 0), InvalidDigestError),
        (("a", MD, FD, -1), InvalidInputError),
        (("a", MD, FD, 2**64), InvalidInputError),
        (("a", MD, FD, True), InvalidInputError),
    ],
)
def test_signed_message_rejects_bad_fields(args, error):
    with pytest.raises(error):
        signing.signed_message(*args)


# ---- sign / verify ----------------------------------------------------------------------------


def test_sign_and_verify_round_trip():
    pem, pub = signing.generate_key()
    assert len(pub) == 32 and pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    msg = signing.signed_message("docs/report.pdf", MD, FD, 1234)
    sig = signing.sign(pem, msg)
    assert len(sig) == 64
    signing.verify(pub, msg, sig)
    signing.verify_version(pub, sig, "docs/report.pdf", MD, FD, 1234)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_flipped_signature_byte_is_rejected(index):
    pem, pub = signing.generate_key()
    msg = signing.signed_message("a", MD, FD, 1)
    sig = signing.sign(pem, msg)
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify(pub, msg, _flip(sig, index))


@pytest.mark.parametrize("field", ["path", "manifest", "file", "size"])
def test_tampered_version_is_rejected(field):
    key = signing.generate_key()
    sig = signing.sign_version(key.private_pem, "a/b", MD, FD, 100)
    args = {"path": "a/b", "manifest_digest": MD, "file_digest": FD, "size": 100}
    if field == "path":
        args["path"] = "a/c"
    elif field == "manifest":
        args["manifest_digest"] = _flip(MD, 7)
    elif field == "file":
        args["file_digest"] = _flip(FD, 31)
    else:
        args["size"] = 101
    with pytest.raises(SignatureError):
        signing.verify_version(key.public_key, sig, **args)


def test_wrong_key_missing_and_malformed_signatures():
    a, b = signing.generate_key(), signing.generate_key()
    msg = signing.signed_message("x", MD, FD, 0)
    sig = signing.sign(a.private_pem, msg)
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify(b.public_key, msg, sig)
    with pytest.raises(SignatureError, match="missing"):
        signing.verify(a.public_key, msg, b"")
    with pytest.raises(SignatureError, match="64 bytes"):
        signing.verify(a.public_key, msg, sig[:63])
    with pytest.raises(SignatureError, match="public key is missing"):
        signing.verify(b"", msg, sig)
    with pytest.raises(SignatureError, match="32 valid"):
        signing.verify(a.public_key[:31], msg, sig)


def test_trusted_keys():
    a, b = signing.generate_key(), signing.generate_key()
    sig = signing.sign_version(a.private_pem, "p", MD, FD, 3)
    signing.verify_version(a.public_key, sig, "p", MD, FD, 3, trusted_keys=[b.public_key, a.public_key])
    with pytest.raises(SignatureError, match="not a trusted key"):
        signing.verify_version(a.public_key, sig, "p", MD, FD, 3, trusted_keys=[b.public_key])


def test_signatures_are_deterministic_and_key_objects_work():
    key = Ed25519PrivateKey.generate()
    msg = signing.signed_message("p", MD, FD, 3)
    assert signing.sign(key, msg) == signing.sign(key, msg)
    signing.verify(key.public_key(), msg, signing.sign(key, msg))


# ---- key files --------------------------------------------------------------------------------


def test_private_key_file_is_0600_and_round_trips(tmp_path):
    pem, pub = signing.generate_key()
    path = tmp_path / "signing-key.pem"
    old = os.umask(0)  # even a permissive umask must not widen the file
    try:
        signing.save_private_key(path, pem)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = signing.load_private_key(path)
    assert signing.public_key_bytes(key) == pub


def test_save_private_key_never_overwrites_silently(tmp_path):
    path = tmp_path / "k.pem"
    first = signing.generate_key()
    signing.save_private_key(path, first.private_pem)
    with pytest.raises(FileExistsError):
        signing.save_private_key(path, signing.generate_key().private_pem)
    assert signing.public_key_bytes(signing.load_private_key(path)) == first.public_key
    second = signing.generate_key()
    signing.save_private_key(path, second.private_pem, overwrite=True)
    assert signing.public_key_bytes(signing.load_private_key(path)) == second.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


def test_load_private_key_rejects_other_key_types(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(other)
    with pytest.raises(InvalidInputError, match="Ed25519"):
        signing.load_private_key(tmp_path / "ec.pem")
    (tmp_path / "junk.pem").write_bytes(b"not a key")
    with pytest.raises(InvalidInputError):
        signing.load_private_key(tmp_path / "junk.pem")


def test_load_public_key_accepts_every_form(tmp_path):
    key = Ed25519PrivateKey.generate()
    raw = signing.public_key_bytes(key)
    pub = key.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ssh = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    forms = [
        raw,
        pub,
        raw.hex(),
        raw.hex().upper() + "\n",
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        pem.decode(),
        pem,
        ssh.decode() + " comment",
    ]
    for form in forms:
        assert signing.load_public_key(form) == raw, form
    signing.save_public_key(tmp_path / "pub.hex", raw)
    assert (tmp_path / "pub.hex").read_text() == raw.hex() + "\n"
    assert signing.load_public_key(tmp_path / "pub.hex") == raw
    assert signing.load_public_key(str(tmp_path / "pub.hex")) == raw
    (tmp_path / "pub.raw").write_bytes(raw)
    assert signing.load_public_key(tmp_path / "pub.raw") == raw
    (tmp_path / "pub.pem").write_bytes(pem)
    assert signing.load_public_key(str(tmp_path / "pub.pem")) == raw


@pytest.mark.parametrize("bad", ["", "zz" * 32, "00" * 31, "hello", b"\x00" * 31, str(12345)])
def test_load_public_key_rejects_junk(bad):
    with pytest.raises(InvalidInputError):
        signing.load_public_key(bad)


def test_fingerprint_is_stable_and_distinct():
    a, b = signing.generate_key(), signing.generate_key()
    fa = signing.fingerprint(a.public_key)
    assert fa == signing.fingerprint(a.public_key) and fa.startswith("ed25519:") and len(fa) == 8 + 32
    assert fa != signing.fingerprint(b.public_key)
