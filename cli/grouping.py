"""How a transfer of many files is cut up: which files travel in groups, how big a group is, how
many transfers run at once, and which failures stop the whole transfer.

Shared by the upload and the download side, so both cut a tree the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from cas import errors

T = TypeVar("T")

SMALL_FILE_MAX = 1024 * 1024  # files up to this size travel in groups
GROUP_FILES = 128  # at most this many files in one group ...
GROUP_BYTES = 8 * 1024 * 1024  # ... and about this many bytes
DEFAULT_JOBS = 8  # files or groups in flight at once
CHUNK_OVERHEAD = 48  # protobuf bytes around one frame in a ChunkBatch

# Failures of the connection, the credentials or the server's disk, not of one file: going on would
# only repeat them.
_FATAL: tuple[type[BaseException], ...] = (
    errors.ServerUnavailableError,
    errors.UnauthenticatedError,
    errors.PermissionDeniedError,
    errors.RateLimitedError,
    errors.StorageFullError,
)


def groups(items: Iterable[T], size_of: Callable[[T], int]) -> Iterator[list[T]]:
    """Split items into groups of at most GROUP_FILES items and about GROUP_BYTES bytes (in order)."""
    group: list[T] = []
    size = 0
    for item in items:
        n = size_of(item)
        if group and (len(group) >= GROUP_FILES or size + n > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(item)
        size += n
    if group:
        yield group


def is_fatal(exc: BaseException) -> bool:
    """True when a failure ends a whole tree transfer (server, credentials, or a bug), not one file."""
    if isinstance(exc, _FATAL):
        return True
    return not isinstance(exc, errors.CasError | OSError)
