"""Typed errors of the StratusVault library.

Every failure a caller may want to act on has its own class. The gRPC service maps these to
status codes in one place (``service/errors.py``) and the CLI maps them to exit codes in one
place (``cli/errors.py``); nothing else needs to know about either.
"""

from __future__ import annotations


class CasError(Exception):
    """Base class of all StratusVault library errors."""


# ---- bad input: the caller sent something that can never be accepted ----------------------


class InvalidInputError(CasError):
    """Input that is malformed or violates a limit; retrying the same input cannot succeed."""


class InvalidPathError(InvalidInputError):
    """A remote path that is not a valid, normalised, relative StratusVault path."""


class InvalidDigestError(InvalidInputError):
    """A digest that is not 32 bytes (or 64 hex characters)."""


class MalformedFrameError(InvalidInputError):
    """A chunk frame whose header or payload cannot be decoded."""


class ChunkTooLargeError(InvalidInputError):
    """A chunk larger than the allowed maximum (also raised by the decompression-bomb guard)."""


class UnsupportedStoreError(InvalidInputError):
    """An operation the data dir's layout cannot do (garbage collection of the files layout)."""


class ManifestError(InvalidInputError):
    """A manifest that cannot be decoded or is internally inconsistent."""


class InvalidPolicyError(InvalidInputError):
    """A retention policy that cannot be applied: a bad count or duration, or no rule at all."""


class DigestMismatchError(InvalidInputError):
    """Uploaded bytes whose BLAKE3 digest is not the digest they were sent under."""

    def __init__(self, expected: bytes, actual: bytes) -> None:
        super().__init__(
            f"chunk digest mismatch: declared {expected.hex()}, content hashes to {actual.hex()}"
        )
        self.expected = expected
        self.actual = actual


# ---- state: the request is valid but the store's state does not allow it -------------------


class NotFoundError(CasError):
    """A path, version or chunk that does not exist."""


class ChunkNotFoundError(NotFoundError):
    """A chunk digest that the store does not hold."""

    def __init__(self, digest: bytes) -> None:
        super().__init__(f"chunk {digest.hex()} not found")
        self.digest = digest


class VersionConflictError(CasError):
    """Optimistic concurrency failure: the head version is not the one the caller expected."""

    def __init__(self, path: str, expected: int, actual: int) -> None:
        super().__init__(f"{path}: expected head version {expected}, but the head is version {actual}")
        self.path = path
        self.expected = expected
        self.actual = actual


class MissingChunksError(CasError):
    """A manifest references chunks that were never uploaded."""

    def __init__(self, missing: list[bytes]) -> None:
        shown = ", ".join(d.hex()[:16] for d in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        super().__init__(f"{len(missing)} chunk(s) of the manifest are not on the server: {shown}{more}")
        self.missing = missing


# ---- integrity: stored or received data does not match its name ----------------------------


class IntegrityError(CasError):
    """Data that does not match its digest or signature; never silently accepted."""


class CorruptChunkError(IntegrityError):
    """A stored chunk whose content does not hash to its name."""

    def __init__(self, digest: bytes, detail: str = "content does not match its digest") -> None:
        super().__init__(f"chunk {digest.hex()} is corrupt: {detail}")
        self.digest = digest


class SignatureError(IntegrityError):
    """A missing or invalid signature on a version that must be signed."""


# ---- access: who may do what, and how often ------------------------------------------------


class UnauthenticatedError(CasError):
    """A caller without a usable identity where one is required (no or unusable client certificate)."""


class PermissionDeniedError(CasError):
    """An authenticated caller that the access policy does not allow to do this."""


class RateLimitedError(CasError):
    """A caller over its request budget; ``retry_after_s`` says when a retry can succeed."""

    def __init__(self, retry_after_s: float, message: str = "") -> None:
        super().__init__(message or f"rate limit exceeded; retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


# ---- transport: the server could not be reached ---------------------------------------------


class ServerUnavailableError(CasError):
    """The server cannot be reached (not running, wrong address, network down); retrying may help."""


class BackendUnavailableError(ServerUnavailableError):
    """The server is up but a store behind it (the metadata database) is not; retrying may help.

    Nothing was changed by the call that got this error.
    """

    def __init__(self, backend: str = "metadata", message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message or f"{backend} store unavailable; retry later")
        self.backend = backend
        self.retry_after_s = retry_after_s


class CommitUnansweredError(ServerUnavailableError):
    """The commit was sent but the server went away before answering: it may or may not be done."""

    def __init__(self, cause: ServerUnavailableError) -> None:
        super().__init__(f"no answer to the commit, so the file may or may not be committed ({cause}); "
                         "check it with `stratus stat`, or run the same put again")


# ---- capacity: the request is valid but the server has no room for it -----------------------


class StorageFullError(CasError):
    """The server's disk (or quota) is full; the call kept nothing, and the same call can succeed later."""

    def __init__(self, quota: bool = False, message: str = "") -> None:
        super().__init__(message or ("server storage quota full" if quota else "server storage full"))
        self.quota = quota


class LimitExceededError(InvalidInputError):
    """A request over a configured size or count limit (too many digests, chunks, bytes).

    ``limit`` names the limit, ``value`` is what the request asked for and ``maximum`` the most
    allowed (empty / 0 where the raiser did not say).
    """

    def __init__(self, message: str, *, limit: str = "", value: int = 0, maximum: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class LocalChangedError(CasError):
    """A local file changed between the moment it was looked at and the moment it was to be used
    (uploaded, replaced or deleted); nothing was done with it, and it is looked at again later."""
