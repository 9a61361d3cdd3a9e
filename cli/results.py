"""The values the client library returns: plain, frozen dataclasses, never protobuf messages.

Each has a ``from_message`` constructor (the only place a protobuf message becomes a library
value) and a ``to_dict`` that gives the JSON shape the CLI prints under ``--json``, so scripts
that use the library and scripts that parse the CLI see the same field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: the values themselves need no protobuf
    from cas.errors import CasError
    from cas.retention import RetentionPolicy
    from proto import stratus_pb2 as pb


def _hex(raw: bytes) -> str:
    return raw.hex() if raw else ""


@dataclass(frozen=True)
class Version:
    """One immutable version of a remote path (a delete marker when ``deleted``)."""

    path: str
    version: int
    size: int
    created_ms: int
    identity: str
    deleted: bool = False
    mode: int = 0  # POSIX permission bits the uploader gave (0 = unknown)
    mtime_ns: int = 0  # file mtime the uploader gave (0 = unknown)
    manifest_digest: str = ""  # hex; empty for delete markers
    file_digest: str = ""  # hex BLAKE3-256 of the whole file
    chunk_count: int = 0
    new_chunks: int = 0  # chunks not referenced by the previous version
    new_bytes: int = 0
    signed: bool = False
    signer_public_key: str = ""  # hex Ed25519 public key of the signer; empty when unsigned

    @classmethod
    def from_message(cls, m: pb.VersionInfo) -> Version:
        """The library value of a ``VersionInfo`` message."""
        return cls(
            path=m.path, version=m.version, size=m.size, created_ms=m.created_ms, identity=m.identity,
            deleted=m.deleted, mode=m.mode, mtime_ns=m.mtime_ns, manifest_digest=_hex(m.manifest_digest),
            file_digest=_hex(m.file_digest), chunk_count=m.chunk_count, new_chunks=m.new_chunks,
            new_bytes=m.new_bytes, signed=bool(m.signature),
            signer_public_key=_hex(m.signer_public_key),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """One page of a listing: the files, and the token of the next page ("" on the last one)."""

    files: list[Version]
    next_page_token: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"files": [f.to_dict() for f in self.files], "next_page_token": self.next_page_token}


@dataclass(frozen=True)
class ByteRange:
    """``length`` bytes from ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True)
class DiffResult:
    """How version ``to`` differs from version ``base`` (None when ``to`` is the first version)."""

    base: Version | None
    to: Version
    changed: list[ByteRange]  # ranges of ``to`` not covered by chunks of ``base``
    shared_chunks: int
    new_chunks: int
    shared_bytes: int
    new_bytes: int

    @classmethod
    def from_message(cls, m: pb.DiffResponse) -> DiffResult:
        """The library value of a ``DiffResponse`` message."""
        base = getattr(m, "from")
        return cls(
            base=Version.from_message(base) if m.HasField("from") else None, to=Version.from_message(m.to),
            changed=[ByteRange(r.offset, r.length) for r in m.changed], shared_chunks=m.shared_chunks,
            new_chunks=m.new_chunks, shared_bytes=m.shared_bytes, new_bytes=m.new_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """One entry of the change feed; pass ``cursor`` back as ``since`` to resume after it."""

    cursor: str
    kind: str  # "put", "delete" or "forgotten"
    path: str
    version: int
    size: int
    time_ms: int
    identity: str
    manifest_digest: str = ""

    @classmethod
    def from_message(cls, m: pb.Event) -> Event:
        """The library value of an ``Event`` message."""
        return cls(
            cursor=m.cursor, kind=m.kind, path=m.path, version=m.version, size=m.size, time_ms=m.time_ms,
            identity=m.identity, manifest_digest=_hex(m.manifest_digest),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Changes:
    """A batch of the change feed: the events, and the cursor to pass as ``since`` next time."""

    events: list[Event]
    cursor: str


@dataclass(frozen=True)
class StoreStats:
    """Statistics of the caller's namespace (``stored_bytes``/``store_chunk_count``: admins only)."""

    chunk_count: int
    unique_bytes: int
    logical_bytes: int
    file_count: int
    version_count: int
    stored_bytes: int = 0
    store_chunk_count: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per unique byte (1.0 when nothing is stored)."""
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0


@dataclass(frozen=True)
class ServerInfo:
    """What the server announced: who the caller is, the chunking parameters, limits, statistics."""

    server_version: str
    identity: str
    namespace: str
    chunk_min_size: int
    chunk_avg_size: int
    chunk_max_size: int
    compression: str
    compression_level: int
    max_message_bytes: int
    max_batch_bytes: int
    max_page_size: int
    max_manifest_chunks: int
    max_batch_files: int
    stats: StoreStats

    @classmethod
    def from_message(cls, m: pb.ServerInfoResponse) -> ServerInfo:
        """The library value of a ``ServerInfoResponse`` message."""
        s = m.stats
        return cls(
            server_version=m.server_version, identity=m.identity, namespace=m.namespace,
            chunk_min_size=m.chunking.min_size, chunk_avg_size=m.chunking.avg_size,
            chunk_max_size=m.chunking.max_size, compression=m.compression,
            compression_level=m.compression_level, max_message_bytes=m.max_message_bytes,
            max_batch_bytes=m.max_batch_bytes, max_page_size=m.max_page_size,
            max_manifest_chunks=m.max_manifest_chunks, max_batch_files=m.max_batch_files,
            stats=StoreStats(
                chunk_count=s.chunk_count, unique_bytes=s.unique_bytes, logical_bytes=s.logical_bytes,
                file_count=s.file_count, version_count=s.version_count, stored_bytes=s.stored_bytes,
                store_chunk_count=s.store_chunk_count,
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class VersionVerdict:
    """What a forget does with one version: keep it (``reasons`` says which rules) or remove it."""

    version: Version
    keep: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, m: pb.VersionVerdict) -> VersionVerdict:
        """The library value of a ``VersionVerdict`` message."""
        return cls(Version.from_message(m.version), m.keep, tuple(m.reasons))


@dataclass(frozen=True)
class ForgetPath:
    """One path of a forget: every version with its verdict (newest first) and how many this run
    removed (0 on a dry run), or the error that stopped it for this path (the others went on)."""

    path: str
    versions: list[VersionVerdict]
    removed: int = 0
    error: CasError | None = None

    @property
    def kept(self) -> list[VersionVerdict]:
        """The versions that stay."""
        return [v for v in self.versions if v.keep]

    @property
    def dropped(self) -> list[VersionVerdict]:
        """The versions the policy removes (removed, or to be removed on a dry run)."""
        return [v for v in self.versions if not v.keep]


@dataclass(frozen=True)
class ForgetReport:
    """The outcome of ``Client.forget``: the policy, and one :class:`ForgetPath` per path, in path order."""

    prefix: str
    policy: RetentionPolicy
    dry_run: bool
    paths: list[ForgetPath]

    @property
    def removed(self) -> int:
        """Versions this run removed (0 on a dry run)."""
        return sum(p.removed for p in self.paths)

    @property
    def would_remove(self) -> int:
        """Versions the policy drops (what a dry run would remove)."""
        return sum(len(p.dropped) for p in self.paths)

    @property
    def kept(self) -> int:
        """Versions that stay."""
        return sum(len(p.kept) for p in self.paths)

    @property
    def failures(self) -> list[ForgetPath]:
        """The paths that failed."""
        return [p for p in self.paths if p.error is not None]

    @property
    def first_error(self) -> CasError | None:
        """The error of the first failed path, or None."""
        return next((p.error for p in self.paths if p.error is not None), None)
