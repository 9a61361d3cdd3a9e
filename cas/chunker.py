"""Content-defined chunking with FastCDC 2020 (``pyfastcdc``).

Boundaries depend only on the bytes and the parameters, so an edit early in a file moves only the
chunks around it; every other chunk keeps its digest and is deduplicated. Every client must chunk
with the server's parameters, or dedup across clients breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pyfastcdc import FastCDC

# pyfastcdc's own accepted ranges; checking them here gives a clear error before any I/O.
_MIN_RANGE = (64, 1 << 20)
_AVG_RANGE = (256, 4 << 20)
_MAX_RANGE = (1024, 16 << 20)


@dataclass(frozen=True)
class ChunkParams:
    """FastCDC parameters in bytes (the real mean chunk size is about ``avg_size + min_size``)."""

    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024

    def __post_init__(self) -> None:
        for name, (low, high) in (
            ("min_size", _MIN_RANGE),
            ("avg_size", _AVG_RANGE),
            ("max_size", _MAX_RANGE),
        ):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"{name} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"{name} {value} is outside [{low}, {high}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                f"need min_size <= avg_size <= max_size, got {self.min_size}, {self.avg_size}, {self.max_size}"
            )

    def cdc(self) -> FastCDC:
        """Return a FastCDC instance configured with these parameters."""
        return FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size)


class Chunk(NamedTuple):
    """One chunk: its position in the input and an owned copy of its bytes."""

    offset: int
    length: int
    data: bytes


def chunk_stream(stream: BinaryIO, params: ChunkParams = ChunkParams()) -> Iterator[Chunk]:
    """Cut a binary stream into chunks, reading it incrementally.

    Memory stays bounded by about two ``max_size`` buffers plus the chunks the caller keeps.
    Empty input yields no chunks.
    """
    for c in params.cdc().cut_stream(stream):
        # pyfastcdc reuses its buffer: the memoryview dies at the next chunk, so copy now.
        yield Chunk(c.offset, c.length, bytes(c.data))


def chunk_file(path: str | Path, params: ChunkParams = ChunkParams()) -> Iterator[Chunk]:
    """Cut a file into chunks, streaming it (never mapping or reading it whole)."""
    with open(path, "rb") as stream:
        yield from chunk_stream(stream, params)


def chunk_bytes(data: bytes, params: ChunkParams = ChunkParams()) -> Iterator[Chunk]:
    """Cut an in-memory buffer into chunks; the boundaries equal those of :func:`chunk_stream`."""
    for c in params.cdc().cut_buf(data):
        yield Chunk(c.offset, c.length, bytes(c.data))
