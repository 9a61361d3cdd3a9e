"""The one place where failures become gRPC statuses: code, message and machine-readable detail.

Handlers raise the typed errors of :mod:`cas.errors`; failures from below the library (a full
disk, an unreachable metadata store) are first turned into typed errors by :func:`typed`. The call
wrapper (service/calls.py) and the batch calls (service/batches.py) then take the status code from
:func:`status_for` and the :class:`ErrorDetail` from :func:`error_detail`; :func:`grpc_status`
packs both, the REAPI way, into the standard ``grpc-status-details-bin`` trailer. Clients act on
the code and the detail, never on the message.
"""

from __future__ import annotations

import errno

import grpc
import redis.exceptions
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from cas import errors
from proto import stratus_pb2 as pb

Reason = pb.ErrorDetail

# Ordered: the first matching class wins, so subclasses come before their bases.
_STATUS: list[tuple[type[BaseException], grpc.StatusCode, int]] = [
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED),
    (errors.RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED),
    (errors.StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.STORAGE_FULL),
    (errors.LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.LIMIT_EXCEEDED),
    (errors.ChunkTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.LIMIT_EXCEEDED),
    (errors.DigestMismatchError, grpc.StatusCode.DATA_LOSS, Reason.INTEGRITY),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_INPUT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND),
    (errors.VersionConflictError, grpc.StatusCode.ABORTED, Reason.VERSION_CONFLICT),
    (errors.MissingChunksError, grpc.StatusCode.FAILED_PRECONDITION, Reason.MISSING_CHUNKS),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS, Reason.INTEGRITY),
    (errors.BackendUnavailableError, grpc.StatusCode.UNAVAILABLE, Reason.BACKEND_UNAVAILABLE),
]
_INTERNAL = (grpc.StatusCode.INTERNAL, Reason.INTERNAL)

PUSHBACK_KEY = "grpc-retry-pushback-ms"
# A rate limit that lifts later than this is not waited out by a client's channel (which has no
# bound of its own on a pushback): the call fails at once, with the delay in its ErrorDetail.
RATE_LIMIT_PUSHBACK_MAX_MS = 10_000
BACKEND_RETRY_AFTER_S = 0.5  # when a client may try again after the metadata store was unreachable
MAX_MISSING_IN_DETAIL = 4096  # 128 KiB of digests; the client re-asks FindMissingChunks for more
_FULL = (errno.ENOSPC, errno.EDQUOT)
_METADATA_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def typed(exc: BaseException) -> BaseException:
    """The typed library error for a failure from below the library; other exceptions unchanged.

    A full disk or quota (ENOSPC, EDQUOT) is :class:`StorageFullError`; a metadata store that
    cannot be reached or does not answer in time is :class:`BackendUnavailableError`.
    """
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return errors.StorageFullError(quota=exc.errno == errno.EDQUOT)
    if isinstance(exc, _METADATA_DOWN):
        return errors.BackendUnavailableError("metadata", retry_after_s=BACKEND_RETRY_AFTER_S)
    return exc


def _entry(exc: BaseException) -> tuple[grpc.StatusCode, int]:
    if isinstance(exc, errors.CasError):
        for cls, code, reason in _STATUS:
            if isinstance(exc, cls):
                return code, reason
    return _INTERNAL


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for a library error (INTERNAL for anything unexpected)."""
    return _entry(exc)[0]


def error_detail(exc: BaseException) -> pb.ErrorDetail:
    """The machine-readable detail of a failure: its reason and the facts a client acts on."""
    detail = pb.ErrorDetail(reason=_entry(exc)[1])
    if isinstance(exc, errors.MissingChunksError):
        detail.missing_chunks.digests.extend(exc.missing[:MAX_MISSING_IN_DETAIL])
        detail.missing_chunks.total = len(exc.missing)
    elif isinstance(exc, errors.VersionConflictError):
        detail.version_conflict.path = exc.path
        detail.version_conflict.expected = max(exc.expected, 0)
        detail.version_conflict.actual = max(exc.actual, 0)
    elif isinstance(exc, errors.LimitExceededError):
        detail.limit_exceeded.limit = exc.limit
        detail.limit_exceeded.value = exc.value
        detail.limit_exceeded.max = exc.maximum
    elif isinstance(exc, errors.BackendUnavailableError):
        detail.backend_unavailable.backend = exc.backend
    elif isinstance(exc, errors.StorageFullError):
        detail.storage_full.quota = exc.quota
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        detail.retry_after_ms = max(1, round(retry * 1000))
    return detail


def public_message(exc: BaseException, where: str) -> str:
    """The message a client sees: the error's own, or for an unexpected failure only where it happened."""
    if status_for(exc) is grpc.StatusCode.INTERNAL:
        return f"internal server error in {where}; see the server log"
    return str(exc)


def grpc_status(exc: BaseException, where: str) -> grpc.Status:
    """The status to end a call with: code, message, and the ErrorDetail in ``grpc-status-details-bin``.

    UNAVAILABLE and RESOURCE_EXHAUSTED statuses also carry ``grpc-retry-pushback-ms``, the standard
    hint with which a client's gRPC channel paces its retries of idempotent calls (see
    :func:`pushback_ms`).
    """
    detail = error_detail(exc)
    packed = any_pb2.Any()
    packed.Pack(detail)
    code = status_for(exc)
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=public_message(exc, where), details=[packed])
    )
    pushback = pushback_ms(code, detail)
    if pushback is not None:
        extra = ((PUSHBACK_KEY, str(pushback)),)
        status = status._replace(trailing_metadata=tuple(status.trailing_metadata) + extra)  # type: ignore[attr-defined]
    return status


def pushback_ms(code: grpc.StatusCode, detail: pb.ErrorDetail) -> int | None:
    """The ``grpc-retry-pushback-ms`` value of a failure, None for none.

    UNAVAILABLE with a retry delay: that delay. RESOURCE_EXHAUSTED, which clients retry too: the
    retry delay of a rate limit (RATE_LIMITED) up to RATE_LIMIT_PUSHBACK_MAX_MS, and -1 for a
    longer one and for every other exhausted resource (a limit of the request, a full disk):
    by the gRPC retry spec a negative pushback forbids a retry, as waiting would not (soon)
    change the answer.
    """
    if code is grpc.StatusCode.UNAVAILABLE:
        return detail.retry_after_ms or None
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        waits = detail.reason == Reason.RATE_LIMITED and 0 < detail.retry_after_ms <= RATE_LIMIT_PUSHBACK_MAX_MS
        return detail.retry_after_ms if waits else -1
    return None
