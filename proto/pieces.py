"""ManifestPiece messages to and from :mod:`cas.manifestpieces` pieces, for client and server alike.

Pieces arrive from the other side, so reading them validates every field (ManifestError); what they
expand to is checked against a trusted digest by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cas.digest import DIGEST_SIZE
from cas.errors import ManifestError
from cas.manifest import ChunkRef
from cas.manifestpieces import Piece
from proto import stratus_pb2 as pb


def pieces_message(pieces: Sequence[Piece]) -> list[pb.ManifestPiece]:
    """The messages of ``pieces``, in order."""
    return [pb.ManifestPiece(chunk=pb.ChunkRef(digest=p.digest, length=p.length)) if isinstance(p, ChunkRef)
            else pb.ManifestPiece(copy=pb.ManifestRun(start=p[0], count=p[1])) for p in pieces]


def pieces_from_message(messages: Iterable[pb.ManifestPiece]) -> list[Piece]:
    """The pieces of ``messages``, in order; ManifestError for a malformed one."""
    pieces: list[Piece] = []
    for piece in messages:
        kind = piece.WhichOneof("piece")
        if kind == "copy":
            pieces.append((piece.copy.start, piece.copy.count))
        elif kind == "chunk":
            if len(piece.chunk.digest) != DIGEST_SIZE:
                raise ManifestError(f"manifest chunk digest must be {DIGEST_SIZE} bytes")
            pieces.append(ChunkRef(bytes(piece.chunk.digest), piece.chunk.length))
        else:
            raise ManifestError("a manifest piece must be a copy run or a chunk")
    return pieces
