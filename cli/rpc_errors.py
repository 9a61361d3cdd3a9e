"""Translate gRPC failures into the typed errors of :mod:`cas.errors`.

This is the only place in the client that looks at gRPC status codes; everything above it (the
transfer code, the CLI and its exit codes) deals in :class:`cas.errors.CasError` subclasses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from cas.errors import (
    CasError,
    IntegrityError,
    InvalidInputError,
    MissingChunksError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerUnavailableError,
    UnauthenticatedError,
    VersionConflictError,
)

# The server renders VersionConflictError with its own message; parsing it back keeps the numbers.
_CONFLICT_RE = re.compile(r"^(?:(?P<path>.*): )?expected head version (?P<expected>\d+), but the head is "
                          r"version (?P<actual>\d+)")
_RETRY_RE = re.compile(r"retry in (?P<seconds>\d+(?:\.\d+)?) ?s")
_HEX_DIGEST_RE = re.compile(r"\b[0-9a-f]{64}\b")

_CODES = {status.value[0]: status for status in grpc.StatusCode}

# Trailing-metadata keys the server may use to hand back structured details.
MISSING_CHUNKS_KEY = "sv-missing-chunks-bin"
RETRY_AFTER_KEY = "retry-after"


def _trailers(err: grpc.RpcError) -> dict[str, str | bytes]:
    getter = getattr(err, "trailing_metadata", None)
    if getter is None:
        return {}
    try:
        return {key: value for key, value in (getter() or ())}
    except Exception:  # noqa: BLE001 - a broken call object must not hide the real error
        return {}


def _version_conflict(message: str) -> VersionConflictError:
    match = _CONFLICT_RE.search(message)
    if match:
        return VersionConflictError(match["path"] or "", int(match["expected"]), int(match["actual"]))
    # Unknown wording: keep the server's message rather than inventing numbers.
    err = VersionConflictError("", -1, -1)
    err.args = (message,)
    return err


def _missing_chunks(message: str, trailers: dict[str, str | bytes]) -> MissingChunksError:
    raw = trailers.get(MISSING_CHUNKS_KEY)
    missing: list[bytes] = []
    if isinstance(raw, bytes) and len(raw) % 32 == 0:
        missing = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    else:
        missing = [bytes.fromhex(h) for h in _HEX_DIGEST_RE.findall(message)]
    err = MissingChunksError(missing)
    err.args = (message,)
    return err


def _rate_limited(message: str, trailers: dict[str, str | bytes]) -> RateLimitedError:
    retry_after = 1.0
    header = trailers.get(RETRY_AFTER_KEY)
    match = _RETRY_RE.search(message)
    try:
        if header is not None:
            retry_after = float(header)
        elif match:
            retry_after = float(match["seconds"])
    except ValueError:
        pass
    return RateLimitedError(retry_after, message)


def map_rpc_error(err: grpc.RpcError, server: str | None = None) -> CasError:
    """Return the typed error that corresponds to a failed gRPC call.

    ``server`` (the address the client dialled) makes the "cannot connect" message actionable.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(code)
    return _map_status(code, message, _trailers(err), server)


def map_item_error(code: int, message: str, missing: Sequence[bytes] = ()) -> CasError:
    """Return the typed error of one failed entry of a batch call (CommitFiles, GetManifests).

    The server reports each entry's failure as the status code the single call would have had.
    """
    status = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    trailers: dict[str, str | bytes] = {MISSING_CHUNKS_KEY: b"".join(missing)} if missing else {}
    return _map_status(status, message or str(status), trailers, None)


def _map_status(
    code: grpc.StatusCode, message: str, trailers: dict[str, str | bytes], server: str | None
) -> CasError:
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message)
    if code == grpc.StatusCode.ABORTED:
        return _version_conflict(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return _missing_chunks(message, trailers)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidInputError(message)
    if code == grpc.StatusCode.DATA_LOSS:
        return IntegrityError(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Both a rate limit (retry later) and a size/count limit (never retry as is) use this code.
        if RETRY_AFTER_KEY in trailers or "rate limit" in message.lower():
            return _rate_limited(message, trailers)
        return InvalidInputError(message)
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
