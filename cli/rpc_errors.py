"""Translate gRPC failures into the typed errors of :mod:`cas.errors`: the one decoder of the error contract.

This is the only place in the client that looks at gRPC status codes; everything above it (the
transfer code, the CLI and its exit codes) deals in :class:`cas.errors.CasError` subclasses.

A StratusVault server ends every failed call with a status code, a message for people and a
``stratus.v1.ErrorDetail`` packed in the ``google.rpc.Status`` of the standard
``grpc-status-details-bin`` trailer (batch entries carry the same detail in their ItemError).
The typed error is chosen by the detail's reason, and its fields (missing digests, versions,
retry delay, limit) come from the detail; the message is only passed on for people to read.
A failure without a detail (an older server, or one gRPC raised itself) is mapped by its code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
from grpc_status import rpc_status

from cas.errors import (
    BackendUnavailableError,
    CasError,
    IntegrityError,
    InvalidInputError,
    LimitExceededError,
    MissingChunksError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerUnavailableError,
    StorageFullError,
    UnauthenticatedError,
    VersionConflictError,
)
from proto import stratus_pb2 as pb

Reason = pb.ErrorDetail
_CODES = {status.value[0]: status for status in grpc.StatusCode}

# Without a detail, the code alone decides (what each code means in this API).
_REASON_OF_CODE = {
    grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
    grpc.StatusCode.ABORTED: Reason.VERSION_CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: Reason.MISSING_CHUNKS,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: Reason.INVALID_INPUT,
    grpc.StatusCode.DATA_LOSS: Reason.INTEGRITY,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.LIMIT_EXCEEDED,
}


def _version_conflict(message: str, d: pb.ErrorDetail) -> CasError:
    info = d.version_conflict
    known = d.HasField("version_conflict")
    err = VersionConflictError(info.path, info.expected if known else -1, info.actual if known else -1)
    err.args = (message,)
    return err


def _missing_chunks(message: str, d: pb.ErrorDetail) -> CasError:
    err = MissingChunksError(list(d.missing_chunks.digests))
    err.args = (message,)
    return err


def _limit(message: str, d: pb.ErrorDetail) -> CasError:
    info = d.limit_exceeded
    return LimitExceededError(message, limit=info.limit, value=info.value, maximum=info.max)


def _rate_limited(message: str, d: pb.ErrorDetail) -> CasError:
    return RateLimitedError(d.retry_after_ms / 1000 if d.retry_after_ms else 1.0, message)


_BY_REASON: dict[int, Callable[[str, pb.ErrorDetail], CasError]] = {
    Reason.INVALID_INPUT: lambda m, d: InvalidInputError(m),
    Reason.NOT_FOUND: lambda m, d: NotFoundError(m),
    Reason.VERSION_CONFLICT: _version_conflict,
    Reason.MISSING_CHUNKS: _missing_chunks,
    Reason.INTEGRITY: lambda m, d: IntegrityError(m),
    Reason.UNAUTHENTICATED: lambda m, d: UnauthenticatedError(m),
    Reason.PERMISSION_DENIED: lambda m, d: PermissionDeniedError(m),
    Reason.RATE_LIMITED: _rate_limited,
    Reason.LIMIT_EXCEEDED: _limit,
    Reason.STORAGE_FULL: lambda m, d: StorageFullError(d.storage_full.quota, m),
    Reason.BACKEND_UNAVAILABLE: lambda m, d: BackendUnavailableError(
        d.backend_unavailable.backend or "metadata", m, d.retry_after_ms / 1000 if d.retry_after_ms else None
    ),
}


def error_detail(err: grpc.RpcError) -> pb.ErrorDetail | None:
    """The ErrorDetail in a failed call's ``grpc-status-details-bin`` trailer, if the server sent one."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        return None  # no call object, or a status that contradicts the call's own code
    for packed in status.details if status is not None else ():
        detail = pb.ErrorDetail()
        if packed.Unpack(detail):
            return detail
    return None


def map_rpc_error(err: grpc.RpcError, server: str | None = None) -> CasError:
    """Return the typed error that corresponds to a failed gRPC call.

    ``server`` (the address the client dialled) makes the "cannot connect" message actionable.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(code)
    return map_status(code, message, error_detail(err), server)


def map_item_error(error: pb.ItemError) -> CasError:
    """Return the typed error of one failed entry of a batch call (CommitFiles, GetManifests)."""
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    detail = error.detail if error.HasField("detail") else None
    return map_status(code, error.message or str(code), detail, None)


def map_status(
    code: grpc.StatusCode, message: str, detail: pb.ErrorDetail | None, server: str | None = None
) -> CasError:
    """The typed error for a status code, its message and its detail (the detail's reason decides)."""
    reason = detail.reason if detail is not None else Reason.REASON_UNSPECIFIED
    if reason == Reason.REASON_UNSPECIFIED:
        reason = _REASON_OF_CODE.get(code, Reason.REASON_UNSPECIFIED)
    build = _BY_REASON.get(reason)
    if build is not None:
        return build(message, detail or pb.ErrorDetail())
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" at {server}" if server else ""
        return ServerUnavailableError(
            f"cannot reach the StratusVault server{where} ({message}); check --server / STRATUS_SERVER "
            "and that `stratus serve` is running"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServerUnavailableError(f"the server did not answer in time: {message}")
    if code == grpc.StatusCode.CANCELLED:
        return CasError(f"the request was cancelled: {message}")
    return CasError(f"server error ({code.name}): {message}")


@contextmanager
def translate_errors(server: str | None = None) -> Iterator[None]:
    """Run a block, re-raising any :class:`grpc.RpcError` as its typed :class:`CasError`."""
    try:
        yield
    except grpc.RpcError as err:
        raise map_rpc_error(err, server) from err
