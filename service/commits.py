"""Turning client manifests into versions: one file (CommitFile, Upload) or a batch (CommitFiles).

Both paths share the same steps (a single file is a batch of one), so a file committed alone
and a file committed in a batch end up with the same version record: validate (limits,
signature), store the manifests that are too large to live in the record (service/manifests.py;
one durability barrier for the batch, before any record names them), skip the write when nothing
changed, diff against the previous version, and run the metadata commit script, then claim the
stored manifests back from garbage collection (storing again one it dropped between the save and
the commit, :meth:`service.manifests.ManifestStore.reclaim`), then journal the records
(service/journal.py) with one barrier before anyone is told; an unchanged commit journals
the head it found again, so whatever is acknowledged is in the journal. The whole batch is one
commit script call (one metadata round trip for new files, see :meth:`Committer._write_all`), and
each file of it succeeds or fails on its own.

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
from service.metadata.store import HeadMoved, PutVersion
from service.repository import Repository

# Commit script calls per batch at most: against the believed heads, against the heads found,
# then unchecked (see Committer._write_all).
_ROUNDS = 3
_RECORD_BYTES = 2048  # a journal record without its inline manifest, generously


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
        base = await self.repo.manifest(await self.base_record(ns, c.path, delta.base_digest))
        chunks = apply_pieces(base.chunks, delta.pieces, self.max_manifest_chunks)
        total = sum(ref.length for ref in chunks)
        if total != delta.size:
            raise ManifestError(f"manifest size {delta.size} does not equal the sum of its chunk lengths ({total})")
        return replace(c, manifest=Manifest(chunks=tuple(chunks), size=delta.size, file_digest=delta.file_digest))

    async def base_record(self, ns: str, path: str, base_digest: bytes) -> VersionRecord:
        """The version of ``path`` in ``ns`` whose manifest is ``base_digest`` (NotFoundError if none)."""
        # The head is the usual base; the whole history is read only when it is not.
        head = await self.repo.head(ns, path)
        if head is not None and not head.deleted and head.manifest_digest == base_digest:
            return head
        for r in await self.repo.versions(ns, path) if head is not None else []:
            if not r.deleted and r.manifest_digest == base_digest:
                return r
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
        outcome = (await self.commit_many(ns, identity, [c]))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def commit_many(
        self, ns: str, identity: str, batch: Sequence[CommitRequest | BaseException]
    ) -> list[CommitOutcome | BaseException]:
        """Commit a batch; returns, in order, each file's outcome or the error that refused it.

        Entries that are already errors (a bad path, a refused authorisation) are passed through.
        A path given twice fails on its later entries: concurrent commits of one path would each
        diff against the same head.
        """
        expanded = await self._expanded(ns, batch)
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
        outcomes = await self._write_all(ns, identity, [c for _, c in ready])
        done = [o.record for o in outcomes if isinstance(o, CommitOutcome)]
        try:
            await self.repo.reclaim_manifests(
                [c.manifest for (_, c), o in zip(ready, outcomes, strict=True) if isinstance(o, CommitOutcome)]
            )
            await self.repo.journal_versions(ns, done)
        except Exception as exc:  # noqa: BLE001 - not durable, so not acknowledged
            outcomes = [exc if isinstance(o, CommitOutcome) else o for o in outcomes]
        for (n, _), outcome in zip(ready, outcomes, strict=True):
            results[n] = outcome
        return results

    async def _write_all(
        self, ns: str, identity: str, ready: Sequence[CommitRequest]
    ) -> list[CommitOutcome | BaseException]:
        """Store the manifests (one barrier), then write every version with one commit script
        call per round.

        Each file is written against the head it is believed to have (none, at first: a new
        file, the common case of a push); the script writes it only if that is still the head,
        else answers with the head it found, and the next round diffs against that one. So a batch
        of new files takes one metadata round trip, a batch of changed ones two; the last round
        writes unchecked, so contention never fails a commit that has no if_version.
        """
        stored = await self.repo.save_manifests([c.manifest for c in ready])
        heads: list[VersionRecord | None] = [None] * len(ready)
        outcomes: list[CommitOutcome | BaseException | None] = [None] * len(ready)
        pending = list(range(len(ready)))
        for attempt in range(_ROUNDS):
            checked = attempt < _ROUNDS - 1
            puts: list[tuple[int, PutVersion]] = []
            for i in pending:
                try:
                    put = await self._put(identity, ready[i], heads[i], *stored[i], checked)
                except Exception as exc:  # noqa: BLE001 - reported as this file's result
                    outcomes[i] = exc
                    continue
                if put is None:
                    outcomes[i] = CommitOutcome(heads[i], unchanged=True)  # type: ignore[arg-type]
                else:
                    puts.append((i, put))
            replies = await self._commit_group(ns, [p for _, p in puts])
            pending = []
            for (i, _), reply in zip(puts, replies, strict=True):
                if isinstance(reply, HeadMoved):
                    heads[i] = reply.head
                    pending.append(i)
                else:
                    outcomes[i] = reply if isinstance(reply, BaseException) else CommitOutcome(reply)
            if not pending:
                break
        assert all(o is not None for o in outcomes), "the last round is unchecked, so every file has an outcome"
        return outcomes  # type: ignore[return-value]

    async def _commit_group(self, ns: str, puts: Sequence[PutVersion]) -> list[VersionRecord | HeadMoved | Exception]:
        """Run the commit script for ``puts`` once the journal has room for their records."""
        if not puts:
            return []
        # A record is its JSON body (the inline manifest in base64) and a few hundred bytes more.
        self.repo.journal.check_room(sum(_RECORD_BYTES + 2 * len(p.manifest) for p in puts))
        return await self.repo.commit_group(ns, puts)

    async def _expanded(
        self, ns: str, batch: Sequence[CommitRequest | BaseException]
    ) -> list[CommitRequest | BaseException]:
        """The batch with every delta expanded (concurrently), or replaced by the error that refused it."""
        out = list(batch)
        deltas = [(n, c) for n, c in enumerate(batch)
                  if isinstance(c, CommitRequest) and isinstance(c.manifest, ManifestDelta)]
        found = await asyncio.gather(*(self.expand(ns, c) for _, c in deltas), return_exceptions=True)
        for (n, _), c in zip(deltas, found, strict=True):
            out[n] = c
        return out

    async def _put(
        self, identity: str, c: CommitRequest, head: VersionRecord | None, manifest_digest: bytes, inline: bytes,
        checked: bool,
    ) -> PutVersion | None:
        """The version to write over ``head`` (expected to be the head when ``checked``), or None
        when it would repeat the head (an unchanged commit)."""
        assert isinstance(c.manifest, Manifest)
        if (
            head is not None and not head.deleted and head.manifest_digest == manifest_digest
            and head.mode == c.mode and head.mtime_ns == c.mtime_ns and head.signature == c.signature
            and c.if_version in (None, head.version)
        ):
            return None
        damaged = self.repo.damaged_among(ref.digest for ref in c.manifest.chunks)
        if damaged:
            # A new version must not reference a copy known to be bad: the client re-sends these
            # chunks (FindMissingChunks lists them), which repairs the store, and commits again.
            raise MissingChunksError(damaged)
        previous = await self.repo.manifest_of(head)
        delta = diff_manifests(previous, c.manifest)
        return PutVersion(
            path=c.path, manifest_digest=manifest_digest, size=c.manifest.size, file_digest=c.manifest.file_digest,
            chunk_digests=[ref.digest for ref in c.manifest.chunks],
            chunk_lengths=[ref.length for ref in c.manifest.chunks], chunk_count=len(c.manifest.chunks),
            new_chunks=delta.new_chunks, new_bytes=delta.new_bytes, identity=identity,
            mode=c.mode, mtime_ns=c.mtime_ns, signature=c.signature, signer_public_key=c.signer_public_key,
            if_version=c.if_version, expected=(head.version if head else 0) if checked else None, manifest=inline,
        )
