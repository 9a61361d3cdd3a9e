"""The upload engine on a group of small files: one FindMissingChunks, PutChunks and CommitFiles per group.

Uploading a 1 KiB file on its own costs three round trips and a streaming call: for a tree of
thousands of small files that overhead, not the bytes, sets the pace. Here each file of a group is
prepared (read, chunked and hashed) in memory, then the group goes through the engine's shared
stages (:func:`cli.upload.find_missing`, the sender, :func:`cli.upload.commit_request`) together.
The results stay per file: each is its own version, with its own signature, and fails on its own.
"""

from __future__ import annotations

import io
import os
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from cas.chunker import chunk_bytes
from cas.digest import digest as blake3_digest
from cas.errors import MissingChunksError
from cas.manifest import Manifest, ManifestBuilder
from cas.pipeline import HashedChunk
from cli import batch
from cli.deltahints import group_bases
from cli.grouping import SMALL_FILE_MAX
from cli.manifestdelta import ManifestCache
from cli.pacing import RateLimitBudget, retry_rate_limited
from cli.remote import Remote
from cli.results import Version
from cli.upload import (
    Advance,
    FileOutcome,
    _Meter,
    _Sender,
    commit_request,
    committing,
    find_missing,
    stream_source,
    upload,
)


@dataclass(frozen=True)
class Buffer:
    """A small file already read into memory: its bytes, mode and mtime, where it goes, and the
    head version its commit requires (``if_version``; None: any)."""

    local: str
    path: str
    data: bytes
    mode: int
    mtime_ns: int
    if_version: int | None = None


@dataclass
class _Prepared:
    """A small file read into memory, cut into chunks, and the outcome it will end as."""

    outcome: FileOutcome
    manifest: Manifest
    chunks: list[HashedChunk]
    buffer: Buffer
    frames: dict[bytes, int] = field(default_factory=dict)  # digests this file sends for the group


class FileGrewError(OSError):
    """The file grew past the small-file limit after the walk."""

    def __init__(self) -> None:
        super().__init__("the file grew while the tree was uploaded; run the upload again")


def _read(local: str, path: str) -> Buffer:
    with open(local, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read(SMALL_FILE_MAX + 1)
    if len(data) > SMALL_FILE_MAX:
        raise FileGrewError()
    return Buffer(local, path, data, st.st_mode & 0o777, st.st_mtime_ns)


def _prepare(remote: Remote, buffer: Buffer) -> _Prepared:
    data = buffer.data
    builder = ManifestBuilder()
    chunks = []
    for chunk in chunk_bytes(data, remote.params.chunking):
        d = blake3_digest(chunk.data)
        builder.add(d, chunk.length)
        chunks.append(HashedChunk(chunk.offset, chunk.length, d, chunk.data))
    outcome = FileOutcome(buffer.path, buffer.local, "uploaded", bytes_read=len(data), chunks_total=len(chunks))
    # A file of one chunk is hashed once: its file digest is that chunk's digest (the same bytes).
    whole = chunks[0].digest if len(chunks) == 1 else blake3_digest(data)
    return _Prepared(outcome, builder.build(whole), chunks, buffer)


def _hints(
    remote: Remote, owners: list[tuple[HashedChunk, _Prepared]], existing: Container[str] | None
) -> dict[bytes, list[bytes]]:
    """Delta hints of the chunks to send, against the head manifests of their files (one
    GetManifests call for the files that send something and may exist: all of them unless
    ``existing`` names the remote paths that do)."""
    if not remote.info().delta_hints:
        return {}
    paths = list(dict.fromkeys(p.outcome.remote for _, p in owners))
    bases = group_bases(remote, [path for path in paths if existing is None or path in existing])
    hints: dict[bytes, list[bytes]] = {}
    for c, p in owners:
        base = bases.get(p.outcome.remote)
        if base is not None and (near := base.near(c.offset, c.digest)):
            hints[c.digest] = near
    return hints


def _send(remote: Remote, prepared: list[_Prepared], existing: Container[str] | None,
          budget: RateLimitBudget) -> None:
    """Find and send the group's missing chunks on one call (with delta hints); each chunk is
    counted for the first file that holds it. A rate-limited PutChunks is sent again within
    ``budget``; other failures are raised (that dooms the whole group)."""
    first: dict[bytes, tuple[HashedChunk, _Prepared]] = {}
    for p in prepared:
        for c in p.chunks:
            first.setdefault(c.digest, (c, p))
    missing = find_missing(remote, list(first))
    if not missing:
        return
    owners = [first[d] for d in first if d in missing]
    hints = _hints(remote, owners, existing)
    # Asked once: a retry sends the same chunks again (see cli.upload._resend_missing for why).
    sender = retry_rate_limited(lambda: _send_chunks(remote, [c for c, _ in owners], hints), budget)
    assert sender.frames is not None
    for d, size in sender.frames.items():
        owner = first[d][1].outcome
        owner.chunks_sent += 1
        owner.bytes_sent += size


def _send_chunks(remote: Remote, chunks: list[HashedChunk], hints: dict[bytes, list[bytes]]) -> _Sender:
    """One PutChunks call carrying ``chunks`` and their delta ``hints``."""
    sender = _Sender(remote, remote.params, _Meter(None), track=True)
    try:
        sender.submit(chunks, hints)
        sender.finish()
    except BaseException:
        sender.abort()
        raise
    return sender


def upload_group(
    remote: Remote, items: Sequence[tuple[str, str]], *, sign_key: object = None,
    advance: Advance | None = None, cache: ManifestCache | None = None, existing: Container[str] | None = None,
) -> list[FileOutcome]:
    """Upload small files, given as ``(local path, remote path)``; one outcome per item, in order.

    ``existing``, when known, holds the remote paths that have a head (only those have a base
    for delta hints).

    A file's own failure (unreadable, refused commit) is its ``failed`` outcome; errors of the
    group's calls (the server is gone, the credentials are refused) are raised, and then none of
    the group was committed by this call.
    """
    outcomes: list[FileOutcome] = []
    buffers: list[Buffer] = []
    for local, path in items:
        try:
            buffers.append(_read(local, path))
        except OSError as exc:
            outcomes.append(FileOutcome(path, local, "failed", error=exc))
            continue
        outcomes.append(FileOutcome(path, local, "pending"))
    done = iter(upload_buffers(remote, buffers, sign_key=sign_key, cache=cache, existing=existing))
    outcomes = [next(done) if o.status == "pending" else o for o in outcomes]
    if advance is not None:
        advance(sum(o.bytes_read for o in outcomes))
    return outcomes


def upload_buffers(
    remote: Remote, buffers: Sequence[Buffer], *, sign_key: object = None, cache: ManifestCache | None = None,
    existing: Container[str] | None = None,
) -> list[FileOutcome]:
    """Upload small files already in memory as one group (each with its own ``if_version``); one
    outcome per buffer, in order. Errors of the group's calls are raised (see :func:`upload_group`)."""
    prepared = [_prepare(remote, b) for b in buffers]
    if prepared:
        budget = RateLimitBudget()
        _send(remote, prepared, existing, budget)
        _commit(remote, prepared, sign_key, cache, budget)
    return [p.outcome for p in prepared]


def _commit(
    remote: Remote, prepared: list[_Prepared], sign_key: object, cache: ManifestCache | None, budget: RateLimitBudget
) -> None:
    requests = [
        commit_request(p.outcome.remote, p.manifest, mode=p.buffer.mode, mtime_ns=p.buffer.mtime_ns,
                       if_version=p.buffer.if_version, sign_key=sign_key)
        for p in prepared
    ]
    with committing():
        answers = batch.commit_many(remote, requests, budget)
    for p, answer in zip(prepared, answers, strict=True):
        o = p.outcome
        if isinstance(answer, MissingChunksError):
            # A garbage collection raced the group: this file alone takes the path that resends.
            b = p.buffer
            try:
                retry = upload(remote, stream_source(io.BytesIO(b.data)), o.remote, local=o.local,
                               if_version=b.if_version, mode=b.mode, mtime_ns=b.mtime_ns, sign_key=sign_key,
                               cache=cache)
            except Exception as exc:  # noqa: BLE001 - the caller decides what is fatal
                o.status, o.error = "failed", exc
                continue
            o.version, o.status = retry.version, retry.status
            o.bytes_sent += retry.bytes_sent
            o.chunks_sent += retry.chunks_sent
        elif isinstance(answer, BaseException):
            o.status, o.error = "failed", answer
        else:
            o.version, o.status = Version.from_message(answer.version), "unchanged" if answer.unchanged else "uploaded"
