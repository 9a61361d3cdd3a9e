"""Conversions between API messages and library objects (:mod:`cas`, service records)."""

from __future__ import annotations

from cas import digest
from cas.errors import ManifestError
from cas.manifest import ChunkRef, Manifest
from cas.retention import Duration, RetentionPolicy
from proto import stratus_pb2 as pb
from proto.pieces import pieces_from_message
from service.commits import ManifestDelta
from service.metadata import Event, VersionRecord
from service.repository import Selector


def version_info(r: VersionRecord) -> pb.VersionInfo:
    """A metadata record as the API's VersionInfo."""
    return pb.VersionInfo(
        path=r.path, version=r.version, manifest_digest=r.manifest_digest, size=r.size,
        created_ms=r.created_ms, identity=r.identity, deleted=r.deleted, mode=r.mode,
        mtime_ns=r.mtime_ns, file_digest=r.file_digest, chunk_count=r.chunk_count,
        new_chunks=r.new_chunks, new_bytes=r.new_bytes, signature=r.signature,
        signer_public_key=r.signer_public_key,
    )


def event_message(e: Event) -> pb.Event:
    """A change-feed entry as the API's Event."""
    return pb.Event(
        cursor=e.cursor, kind=e.kind, path=e.path, version=e.version, size=e.size,
        time_ms=e.time_ms, identity=e.identity, manifest_digest=e.manifest_digest,
    )


def manifest_from_message(m: pb.Manifest) -> Manifest:
    """Validate and convert a client's manifest; ManifestError on anything inconsistent."""
    refs = []
    for ref in m.chunks:
        if len(ref.digest) != digest.DIGEST_SIZE:
            raise ManifestError(f"manifest chunk digest must be {digest.DIGEST_SIZE} bytes, got {len(ref.digest)}")
        refs.append(ChunkRef(ref.digest, ref.length))
    if len(m.file_digest) != digest.DIGEST_SIZE:
        raise ManifestError("manifest file_digest must be 32 bytes")
    total = sum(r.length for r in refs)
    if total != m.size:
        raise ManifestError(f"manifest size {m.size} does not equal the sum of its chunk lengths ({total})")
    return Manifest(chunks=tuple(refs), size=m.size, file_digest=m.file_digest)


def commit_manifest_from_message(r: pb.CommitFileRequest) -> Manifest | ManifestDelta:
    """A commit's manifest: the full form, or the delta form against ``base_manifest_digest``."""
    if not r.base_manifest_digest:
        if r.pieces:
            raise ManifestError("manifest pieces need a base_manifest_digest")
        return manifest_from_message(r.manifest)
    if len(r.base_manifest_digest) != digest.DIGEST_SIZE:
        raise ManifestError(f"base_manifest_digest must be {digest.DIGEST_SIZE} bytes")
    if r.manifest.chunks:
        raise ManifestError("a delta commit gives its chunks as pieces, not in the manifest")
    if len(r.manifest.file_digest) != digest.DIGEST_SIZE:
        raise ManifestError("manifest file_digest must be 32 bytes")
    pieces = pieces_from_message(r.pieces)
    return ManifestDelta(r.base_manifest_digest, tuple(pieces), r.manifest.size, r.manifest.file_digest)


def declared_chunks(r: pb.CommitFileRequest) -> int:
    """How many chunks a commit claims to have (before a delta is expanded); bounds a batch."""
    return len(r.manifest.chunks) + sum(
        piece.copy.count if piece.WhichOneof("piece") == "copy" else 1 for piece in r.pieces
    )


def manifest_message(m: Manifest) -> pb.Manifest:
    """A manifest as the API's Manifest message."""
    return pb.Manifest(
        chunks=[pb.ChunkRef(digest=c.digest, length=c.length) for c in m.chunks],
        size=m.size, file_digest=m.file_digest,
    )


def selector_from_message(at: pb.VersionSelector) -> Selector:
    """A VersionSelector as the repository's Selector."""
    return Selector(version=at.version, as_of_ms=at.as_of_ms)


def policy_from_message(m: pb.RetentionPolicy) -> RetentionPolicy:
    """The retention policy of a request (InvalidPolicyError for a bad count or duration)."""
    return RetentionPolicy(
        last=m.keep_last, hourly=m.keep_hourly, daily=m.keep_daily, weekly=m.keep_weekly, monthly=m.keep_monthly,
        yearly=m.keep_yearly, within=Duration.parse(m.keep_within),
    )
