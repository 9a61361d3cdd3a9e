"""Manifest deltas: describe a new manifest as edits of one the server already holds.

A large file's manifest is ~40 bytes per chunk, so re-uploading a 1 GiB file with a few small
edits used to move more metadata (every digest twice: FindMissingChunks and CommitFile) than
changed data. When the client still has the manifest of the path's head version, it

* does not ask FindMissingChunks about chunks of that manifest (they are committed content of
  the namespace), and
* commits the new manifest as runs of the old one plus the few chunks given literally.

The manifests live in a small local cache, one file per manifest named by its digest, so the
head's ``manifest_digest`` (one Stat, sent while the file is being read) finds its base. The
cache is only a hint: a missing, stale or corrupt entry costs the full manifest, never
correctness, because every entry is checked against its digest and the server checks the base.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from cas.digest import digest as blake3_digest
from cas.errors import CasError, InvalidInputError, NotFoundError
from cas.manifest import ChunkRef, Manifest
from cas.manifestpieces import pieces_between
from cli.remote import Remote
from proto import stratus_pb2 as pb
from proto.pieces import pieces_message

MIN_CHUNKS = 64  # smaller manifests cost less than a Stat round trip and a cache file
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class ManifestCache:
    """Manifests by digest in a folder, least recently used dropped past ``max_bytes``."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _file(self, manifest_digest: bytes) -> Path:
        return self.root / f"{manifest_digest.hex()}.svm"

    def get(self, manifest_digest: bytes) -> Manifest | None:
        """The manifest named by ``manifest_digest``, or None (absent, unreadable or not matching)."""
        if not manifest_digest:
            return None
        path = self._file(manifest_digest)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        if blake3_digest(raw) != manifest_digest:
            return None
        try:
            manifest = Manifest.from_bytes(raw)
        except CasError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
        return manifest

    def put(self, manifest: Manifest) -> None:
        """Remember ``manifest`` (small ones are not worth it); failures only lose the hint."""
        if len(manifest.chunks) < MIN_CHUNKS:
            return
        raw = manifest.to_bytes()
        path = self._file(blake3_digest(raw))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if path.exists():
                os.utime(path)
                return
            fd, temp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(raw)
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            self._prune()
        except OSError:
            return

    def _prune(self) -> None:
        entries = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".svm"):
                st = entry.stat()
                entries.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, name in sorted(entries):
            if total <= self.max_bytes:
                return
            with contextlib.suppress(OSError):
                os.unlink(name)
            total -= size


class BaseLookup:
    """Finds the base manifest of an upload: the head's, if the cache holds it.

    The Stat is sent when the upload starts and read when the first window of chunks is ready,
    so it costs no round trip of its own. It is sent when there is a cache, or when ``stat`` asks
    for the head anyway (delta hints, :mod:`cli.deltahints`).
    """

    def __init__(self, remote: Remote, cache: ManifestCache | None, path: str, *, stat: bool = False) -> None:
        self._cache = cache
        self._future: grpc.Future | None = None
        self._manifest: Manifest | None = None
        self._head: pb.VersionInfo | None = None
        self._digests: frozenset[bytes] = frozenset()
        if cache is not None or stat:
            self._future = remote.stub.Stat.future(pb.StatRequest(path=path))
        self._resolved = self._future is None

    def _resolve(self) -> None:
        if self._resolved:
            return
        self._resolved = True
        assert self._future is not None
        try:
            head = self._future.result()
        except grpc.RpcError:  # no such file, no read right, an old server: upload without a base
            return
        if head.deleted:
            return
        self._head = head
        if self._cache is not None:
            self._manifest = self._cache.get(bytes(head.manifest_digest))
        if self._manifest is not None:
            self._digests = frozenset(ref.digest for ref in self._manifest.chunks)

    @property
    def head(self) -> pb.VersionInfo | None:
        """The head version (not a deletion), or None when there is none or it was not asked for."""
        self._resolve()
        return self._head

    @property
    def manifest(self) -> Manifest | None:
        """The base manifest, or None when there is none to use."""
        self._resolve()
        return self._manifest

    @property
    def digests(self) -> frozenset[bytes]:
        """The chunk digests of the base (empty without a base)."""
        self._resolve()
        return self._digests

    def cancel(self) -> None:
        """Drop the Stat if it was never needed (no chunk was read): then there is no base."""
        if self._future is not None and not self._resolved:
            self._resolved = True
            self._future.cancel()


def delta_pieces(base: Sequence[ChunkRef], new: Sequence[ChunkRef]) -> list[pb.ManifestPiece]:
    """``new`` as runs of ``base`` (extended while the next chunks match) and literal chunks."""
    return pieces_message(pieces_between(base, new))


def delta_request(
    full: pb.CommitFileRequest, base: Manifest, manifest: Manifest
) -> pb.CommitFileRequest | None:
    """``full`` in the delta form against ``base``, or None when that would not be smaller."""
    pieces = delta_pieces(base.chunks, manifest.chunks)
    request = pb.CommitFileRequest()
    request.CopyFrom(full)
    del request.manifest.chunks[:]
    request.base_manifest_digest = base.digest()
    request.pieces.extend(pieces)
    return request if request.ByteSize() < full.ByteSize() else None


def commit_file(
    remote: Remote, full: pb.CommitFileRequest, delta: pb.CommitFileRequest | None
) -> tuple[pb.CommitFileResponse, pb.CommitFileRequest | None]:
    """CommitFile in the delta form if there is one, else (or if the base is refused) in full.

    Returns the response and the delta request if that is what succeeded.
    """
    if delta is not None:
        try:
            return remote.call(remote.stub.CommitFile, delta), delta
        except (NotFoundError, InvalidInputError):
            pass  # the base is gone or not acceptable (e.g. the path was replaced): once in full
    return remote.call(remote.stub.CommitFile, full), None

