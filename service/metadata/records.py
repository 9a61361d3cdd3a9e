"""Records of the metadata store and their stored form (see ``keys.py`` for where they live)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any

_BINARY_FIELDS = ("manifest_digest", "file_digest", "signature", "signer_public_key")


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
    d = json.loads(raw)
    for field in _BINARY_FIELDS:
        d[field] = bytes.fromhex(d[field])
    return VersionRecord(path=path, **d)


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
    # ensure_ascii=False keeps the record compact for non-ASCII identities; Lua never parses it
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def record_fields(rec: VersionRecord) -> dict[str, Any]:
    """Every field of a version record as JSON-ready values (digests in hex), without event_id."""
    d = asdict(rec)
    del d["event_id"]
    for name in _BINARY_FIELDS:
        d[name] = d[name].hex()
    return d


def record_from_fields(d: dict[str, Any], event_id: str = "") -> VersionRecord:
    """The inverse of :func:`record_fields`."""
    d = dict(d)
    for name in _BINARY_FIELDS:
        d[name] = bytes.fromhex(d[name])
    return VersionRecord(**d, event_id=event_id)


def stored_form(rec: VersionRecord) -> str:
    """A record as the commit script stores it (JSON without the path, which is in the key)."""
    d = record_fields(rec)
    del d["path"]
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)
