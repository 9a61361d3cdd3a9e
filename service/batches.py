"""The batch calls CommitFiles and GetManifests: many small files per round trip.

A tree of thousands of small files is bound by round trips and per-commit durability barriers,
not by bytes. The limits of a batch are checked for the whole call first (RESOURCE_EXHAUSTED,
nothing done); after that every entry gets its own result, and what refuses one entry (a bad
path, no permission, a version conflict, missing chunks, a bad signature) becomes that entry's
ItemError with the status code and ErrorDetail the single call would have ended with.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from cas.errors import CasError, LimitExceededError
from cas.manifest import Manifest
from cas.paths import normalize_path
from proto import stratus_pb2 as pb
from service.calls import note
from service.commits import CommitOutcome, CommitRequest, Committer
from service.config import ServerConfig
from service.errors import error_detail, public_message, status_for, typed
from service.gate import Caller, Gate
from service.messages import (
    commit_manifest_from_message,
    declared_chunks,
    manifest_message,
    selector_from_message,
    version_info,
)
from service.metadata import VersionRecord
from service.repository import Repository
from service.scoped import possessed, show_manifest

log = logging.getLogger("stratus.server")


def item_error(exc: BaseException, method: str) -> pb.ItemError:
    """The ItemError of one failed entry: the code, message and detail the single call would have had."""
    exc = typed(exc)
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error in one entry of a %s call", method, exc_info=exc)
    return pb.ItemError(code=code.value[0], message=public_message(exc, method), detail=error_detail(exc))


def check_batch_size(entries: int, limit: int, method: str) -> None:
    """Refuse a batch with more entries than the server takes in one call."""
    if entries > limit:
        raise LimitExceededError(
            f"{entries} entries in one {method} call; the limit is {limit}",
            limit="max_batch_files", value=entries, maximum=limit,
        )


class BatchCalls:
    """The logic of the two batch RPCs; the servicer identifies the caller and delegates here."""

    def __init__(self, config: ServerConfig, repo: Repository, gate: Gate, committer: Committer) -> None:
        self.config = config
        self.repo = repo
        self.gate = gate
        self.committer = committer

    async def commit_files(self, caller: Caller, request: pb.CommitFilesRequest) -> pb.CommitFilesResponse:
        """Commit every file of the request that can be; see :meth:`Committer.commit_many`."""
        files = request.files
        check_batch_size(len(files), self.config.max_batch_files, "CommitFiles")
        chunks = sum(declared_chunks(f) for f in files)
        if chunks > self.config.max_manifest_chunks:
            raise LimitExceededError(
                f"{chunks} manifest chunks in one CommitFiles call; the limit is {self.config.max_manifest_chunks}",
                limit="max_manifest_chunks", value=chunks, maximum=self.config.max_manifest_chunks,
            )
        batch = [self._commit_request(caller, f) for f in files]
        if caller.view is not None:
            batch = list(await asyncio.gather(*(possessed(self.repo, caller, c) for c in batch)))
        outcomes = await self.committer.commit_many(caller.namespace, caller.identity, batch)
        written = [o for o in outcomes if isinstance(o, CommitOutcome) and not o.unchanged]
        note(files=len(outcomes), failed=sum(isinstance(o, BaseException) for o in outcomes),
             nbytes=sum(o.record.size for o in written))
        return pb.CommitFilesResponse(results=[_commit_result(o) for o in outcomes])

    def _commit_request(self, caller: Caller, f: pb.CommitFileRequest) -> CommitRequest | BaseException:
        try:
            path = normalize_path(f.path)
            self.gate.authorize(caller, path, write=True)
            return CommitRequest(
                path, commit_manifest_from_message(f),
                if_version=f.if_version if f.HasField("if_version") else None, mode=f.mode, mtime_ns=f.mtime_ns,
                signature=f.signature, signer_public_key=f.signer_public_key,
            )
        except CasError as exc:
            return exc

    async def get_manifests(self, caller: Caller, request: pb.GetManifestsRequest) -> pb.GetManifestsResponse:
        """Resolve every entry and return its manifest, within the call's chunk budget."""
        check_batch_size(len(request.files), self.config.max_batch_files, "GetManifests")
        found = await asyncio.gather(*(self._resolve(caller, r) for r in request.files), return_exceptions=True)
        # A record's chunk count bounds the response before any manifest is read.
        budget, used = self.config.max_manifest_chunks, 0
        answers: list[pb.GetManifestResponse | BaseException | None] = []
        load: list[tuple[int, VersionRecord]] = []
        for n, record in enumerate(found):
            if isinstance(record, BaseException):
                answers.append(record)
            elif load and used + record.chunk_count > budget:
                answers.append(LimitExceededError(
                    f"{record.path}: the response reached {budget} manifest chunks; ask for this file again",
                    limit="max_manifest_chunks", value=used + record.chunk_count, maximum=budget,
                ))
            else:
                used += record.chunk_count
                load.append((n, record))
                answers.append(None)
        manifests = await asyncio.gather(
            *(self.repo.manifest(record) for _, record in load), return_exceptions=True
        )
        await asyncio.gather(*(show_manifest(self.repo, caller, m) for m in manifests if isinstance(m, Manifest)))
        for (n, record), manifest in zip(load, manifests, strict=True):
            answers[n] = manifest if isinstance(manifest, BaseException) else pb.GetManifestResponse(
                version=version_info(record), manifest=manifest_message(manifest)
            )
        note(files=len(answers), failed=sum(isinstance(a, BaseException) for a in answers))
        return pb.GetManifestsResponse(results=[_manifest_result(a) for a in answers])

    async def _resolve(self, caller: Caller, r: pb.GetManifestRequest) -> VersionRecord:
        path = normalize_path(r.path)
        self.gate.authorize(caller, path, write=False)
        return await self.repo.resolve(caller.namespace, path, selector_from_message(r.at))


def _commit_result(o: CommitOutcome | BaseException) -> pb.CommitFileResult:
    if isinstance(o, BaseException):
        return pb.CommitFileResult(error=item_error(o, "CommitFiles"))
    return pb.CommitFileResult(ok=pb.CommitFileResponse(version=version_info(o.record), unchanged=o.unchanged))


def _manifest_result(a: pb.GetManifestResponse | BaseException | None) -> pb.GetManifestResult:
    assert a is not None
    if isinstance(a, BaseException):
        return pb.GetManifestResult(error=item_error(a, "GetManifests"))
    return pb.GetManifestResult(ok=a)
