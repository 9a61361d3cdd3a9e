"""Turning client manifests into versions: one file (CommitFile, Upload) or a batch (CommitFiles).

Both paths share the same steps, so a file committed alone and a file committed in a batch end
up with the same version record: validate (limits, signature), read the head, store the manifest,
skip the write when nothing changed, diff against the previous version, and run the metadata
commit script, then journal the record (service/journal.py) before anyone is told; an unchanged
commit journals the head it found again, so whatever is acknowledged is in the journal. A batch
stores all of its manifests with one durability barrier, issues the metadata commits
concurrently (so Redis/Valkey can make them durable together) and journals all of their records
with one barrier, instead of paying one fsync per file in turn. Each file of a batch succeeds or
fails on its own.

A commit may also arrive as a delta against a base manifest (runs of the base plus literal
chunks). It is expanded to the full manifest first, so everything after that step is the same
for both forms. The base must be a version of the same path in the caller's namespace: a client
can only reuse what it could already read, never another path's or another tenant's manifest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cas import signing
from cas.diff import diff_manifests
from cas.errors import InvalidInputError, ManifestError, MissingChunksError, NotFoundError
from cas.manifest import Manifest
from cas.manifestpieces import Piece, apply_pieces
from service.metadata import VersionRecord
from service.repository import Repository


@dataclass(frozen=True)
class ManifestDelta:
    """A manifest described as edits of a base manifest (see the module docstring)."""

    base_digest: bytes
    pieces: tuple[Piece, ...]
    size: int
    file_digest: bytes


@dataclass(frozen=True)
class CommitRequest:
    """One file to commit, already converted from the wire and with a normalised path."""

    path: str
    manifest: Manifest | ManifestDelta
    if_version: int | None
    mode: int
    mtime_ns: int
    signature: bytes = b""
    signer_public_key: bytes = b""


@dataclass(frozen=True)
class CommitOutcome:
    """The version a commit produced, or the head it left in place (``unchanged``)."""

    record: VersionRecord
    unchanged: bool = False


class Committer:
    """Commits manifests as versions of paths in a namespace (see the module docstring)."""

    def __init__(self, repo: Repository, max_manifest_chunks: int) -> None:
        self.repo = repo
        self.max_manifest_chunks = max_manifest_chunks

    async def expand(self, ns: str, c: CommitRequest) -> CommitRequest:
        """The request with a delta replaced by the full manifest (unchanged for a full one)."""
        delta = c.manifest
        if isinstance(delta, Manifest):
            return c
        await self.check_base(ns, c.path, delta.base_digest)
        base = await self.repo.load_manifest(delta.base_digest)
        chunks = apply_pieces(base.chunks, delta.pieces, self.max_manifest_chunks)
        total = sum(ref.length for ref in chunks)
        if total != delta.size:
            raise ManifestError(f"manifest size {delta.size} does not equal the sum of its chunk lengths ({total})")
        return replace(c, manifest=Manifest(chunks=tuple(chunks), size=delta.size, file_digest=delta.file_digest))

    async def check_base(self, ns: str, path: str, base_digest: bytes) -> None:
        """NotFoundError unless ``base_digest`` is the manifest of a version of ``path`` in ``ns``."""
        # The head is the usual base; the whole history is read only when it is not.
        head = await self.repo.head(ns, path)
        if head is not None and head.manifest_digest == base_digest:
            return
        if head is not None and any(
            r.manifest_digest == base_digest for r in await self.repo.versions(ns, path)
        ):
            return
        raise NotFoundError(f"{path}: the base manifest is not the manifest of any version of this path")

    def check(self, c: CommitRequest) -> None:
        """Refuse what must never reach the store: absurd manifests, bad signatures."""
        assert isinstance(c.manifest, Manifest), "deltas are expanded before they are checked"
        self.repo.check_manifest_limits(c.manifest, self.max_manifest_chunks)
        if c.signature:
            m = c.manifest
            signing.verify(
                c.signer_public_key, signing.signed_message(c.path, m.digest(), m.file_digest, m.size), c.signature
            )

    async def commit(self, ns: str, identity: str, c: CommitRequest) -> CommitOutcome:
        """Commit one file; raises the typed error of whatever refused it."""
        c = await self.expand(ns, c)
        self.check(c)
        head = await self.repo.head(ns, c.path)
        manifest_digest = await self.repo.save_manifest(c.manifest)
        outcome = await self._write(ns, identity, c, head, manifest_digest)
        await self.repo.journal_versions(ns, [outcome.record])
        return outcome

    async def commit_many(
        self, ns: str, identity: str, batch: Sequence[CommitRequest | BaseException]
    ) -> list[CommitOutcome | BaseException]:
        """Commit a batch; returns, in order, each file's outcome or the error that refused it.

        Entries that are already errors (a bad path, a refused authorisation) are passed through.
        A path given twice fails on its later entries: concurrent commits of one path would each
        diff against the same head.
        """
        expanded = await asyncio.gather(
            *(self._expanded(ns, c) for c in batch), return_exceptions=True
        )
        results: list[CommitOutcome | BaseException] = list(expanded)
        seen: set[str] = set()
        ready: list[tuple[int, CommitRequest]] = []
        for n, c in enumerate(expanded):
            if isinstance(c, BaseException):
                continue
            try:
                if c.path in seen:
                    raise InvalidInputError(f"{c.path}: appears more than once in one CommitFiles call")
                seen.add(c.path)
                self.check(c)
            except Exception as exc:  # noqa: BLE001 - reported as this file's result
                results[n] = exc
                continue
            ready.append((n, c))
        if not ready:
            return results
        heads, digests = await asyncio.gather(
            asyncio.gather(*(self.repo.head(ns, c.path) for _, c in ready)),
            self.repo.save_manifests([c.manifest for _, c in ready]),
        )
        outcomes = await asyncio.gather(
            *(self._write(ns, identity, c, h, d) for (_, c), h, d in zip(ready, heads, digests, strict=True)),
            return_exceptions=True,
        )
        done = [o.record for o in outcomes if isinstance(o, CommitOutcome)]
        try:
            await self.repo.journal_versions(ns, done)
        except Exception as exc:  # noqa: BLE001 - not durable, so not acknowledged
            outcomes = [exc if isinstance(o, CommitOutcome) else o for o in outcomes]
        for (n, _), outcome in zip(ready, outcomes, strict=True):
            results[n] = outcome
        return results

    async def _expanded(self, ns: str, c: CommitRequest | BaseException) -> CommitRequest | BaseException:
        return c if isinstance(c, BaseException) else await self.expand(ns, c)

    async def _write(
        self, ns: str, identity: str, c: CommitRequest, head: VersionRecord | None, manifest_digest: bytes
    ) -> CommitOutcome:
        if (
            head is not None and not head.deleted and head.manifest_digest == manifest_digest
            and head.mode == c.mode and head.mtime_ns == c.mtime_ns and head.signature == c.signature
            and c.if_version in (None, head.version)
        ):
            return CommitOutcome(head, unchanged=True)
        damaged = self.repo.damaged_among(ref.digest for ref in c.manifest.chunks)
        if damaged:
            # A new version must not reference a copy known to be bad: the client re-sends these
            # chunks (FindMissingChunks lists them), which repairs the store, and commits again.
            raise MissingChunksError(damaged)
        previous = await self.repo.manifest_of(head)
        delta = diff_manifests(previous, c.manifest)
        record = await self.repo.commit_version(
            ns, c.path, manifest_digest=manifest_digest, size=c.manifest.size, file_digest=c.manifest.file_digest,
            chunk_digests=[ref.digest for ref in c.manifest.chunks],
            chunk_lengths=[ref.length for ref in c.manifest.chunks], chunk_count=len(c.manifest.chunks),
            new_chunks=delta.new_chunks, new_bytes=delta.new_bytes, identity=identity,
            mode=c.mode, mtime_ns=c.mtime_ns, signature=c.signature, signer_public_key=c.signer_public_key,
            if_version=c.if_version,
        )
        return CommitOutcome(record)
