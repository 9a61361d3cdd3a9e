"""Chunk frames: an 8-byte header plus the raw or zstd-compressed chunk bytes.

Header: ``b"SV"``, format version (1), method (0 = raw, 1 = zstd), uint32 big-endian uncompressed
length. The header makes every frame self-describing, so the compression choice can change later
without touching stored data, and the declared length lets the decoder refuse a decompression bomb
before allocating anything.
"""

from __future__ import annotations

import struct
import threading

import zstandard

from cas.digest import check_digest
from cas.digest import digest as blake3_digest
from cas.errors import ChunkTooLargeError, DigestMismatchError, MalformedFrameError

HEADER_SIZE = 8
MAGIC = b"SV"
FORMAT_VERSION = 1
METHOD_RAW = 0
METHOD_ZSTD = 1

_HEADER = struct.Struct(">2sBBI")
_MAX_LENGTH = 0xFFFFFFFF

# zstd's message for ZSTD_error_dstSize_tooSmall. The frame's content size equals the header's
# length and the output buffer has exactly that size, so this error means the payload produces more
# bytes than both headers declare: a bomb whose headers lie, not mere corruption.
_EXPANDS_PAST_DECLARED = "Destination buffer is too small"

# zstd (de)compression contexts are not safe to share between threads; one per thread and level
# keeps encode/decode thread-safe without a lock, and reusing contexts avoids their setup cost.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        # The content size in the zstd frame lets decode() cross-check it against our header.
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


def frame_header(method: int, length: int) -> bytes:
    """The 8-byte frame header for ``method`` and an uncompressed ``length``."""
    if length > _MAX_LENGTH:
        raise ChunkTooLargeError(f"chunk of {length} bytes does not fit a frame")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, method, length)


def encode(data: bytes | memoryview, level: int = 3) -> bytes:
    """Return the frame of ``data``: zstd at ``level``, or raw when zstd does not make it smaller.

    Thread-safe.
    """
    if type(level) is not int or level > zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"invalid zstd level {level!r}")
    size = memoryview(data).nbytes
    header = frame_header(METHOD_RAW, size)
    if size:
        compressed = _compressor(level).compress(data)
        if len(compressed) < size:
            return frame_header(METHOD_ZSTD, size) + compressed
    return b"".join((header, data))


def parse_header(frame: bytes | memoryview, methods: tuple[int, ...] = (METHOD_RAW, METHOD_ZSTD)) -> tuple[int, int]:
    """Return (method, declared length) of a frame header whose method is one of ``methods``;
    :class:`MalformedFrameError` otherwise."""
    if memoryview(frame).nbytes < HEADER_SIZE:
        raise MalformedFrameError(f"frame of {memoryview(frame).nbytes} bytes is shorter than its header")
    magic, version, method, length = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise MalformedFrameError(f"bad frame magic {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise MalformedFrameError(f"unsupported frame format version {version}")
    if method not in methods:
        raise MalformedFrameError(f"unknown frame method {method}")
    return method, length


def frame_length(frame: bytes | memoryview) -> int:
    """Return the uncompressed length declared by the frame header (the header is validated)."""
    return parse_header(frame)[1]


def decode(frame: bytes | memoryview, max_size: int) -> bytes:
    """Return the chunk bytes of ``frame``.

    Raises :class:`ChunkTooLargeError` for a decompression bomb: the declared or the zstd-declared
    length exceeds ``max_size`` (checked before any allocation, so it costs nothing), or the payload
    expands past what its headers declare (found with at most ``max_size + 1`` bytes decoded); and
    :class:`MalformedFrameError` on any other inconsistency, including a real length that differs
    from the declared one.
    """
    method, length = parse_header(frame)
    if length > max_size:
        raise ChunkTooLargeError(f"frame declares {length} bytes, limit is {max_size}")
    payload = memoryview(frame)[HEADER_SIZE:]
    if method == METHOD_RAW:
        if payload.nbytes != length:
            raise MalformedFrameError(f"raw frame declares {length} bytes but holds {payload.nbytes}")
        return bytes(payload)
    return decompress_checked(_decompressor(), payload, length, max_size)


def decompress_checked(
    dctx: zstandard.ZstdDecompressor, payload: bytes | memoryview, length: int, max_size: int
) -> bytes:
    """Decompress one zstd frame that must hold exactly ``length`` bytes (at most ``max_size``).

    The zstd-declared content size is checked against both before anything is allocated, so a
    bomb costs nothing; any other inconsistency is a :class:`MalformedFrameError`.
    """
    try:
        content_size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise MalformedFrameError(f"bad zstd frame header: {exc}") from None
    # Without a declared content size, zstandard would size its buffer from max_output_size; our
    # encoder always writes it, so anything else is not ours: refused, as a bomb if it expands past
    # the limit (a bounded look), else as malformed.
    if content_size < 0 or content_size >= zstandard.CONTENTSIZE_ERROR:
        if _expands_past(payload, max_size):
            raise ChunkTooLargeError(f"zstd frame without a content size expands past {max_size} bytes")
        raise MalformedFrameError("zstd frame does not declare its content size")
    if content_size > max_size:
        raise ChunkTooLargeError(f"zstd frame declares {content_size} bytes, limit is {max_size}")
    if content_size != length:
        raise MalformedFrameError(f"zstd frame declares {content_size} bytes, header says {length}")
    try:
        data = dctx.decompress(payload, max_output_size=length, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        if _EXPANDS_PAST_DECLARED in str(exc):
            raise ChunkTooLargeError(f"zstd payload expands past its declared {length} bytes") from None
        raise MalformedFrameError(f"corrupt zstd payload: {exc}") from None
    if len(data) != length:
        raise MalformedFrameError(f"zstd payload decoded to {len(data)} bytes, header says {length}")
    return data


def _expands_past(payload: memoryview, limit: int) -> bool:
    """Whether ``payload`` decompresses to more than ``limit`` bytes (reads at most ``limit + 1``)."""
    try:
        with _decompressor().stream_reader(payload, read_across_frames=False) as reader:
            return len(reader.read(limit + 1)) > limit
    except zstandard.ZstdError:
        return False


def decode_verified(digest: bytes, frame: bytes | memoryview, max_size: int) -> bytes:
    """Decode ``frame`` and check that the bytes hash to ``digest`` (:class:`DigestMismatchError`)."""
    expected = check_digest(digest)
    data = decode(frame, max_size)
    actual = blake3_digest(data)
    if actual != expected:
        raise DigestMismatchError(expected, actual)
    return data
