"""Download planning: where each chunk of the wanted versions comes from.

Pure functions over manifests and local indexes, so the decisions (what to reuse, what to fetch,
how to group fetches) are testable without a server. One plan covers one file (a big file, a
stream) or several (a group of small files): the files are walked in order and their fetched
chunks share the fetch windows, so a group needs one GetChunks call and a chunk two files of a
window share is fetched once.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from cas.manifest import ChunkRef


class Source(Enum):
    """Where the bytes of one chunk of the new file come from."""

    LOCAL = "local"  # local file number source_file, at source_offset (verified by digest before use)
    REPEAT = "repeat"  # an earlier position of the file being written, at source_offset
    FETCH = "fetch"  # the server, in fetch window ``window``


@dataclass(frozen=True, slots=True)
class BaseRef:
    """A chunk of an old local copy (found by chunking and hashing it) proposed as a delta base."""

    digest: bytes
    offset: int
    length: int


class OldChunks:
    """The chunks of an old local copy that the new version does not reuse: delta base candidates.

    Added in increasing offset order; kept in flat arrays (44 bytes a chunk), so even a large old
    copy costs little memory next to the manifest being downloaded.
    """

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._lengths = array("I")
        self._digests = bytearray()
        self.nbytes = 0

    def add(self, offset: int, length: int, digest: bytes) -> None:
        """Record one chunk; ``offset`` must be past the end of the previous one."""
        self._offsets.append(offset)
        self._lengths.append(length)
        self._digests += digest
        self.nbytes += length

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[BaseRef]:
        for i in range(len(self)):
            yield self._ref(i)

    def _ref(self, i: int) -> BaseRef:
        return BaseRef(bytes(self._digests[32 * i : 32 * i + 32]), self._offsets[i], self._lengths[i])

    def covering(self, position: int) -> BaseRef | None:
        """The chunk whose bytes include ``position``, or None."""
        i = bisect_right(self._offsets, position) - 1
        if i >= 0 and position < self._offsets[i] + self._lengths[i]:
            return self._ref(i)
        return None

    def overlapping(self, start: int, end: int, limit: int) -> tuple[BaseRef, ...]:
        """The chunks with bytes in ``[start, end)``, in offset order, at most ``limit`` (the ones
        nearest ``start``)."""
        i = max(0, bisect_right(self._offsets, start) - 1)
        found: list[BaseRef] = []
        while i < len(self) and self._offsets[i] < end and len(found) < limit:
            if self._offsets[i] + self._lengths[i] > start:
                found.append(self._ref(i))
            i += 1
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Step:
    """One chunk of the new file, in file order."""

    offset: int
    digest: bytes
    length: int
    source: Source
    source_offset: int = -1
    window: int = -1
    source_file: int = 0  # LOCAL: which local file (0: the old copy, 1: a partial download's temp file)
    file: int = 0  # which file of the plan the chunk belongs to
    bases: tuple[BaseRef, ...] = ()  # FETCH: chunks of the old copy to propose as delta bases


@dataclass(slots=True)
class FetchWindow:
    """One GetChunks request: distinct digests in first-use order and how often each is used, and
    the delta bases proposed for some of them (digest -> (file number, bases), the first use's)."""

    index: int
    digests: list[bytes]
    uses: dict[bytes, int]
    nbytes: int
    bases: dict[bytes, tuple[int, tuple[BaseRef, ...]]] = field(default_factory=dict)


MAX_BASES = 4  # delta bases proposed for one chunk (the server refuses more)

Files = Sequence[
    tuple[Sequence[ChunkRef], Mapping[bytes, tuple[int, ...]]]
    | tuple[Sequence[ChunkRef], Mapping[bytes, tuple[int, ...]], OldChunks | None]
]


def _bases_for(old: OldChunks | None, expected: int, length: int) -> tuple[BaseRef, ...]:
    """The old chunks where a chunk of ``length`` bytes is expected in the old copy (``expected``:
    just after the old bytes the previous chunk matched): those overlapping that range, at most
    :data:`MAX_BASES` (an edit that moved a cut point makes one new chunk of two old ones)."""
    return old.overlapping(expected, expected + length, MAX_BASES) if old else ()


def plan_files(files: Files, *, repeat_from_output: bool, window_bytes: int, window_chunks: int) -> Iterator[Step]:
    """Yield one :class:`Step` per manifest chunk of each file, file after file, each in file order.

    ``files`` are (manifest chunks, local index[, old chunks]) tuples. A chunk already present in its file's local
    index (digest -> (offset, length) in the old file, or (offset, length, file number) when there
    are several local files) is copied from there; with ``repeat_from_output`` (the outputs are
    seekable files) a chunk seen earlier in the same new file is copied from its first position,
    so each digest is fetched at most once per file. The rest is fetched, grouped into windows of
    at most ``window_bytes`` distinct bytes and ``window_chunks`` distinct digests; a digest
    already in the current window (for any file) joins it. Deterministic: two calls with equal
    inputs agree, which lets the fetching thread and the writing thread walk the same plan
    independently.

    A fetched chunk gets as delta bases the old chunks (of ``old chunks``, those the new version does
    not reuse) at the place the chunk is expected in the old copy: just after the old bytes the
    previous chunk came from (a chunk reused from the old copy re-aligns the two files, so an
    insertion or a cut point that moved does not lose the track).
    """
    window = -1
    in_window: set[bytes] = set()
    window_size = 0
    for number, (chunks, local, *rest) in enumerate(files):
        old = rest[0] if rest else None
        written: dict[bytes, int] = {}
        offset = expected = 0
        for ref in chunks:
            d, n = ref.digest, ref.length
            if repeat_from_output and d in written:
                yield Step(offset, d, n, Source.REPEAT, written[d], file=number)
            elif d in local and local[d][1] == n:
                at = local[d]
                source = at[2] if len(at) > 2 else 0
                yield Step(offset, d, n, Source.LOCAL, at[0], source_file=source, file=number)
                written.setdefault(d, offset)
                if source == 0:
                    expected = at[0]
            else:
                if d not in in_window:
                    if window < 0 or window_size + n > window_bytes or len(in_window) >= window_chunks:
                        window += 1
                        in_window = set()
                        window_size = 0
                    in_window.add(d)
                    window_size += n
                yield Step(offset, d, n, Source.FETCH, window=window, file=number,
                           bases=_bases_for(old, expected, n))
                written.setdefault(d, offset)
            offset += n
            expected += n


def plan_steps(
    chunks: Sequence[ChunkRef], local: Mapping[bytes, tuple[int, ...]], *, repeat_from_output: bool,
    window_bytes: int, window_chunks: int,
) -> Iterator[Step]:
    """The plan of a single file: :func:`plan_files` of one."""
    return plan_files([(chunks, local)], repeat_from_output=repeat_from_output, window_bytes=window_bytes,
                      window_chunks=window_chunks)


def fetch_windows(steps: Iterator[Step]) -> Iterator[FetchWindow]:
    """Group the FETCH steps of a plan into :class:`FetchWindow` requests, in order."""
    current: FetchWindow | None = None
    for step in steps:
        if step.source is not Source.FETCH:
            continue
        if current is None or step.window != current.index:
            if current is not None:
                yield current
            current = FetchWindow(step.window, [], {}, 0)
        if step.digest not in current.uses:
            current.digests.append(step.digest)
            current.uses[step.digest] = 0
            current.nbytes += step.length
            if step.bases:
                current.bases[step.digest] = (step.file, step.bases)
        current.uses[step.digest] += 1
    if current is not None:
        yield current
