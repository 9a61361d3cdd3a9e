"""Manifests: the ordered chunk list of one file version, itself content-addressed.

Binary form (canonical, so equal manifests always have equal digests)::

    b"SVM1" | varint count | count * (32-byte digest | varint length) | varint size | 32-byte file digest

Varints are unsigned LEB128 in their shortest form; any other encoding is rejected, because two
spellings of one manifest would get two different names.
"""

from __future__ import annotations

from dataclasses import dataclass

from cas.digest import DIGEST_SIZE, check_digest, digest
from cas.errors import InvalidDigestError, ManifestError

MAGIC = b"SVM1"
EMPTY_FILE_DIGEST = digest(b"")
_MAX_VARINT_BYTES = 10  # enough for any uint64


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: its digest and uncompressed length."""

    digest: bytes
    length: int


@dataclass(frozen=True)
class Manifest:
    """A file version's chunks in order, its total size and the BLAKE3 of the whole file.

    Construction validates the invariants (32-byte digests, positive lengths, ``size`` equal to
    the sum of lengths) and raises :class:`ManifestError` when they do not hold.
    """

    chunks: tuple[ChunkRef, ...]
    size: int
    file_digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, tuple):
            raise ManifestError("chunks must be a tuple of ChunkRef")
        total = 0
        for i, ref in enumerate(self.chunks):
            if not isinstance(ref, ChunkRef):
                raise ManifestError(f"chunk {i} is not a ChunkRef")
            if not isinstance(ref.digest, bytes) or len(ref.digest) != DIGEST_SIZE:
                raise ManifestError(f"chunk {i} has a malformed digest")
            if type(ref.length) is not int or ref.length <= 0:
                raise ManifestError(f"chunk {i} has invalid length {ref.length!r}")
            total += ref.length
        if type(self.size) is not int or self.size != total:
            raise ManifestError(f"size {self.size!r} does not equal the sum of chunk lengths {total}")
        if not isinstance(self.file_digest, bytes) or len(self.file_digest) != DIGEST_SIZE:
            raise ManifestError("file digest must be 32 bytes")

    def to_bytes(self) -> bytes:
        """Return the canonical binary encoding."""
        out = bytearray(MAGIC)
        out += _varint(len(self.chunks))
        for ref in self.chunks:
            out += ref.digest
            out += _varint(ref.length)
        out += _varint(self.size)
        out += self.file_digest
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, max_chunks: int = 10_000_000, max_chunk_size: int | None = None) -> Manifest:
        """Decode and validate a manifest; :class:`ManifestError` on anything malformed or inconsistent."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ManifestError(f"manifest must be bytes, not {type(data).__name__}")
        buf = bytes(data)
        if buf[:4] != MAGIC:
            raise ManifestError("not a manifest (bad magic)")
        pos = 4
        count, pos = _read_varint(buf, pos, "chunk count")
        if count > max_chunks:
            raise ManifestError(f"manifest has {count} chunks, limit is {max_chunks}")
        # Each entry takes at least 33 bytes; refusing early keeps a lying count from costing time.
        if count * (DIGEST_SIZE + 1) > len(buf) - pos:
            raise ManifestError(f"manifest declares {count} chunks but is only {len(buf)} bytes")
        chunks = []
        total = 0
        for i in range(count):
            end = pos + DIGEST_SIZE
            if end > len(buf):
                raise ManifestError(f"truncated in chunk {i}")
            d = buf[pos:end]
            length, pos = _read_varint(buf, end, f"length of chunk {i}")
            if length == 0:
                raise ManifestError(f"chunk {i} has length 0")
            if max_chunk_size is not None and length > max_chunk_size:
                raise ManifestError(f"chunk {i} is {length} bytes, limit is {max_chunk_size}")
            total += length
            chunks.append(ChunkRef(d, length))
        size, pos = _read_varint(buf, pos, "size")
        if size != total:
            raise ManifestError(f"size {size} does not equal the sum of chunk lengths {total}")
        if len(buf) - pos < DIGEST_SIZE:
            raise ManifestError("truncated in the file digest")
        file_digest = buf[pos : pos + DIGEST_SIZE]
        pos += DIGEST_SIZE
        if pos != len(buf):
            raise ManifestError(f"{len(buf) - pos} trailing bytes after the manifest")
        return cls(tuple(chunks), size, file_digest)

    def digest(self) -> bytes:
        """Return the manifest's name: the BLAKE3 of :meth:`to_bytes`."""
        return digest(self.to_bytes())

    def offsets(self) -> list[int]:
        """Return the file offset of each chunk."""
        result = []
        pos = 0
        for ref in self.chunks:
            result.append(pos)
            pos += ref.length
        return result

    def unique_digests(self) -> list[bytes]:
        """Return each distinct chunk digest once, in first-seen order."""
        return list(dict.fromkeys(ref.digest for ref in self.chunks))


class ManifestBuilder:
    """Collects chunks in file order and builds the :class:`Manifest`."""

    def __init__(self) -> None:
        self._chunks: list[ChunkRef] = []
        self._size = 0

    def add(self, digest: bytes, length: int) -> None:
        """Append the next chunk of the file."""
        try:
            d = check_digest(digest)
        except InvalidDigestError as exc:
            raise ManifestError(str(exc)) from None
        if type(length) is not int or length <= 0:
            raise ManifestError(f"chunk length must be a positive int, got {length!r}")
        self._chunks.append(ChunkRef(d, length))
        self._size += length

    def build(self, file_digest: bytes) -> Manifest:
        """Return the manifest of the chunks added so far."""
        try:
            fd = check_digest(file_digest)
        except InvalidDigestError as exc:
            raise ManifestError(str(exc)) from None
        return Manifest(tuple(self._chunks), self._size, fd)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise ManifestError(f"truncated in the {what}")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ManifestError(f"non-canonical varint in the {what}")
            if value >= 1 << 64:
                raise ManifestError(f"varint overflow in the {what}")
            return value, pos + i + 1
    raise ManifestError(f"varint too long in the {what}")
