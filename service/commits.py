"""Turning client manifests into versions: one file (CommitFile, Upload) or a batch (CommitFiles).

Both paths share the same steps, so a file committed alone and a file committed in a batch end
up with the same version record: validate (limits, signature), read the head, store the manifest,
skip the write when nothing changed, diff against the previous version, and run the metadata
commit script. A batch stores all of its manifests with one durability barrier and then issues
the metadata commits concurrently, so Redis/Valkey can make them durable together instead of
paying one fsync per file in turn. Each file of a batch succeeds or fails on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from cas import signing
from cas.diff import diff_manifests
from cas.errors import InvalidInputError
from cas.manifest import Manifest
from service.metadata import VersionRecord
from service.repository import Repository


@dataclass(frozen=True)
class CommitRequest:
    """One file to commit, already converted from the wire and with a normalised path."""

    path: str
    manifest: Manifest
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

    def check(self, c: CommitRequest) -> None:
        """Refuse what must never reach the store: absurd manifests, bad signatures."""
        self.repo.check_manifest_limits(c.manifest, self.max_manifest_chunks)
        if c.signature:
            m = c.manifest
            signing.verify(
                c.signer_public_key, signing.signed_message(c.path, m.digest(), m.file_digest, m.size), c.signature
            )

    async def commit(self, ns: str, identity: str, c: CommitRequest) -> CommitOutcome:
        """Commit one file; raises the typed error of whatever refused it."""
        self.check(c)
        head = await self.repo.metadata.head(ns, c.path)
        manifest_digest = await self.repo.save_manifest(c.manifest)
        return await self._write(ns, identity, c, head, manifest_digest)

    async def commit_many(
        self, ns: str, identity: str, batch: Sequence[CommitRequest | BaseException]
    ) -> list[CommitOutcome | BaseException]:
        """Commit a batch; returns, in order, each file's outcome or the error that refused it.

        Entries that are already errors (a bad path, a refused authorisation) are passed through.
        A path given twice fails on its later entries: concurrent commits of one path would each
        diff against the same head.
        """
        results: list[CommitOutcome | BaseException] = list(batch)
        seen: set[str] = set()
        ready: list[tuple[int, CommitRequest]] = []
        for n, c in enumerate(batch):
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
            asyncio.gather(*(self.repo.metadata.head(ns, c.path) for _, c in ready)),
            self.repo.save_manifests([c.manifest for _, c in ready]),
        )
        outcomes = await asyncio.gather(
            *(self._write(ns, identity, c, h, d) for (_, c), h, d in zip(ready, heads, digests, strict=True)),
            return_exceptions=True,
        )
        for (n, _), outcome in zip(ready, outcomes, strict=True):
            results[n] = outcome
        return results

    async def _write(
        self, ns: str, identity: str, c: CommitRequest, head: VersionRecord | None, manifest_digest: bytes
    ) -> CommitOutcome:
        if (
            head is not None and not head.deleted and head.manifest_digest == manifest_digest
            and head.mode == c.mode and head.mtime_ns == c.mtime_ns and head.signature == c.signature
            and c.if_version in (None, head.version)
        ):
            return CommitOutcome(head, unchanged=True)
        previous = await self.repo.manifest_of(head)
        delta = diff_manifests(previous, c.manifest)
        record = await self.repo.metadata.commit(
            ns, c.path, manifest_digest=manifest_digest, size=c.manifest.size, file_digest=c.manifest.file_digest,
            chunk_digests=c.manifest.unique_digests(), chunk_count=len(c.manifest.chunks),
            new_chunks=delta.new_chunks, new_bytes=delta.new_bytes, identity=identity,
            mode=c.mode, mtime_ns=c.mtime_ns, signature=c.signature, signer_public_key=c.signer_public_key,
            if_version=c.if_version,
        )
        return CommitOutcome(record)
