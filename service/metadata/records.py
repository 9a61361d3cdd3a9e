"""Records of the metadata store and their stored form (see ``keys.py`` for where they live)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from typing import Any

_BINARY_FIELDS = ("manifest_digest", "file_digest", "signature", "signer_public_key")
# The inline manifest (service/manifests.py): base64 in the JSON, absent when the manifest is stored.
_INLINE = "manifest"


@dataclass
class VersionRecord:
    """One immutable version of a path; ``deleted`` marks a tombstone written by a delete."""

    path: str
    version: int
    manifest_digest: bytes
    size: int
    created_ms: int
    identity: str
    deleted: bool
    mode: int
    mtime_ns: int
    file_digest: bytes
    chunk_count: int
    new_chunks: int
    new_bytes: int
    signature: bytes = b""
    signer_public_key: bytes = b""
    # the manifest's canonical encoding when it is small enough to live in the record, else b""
    manifest: bytes = dc_field(default=b"", repr=False)
    # the change-feed id of the commit that wrote it (known to the writer only; not stored)
    event_id: str = dc_field(default="", compare=False)


@dataclass
class Event:
    """One entry of the change feed; pass ``cursor`` back as ``since`` to resume after it."""

    cursor: str
    kind: str
    path: str
    version: int
    size: int
    time_ms: int
    identity: str
    manifest_digest: bytes


@dataclass
class NamespaceStats:
    """Counters of one namespace. ``logical_bytes`` sums the sizes of every version committed and not
    removed by a forget; ``version_count`` counts those versions (delete markers included)."""

    chunk_count: int
    unique_bytes: int
    logical_bytes: int
    file_count: int
    version_count: int


def decode_record(path: str, raw: bytes) -> VersionRecord:
    """A version record as stored by the commit script (JSON, digests in hex)."""
    return record_from_fields({**json.loads(raw), "path": path})


def decode_event(entry_id: bytes, f: dict[bytes, bytes]) -> Event:
    """One change-feed stream entry."""
    return Event(
        cursor=entry_id.decode(),
        kind=f[b"kind"].decode(),
        path=f[b"path"].decode("utf-8"),
        version=int(f[b"version"]),
        size=int(f[b"size"]),
        time_ms=int(f[b"time_ms"]),
        identity=f[b"identity"].decode("utf-8"),
        manifest_digest=bytes.fromhex(f[b"manifest"].decode()),
    )


def encode_body(**fields: object) -> str:
    """The JSON body of a version record; the commit script prepends version and created_ms."""
    for name in _BINARY_FIELDS:
        fields[name] = bytes(fields[name]).hex()  # type: ignore[arg-type]
    _encode_inline(fields)
    # ensure_ascii=False keeps the record compact for non-ASCII identities; Lua never parses it
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def record_fields(rec: VersionRecord) -> dict[str, Any]:
    """Every field of a version record as JSON-ready values (digests in hex), without event_id."""
    # Field by field (asdict deep-copies every value: 5x slower, and this runs once per commit).
    d = {name: getattr(rec, name) for name in _STORED_FIELDS}
    for name in _BINARY_FIELDS:
        d[name] = d[name].hex()
    _encode_inline(d)
    return d


_STORED_FIELDS = tuple(f.name for f in fields(VersionRecord) if f.name != "event_id")


def record_from_fields(d: dict[str, Any], event_id: str = "") -> VersionRecord:
    """The inverse of :func:`record_fields`."""
    d = dict(d)
    for name in _BINARY_FIELDS:
        d[name] = bytes.fromhex(d[name])
    if _INLINE in d:
        d[_INLINE] = base64.b64decode(d[_INLINE], validate=True)
    return VersionRecord(**d, event_id=event_id)


def _encode_inline(fields: dict[str, Any]) -> None:
    """Replace the inline manifest by its base64 text, or drop the key when there is none (records
    without one read back with b"", so older records and stored manifests look the same)."""
    raw = fields.pop(_INLINE, b"")
    if raw:
        fields[_INLINE] = base64.b64encode(raw).decode("ascii")


def stored_form(rec: VersionRecord) -> str:
    """A record as the commit script stores it (JSON without the path, which is in the key)."""
    d = record_fields(rec)
    del d["path"]
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)
