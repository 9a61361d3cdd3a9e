"""Many small files per round trip: CommitFiles and GetManifests, with per-file results.

Each entry of a batch call succeeds or fails on its own; a failed entry comes back as the typed
error of :mod:`cas.errors` that the single call would have raised (decoded from the entry's
ErrorDetail by cli/rpc_errors.py), so callers handle a conflict
or missing chunks per file exactly as before. Requests are split to fit the server's announced
limits (entries per call, manifest chunks per call). A server that predates the batch calls is
served one call per file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from cas.errors import CasError, IntegrityError, LimitExceededError
from cli.pacing import RateLimitBudget, retry_rate_limited
from cli.remote import Remote
from cli.rpc_errors import map_item_error, map_rpc_error
from proto import stratus_pb2 as pb

R = TypeVar("R")
Q = TypeVar("Q")


def commit_many(
    remote: Remote, requests: Sequence[pb.CommitFileRequest], budget: RateLimitBudget | None = None
) -> list[pb.CommitFileResponse | CasError]:
    """Commit every request; returns, in order, each file's response or the typed error that refused it.

    Errors that concern the whole call (the server is unreachable, the credentials are refused)
    are raised. A rate-limited CommitFiles call is retried within ``budget`` (a new one when None):
    the server refused it before committing anything.
    """
    budget = budget or RateLimitBudget()
    out: list[pb.CommitFileResponse | CasError] = []
    for part in _parts(remote, requests, lambda r: len(r.manifest.chunks)):
        call = functools.partial(_batch_call, remote, remote.stub.CommitFiles, pb.CommitFilesRequest(files=part))
        results = retry_rate_limited(call, budget)
        if results is None:
            out += [_single(remote, remote.stub.CommitFile, r) for r in part]
            continue
        _check_count(results, part)
        out += [_unpack(r) for r in results]
    return out


def get_manifests(
    remote: Remote, requests: Sequence[pb.GetManifestRequest]
) -> list[pb.GetManifestResponse | CasError]:
    """Fetch the manifest of every request; per entry, the response or the typed error (e.g. NotFoundError)."""
    out: list[pb.GetManifestResponse | CasError] = []
    for part in _parts(remote, requests, lambda r: 0):
        results = _batch_call(remote, remote.stub.GetManifests, pb.GetManifestsRequest(files=part))
        if results is None:
            out += [_single(remote, remote.stub.GetManifest, r) for r in part]
            continue
        _check_count(results, part)
        for request, result in zip(part, results, strict=True):
            answer = _unpack(result)
            if isinstance(answer, LimitExceededError):
                # The response ran out of room (huge manifests): this one on its own.
                answer = _single(remote, remote.stub.GetManifest, request)
            out.append(answer)
    return out


def _parts(remote: Remote, requests: Sequence[Q], chunks: Callable[[Q], int]) -> Iterator[list[Q]]:
    params = remote.params
    max_chunks = params.max_manifest_chunks or 0
    part: list[Q] = []
    used = 0
    for request in requests:
        n = chunks(request)
        if part and (len(part) >= params.max_batch_files or (max_chunks and used + n > max_chunks)):
            yield part
            part, used = [], 0
        part.append(request)
        used += n
    if part:
        yield part


def _batch_call(remote: Remote, method: Callable[..., object], request: object) -> list | None:
    """The results of a batch call, or None when the server does not have it."""
    try:
        return list(method(request).results)  # type: ignore[attr-defined]
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise map_rpc_error(err, remote.target) from err


def _single(remote: Remote, method: Callable[[Q], R], request: Q) -> R | CasError:
    # Every error is this file's: the caller decides which ones doom the rest, as with a batch.
    try:
        return remote.call(method, request)
    except CasError as exc:
        return exc


def _check_count(results: list, part: list) -> None:
    if len(results) != len(part):
        raise IntegrityError(f"the server answered {len(results)} results for {len(part)} files")


def _unpack(result: pb.CommitFileResult | pb.GetManifestResult) -> Any:
    if result.WhichOneof("result") == "ok":
        return result.ok
    return map_item_error(result.error)
