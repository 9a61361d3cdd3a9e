"""Manifest deltas: a chunk list described as runs of a base manifest plus chunks given literally.

Used both ways: a client commits a new version as pieces of the head's manifest (CommitFile), and a
server answers GetManifest with pieces of the manifest the client's local copy has. Whoever expands
pieces checks the result against a digest it already trusts (the version's manifest digest), so
pieces are only ever a shorter spelling, never a source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from cas.errors import ChunkTooLargeError, ManifestError
from cas.manifest import ChunkRef

# A run of the base manifest (start, count), or a chunk given literally.
Piece = tuple[int, int] | ChunkRef


def pieces_between(base: Sequence[ChunkRef], new: Sequence[ChunkRef]) -> list[Piece]:
    """``new`` as runs of ``base`` (extended while the next chunks match) and literal chunks."""
    first: dict[ChunkRef, int] = {}
    for n, ref in enumerate(base):
        first.setdefault(ref, n)
    pieces: list[Piece] = []
    start = end = -1  # the open run: base[start:end]
    for ref in new:
        if 0 <= end < len(base) and base[end] == ref:
            end += 1
            continue
        if start >= 0:
            pieces.append((start, end - start))
        position = first.get(ref)
        if position is None:
            pieces.append(ref)
            start = end = -1
        else:
            start, end = position, position + 1
    if start >= 0:
        pieces.append((start, end - start))
    return pieces


def apply_pieces(base: Sequence[ChunkRef], pieces: Sequence[Piece], max_chunks: int) -> list[ChunkRef]:
    """The chunk list ``pieces`` describe over ``base``; ManifestError for a run outside the base.

    The running count is checked before each run is copied, so a hostile delta cannot make the
    reader allocate more than ``max_chunks`` references.
    """
    chunks: list[ChunkRef] = []
    for piece in pieces:
        if isinstance(piece, ChunkRef):
            added = 1
        else:
            start, count = piece
            if count < 1 or start + count > len(base):
                raise ManifestError(
                    f"manifest run {start}+{count} is outside the base manifest's {len(base)} chunks"
                )
            added = count
        if len(chunks) + added > max_chunks:
            raise ChunkTooLargeError(f"the delta expands to more than {max_chunks} chunks, the limit")
        if isinstance(piece, ChunkRef):
            chunks.append(piece)
        else:
            chunks.extend(base[piece[0] : piece[0] + piece[1]])
    return chunks
