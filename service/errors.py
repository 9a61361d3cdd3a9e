"""The one place where library errors become gRPC status codes.

Handlers raise the typed errors of :mod:`cas.errors`; the call wrapper (service/calls.py) uses
:func:`status_for` and :func:`trailing_details` to turn each into a status code, the error's
message and, where useful, machine-readable trailing metadata.
"""

from __future__ import annotations

import grpc

from cas import errors

# Ordered: the first matching class wins, so subclasses come before their bases.
_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ChunkTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DigestMismatchError, grpc.StatusCode.DATA_LOSS),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.VersionConflictError, grpc.StatusCode.ABORTED),
    (errors.MissingChunksError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for a library error (INTERNAL for anything unexpected)."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# Structured details for clients, next to the human-readable message.
MISSING_CHUNKS_KEY = "sv-missing-chunks-bin"
RETRY_AFTER_KEY = "retry-after"
MAX_MISSING_IN_TRAILER = 4096  # 128 KiB of digests; the client re-asks FindMissingChunks for more


def trailing_details(exc: BaseException) -> tuple[tuple[str, str | bytes], ...]:
    if isinstance(exc, errors.MissingChunksError):
        return ((MISSING_CHUNKS_KEY, b"".join(exc.missing[:MAX_MISSING_IN_TRAILER])),)
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        return ((RETRY_AFTER_KEY, f"{retry:.3f}"),)
    return ()
