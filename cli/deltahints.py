"""Delta hints: for each chunk an upload sends, the chunks of the path's previous version around
the same byte offset.

A server that announces ``ServerInfo.delta_hints`` may store a new chunk as a similarity delta
against a chunk it holds (``ChunkData.base_hints``). An edited file's new chunk is most like the
old chunk that covered the same bytes: the base chunk whose range holds the new chunk's start
offset, then the one after it (content that moved forward). :data:`MAX_HINTS` digests per chunk
(the server takes up to 3 and tries each: on a real release history (django 4.2.x tarballs) a
third hint, the chunk before, saved under 0.1% more and cost the server as much again), never
the chunk itself.

The base is the head version's manifest: the one the manifest cache holds (:mod:`cli.manifestdelta`,
no extra call), else one GetManifest of the head, sent only when the upload has a chunk to send
and the manifest is small (at most :data:`FETCH_MAX_BYTES` on the wire, a file of about 2 GiB);
a bigger file uploaded from a machine without its manifest goes without hints. Hints are advisory
and only ever attached to chunks that are sent anyway: they change neither which chunks are sent
nor what is committed, and any failure to find a base just leaves them out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from cas.errors import CasError
from cas.manifest import Manifest
from cas.pipeline import HashedChunk
from cli.batch import get_manifests
from cli.download import fetch_manifest, receive
from cli.manifestdelta import BaseLookup
from cli.remote import Remote
from proto import stratus_pb2 as pb

MAX_HINTS = 2
HINT_OVERHEAD = 34  # protobuf bytes of one hint in a ChunkData
FETCH_MAX_BYTES = 1 << 20
_MANIFEST_ENTRY_BYTES = 40  # one ChunkRef on the wire


class OffsetIndex:
    """The chunks of one manifest by byte offset."""

    def __init__(self, manifest: Manifest) -> None:
        self._offsets = manifest.offsets()
        self._digests = [ref.digest for ref in manifest.chunks]

    def near(self, offset: int, digest: bytes) -> list[bytes]:
        """The digests covering ``offset`` and after it (distinct, not ``digest``)."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        found: list[bytes] = []
        for j in (i, i + 1):
            if 0 <= j < len(self._digests) and self._digests[j] != digest and self._digests[j] not in found:
                found.append(self._digests[j])
        return found[:MAX_HINTS]

    def hints(self, chunks: Iterable[HashedChunk]) -> dict[bytes, list[bytes]]:
        """digest -> hints for each chunk that has some."""
        return {c.digest: h for c in chunks if (h := self.near(c.offset, c.digest))}


class UploadHints:
    """The hints of one file's upload; its base is found at the first chunk to send."""

    def __init__(self, remote: Remote, base: BaseLookup, path: str) -> None:
        self._remote = remote
        self._base = base
        self._path = path
        self._index: OffsetIndex | None = None
        self._resolved = False

    def of(self, chunks: Sequence[HashedChunk]) -> dict[bytes, list[bytes]]:
        """digest -> hints for the chunks about to be sent (empty without a base)."""
        if not chunks:
            return {}
        if not self._resolved:
            self._resolved = True
            manifest = self._base.manifest or fetch_head_manifest(self._remote, self._path, self._base.head)
            self._index = OffsetIndex(manifest) if manifest is not None and manifest.chunks else None
        return self._index.hints(chunks) if self._index is not None else {}


def small_enough(head: pb.VersionInfo, remote: Remote) -> bool:
    """True if the head's manifest is cheap to fetch (:data:`FETCH_MAX_BYTES`, by the mean chunk
    size of FastCDC: about ``avg_size + min_size``)."""
    params = remote.params.chunking
    chunks = head.size // (params.avg_size + params.min_size) + 1
    return chunks * _MANIFEST_ENTRY_BYTES <= FETCH_MAX_BYTES


def fetch_head_manifest(remote: Remote, path: str, head: pb.VersionInfo | None) -> Manifest | None:
    """The manifest of ``head`` (one GetManifest) when it is small enough, else None; never raises
    for a refused or failed call (a base is only a hint)."""
    if head is None or head.deleted or not small_enough(head, remote):
        return None
    try:
        return fetch_manifest(remote, path, head.version, None)[1]  # checked against its digest
    except CasError:
        return None


def group_bases(remote: Remote, paths: Sequence[str]) -> dict[str, OffsetIndex]:
    """The head manifests of ``paths`` that exist (one GetManifests call per server batch), by path.

    Paths without a head, or whose manifest is refused, are left out; a failed call leaves all
    of them out.
    """
    requests = [pb.GetManifestRequest(path=p) for p in paths]
    try:
        answers = get_manifests(remote, requests)
    except CasError:
        return {}
    bases: dict[str, OffsetIndex] = {}
    for path, answer in zip(paths, answers, strict=True):
        if isinstance(answer, BaseException):
            continue
        try:
            _, manifest = receive(path, answer, remote.params.chunking.max_size)
        except CasError:
            continue
        if manifest.chunks:
            bases[path] = OffsetIndex(manifest)
    return bases
