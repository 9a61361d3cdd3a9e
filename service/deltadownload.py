"""Delta frames for GetChunks: a wanted chunk sent as a delta against a chunk the client holds.

A client that holds an old version of a file names, for a chunk it lacks, chunks of its old copy
(GetChunksRequest.bases, at most :data:`MAX_DELTA_BASES`). :class:`DeltaFrames` answers with a
:mod:`cas.delta` frame of the wanted chunk against those bases' bytes concatenated in that order
when it is clearly smaller than the plain frame, else with nothing (the caller sends the plain
frame). Several bases serve a chunk that an edit made out of parts of two old ones.

Invariants:

- The caller has already checked that the wanted chunk and every base are in the requesting
  namespace's chunk index (or chunk view): this module never looks at who asks.
- Every answer is computed from verified bytes (the wanted chunk's plain frame is decoded and
  BLAKE3-checked, the base is read with :meth:`ChunkStore.get`, which verifies) or is a delta record
  the pack store keeps against exactly that base; the client verifies the decoded chunk again.
- A base that cannot be read (damaged, gone) gives None, never an error: the plain frame is always
  a correct answer.
- Thread-safe: the caches lock; each encode builds its own zstd context (cas/delta.py).
"""

from __future__ import annotations

import contextlib

from cas import codec, delta
from cas.errors import CasError
from cas.pack import RecordType
from cas.packstore import BaseCache, PackChunkStore
from cas.store import ChunkStore

MAX_DELTA_BASES = 4  # bases one chunk may be proposed (each costs a read and dictionary bytes)
BASE_CACHE_BYTES = 32 * 1024 * 1024  # decoded bases: many clients ask for the same old version's chunks
DELTA_CACHE_BYTES = 16 * 1024 * 1024  # computed delta frames, keyed by (chunk, base)


class DeltaFrames:
    """Delta frames of stored chunks against other stored chunks, with a small cache of each."""

    def __init__(self, store: ChunkStore, max_chunk_size: int, policy: delta.DeltaPolicy = delta.DeltaPolicy()) -> None:
        self.store = store
        self.max_chunk_size = max_chunk_size
        self.policy = policy
        self._bases = BaseCache(BASE_CACHE_BYTES)
        self._deltas = BaseCache(DELTA_CACHE_BYTES)

    def frame(self, digest: bytes, bases: tuple[bytes, ...], plain: bytes) -> bytes | None:
        """The delta frame of chunk ``digest`` against the bytes of ``bases`` concatenated when it is
        smaller than ``policy.max_ratio`` times ``plain`` (the chunk's plain frame), else None.
        Blocking."""
        key = digest + b"".join(bases)
        cached = self._deltas.get(key)
        if cached is not None:
            return cached
        found = self._encoded(digest, bases, plain)
        if found is not None and len(found) < self.policy.max_ratio * len(plain):
            self._deltas.put(key, found)
            return found
        return None

    def stored(self, digest: bytes, bases: tuple[bytes, ...]) -> bytes | None:
        """The pack store's own delta record of ``digest`` when it is against exactly ``bases`` (one
        base; stored only because it was smaller than the plain frame): no encoding at all. Blocking."""
        if len(bases) != 1 or not isinstance(self.store, PackChunkStore):
            return None
        with contextlib.suppress(CasError):
            record = self.store.get_record(digest)
            if record.type == RecordType.DELTA and record.base == bases[0]:
                return record.payload
        return None

    def _encoded(self, digest: bytes, bases: tuple[bytes, ...], plain: bytes) -> bytes | None:
        try:
            data = codec.decode_verified(digest, plain, self.max_chunk_size)
            base_data = b"".join(self._base(b) for b in bases)
        except CasError:
            return None
        return delta.encode_if_smaller(data, base_data, 0, len(plain), self.policy)

    def _base(self, base: bytes) -> bytes:
        data = self._bases.get(base)
        if data is None:
            data = self.store.get(base)
            self._bases.put(base, data)
        return data
