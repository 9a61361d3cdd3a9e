"""Chunk stores: frames in, verified bytes out.

The interface speaks only digests and frames, so a remote object store (S3 and friends) can
implement it with the same semantics as the local filesystem store below.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cas import codec
from cas.digest import check_digest, digest
from cas.errors import ChunkNotFoundError, CorruptChunkError, InvalidInputError

_HEX = frozenset("0123456789abcdef")
_TEMP_SUFFIX = ".tmp"


@dataclass
class StoreStats:
    """Number of chunks held and the bytes their frames occupy."""

    chunk_count: int
    stored_bytes: int


class ChunkStore(ABC):
    """A set of chunk frames named by the BLAKE3 digest of their uncompressed bytes."""

    #: Largest uncompressed chunk :meth:`get` decodes (the decompression-bomb limit).
    max_chunk_size: int = 256 * 1024

    @abstractmethod
    def put(self, digest: bytes, frame: bytes) -> bool:
        """Store ``frame`` under ``digest``; True if newly written, False if already present.

        Does not verify the frame: callers check it with :func:`cas.codec.decode_verified` first.
        """

    @abstractmethod
    def get_frame(self, digest: bytes, verify: bool = True) -> bytes:
        """Return the stored frame; when ``verify``, raise :class:`CorruptChunkError` if it is bad.

        Raises :class:`ChunkNotFoundError` when absent.
        """

    def get(self, digest: bytes) -> bytes:
        """Return the decoded, verified bytes; :class:`ChunkNotFoundError` or :class:`CorruptChunkError`."""
        return self._decode(check_digest(digest), self.get_frame(digest, verify=False))

    @abstractmethod
    def has(self, digest: bytes) -> bool:
        """Return True if a frame is stored under ``digest``."""

    def has_many(self, digests: Iterable[bytes]) -> list[bool]:
        """Return :meth:`has` for each digest, in order."""
        return [self.has(d) for d in digests]

    @abstractmethod
    def delete(self, digest: bytes) -> bool:
        """Remove the frame under ``digest``; True if it existed."""

    @abstractmethod
    def iterate(self) -> Iterator[bytes]:
        """Yield the digest of every stored chunk (in no particular order)."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """Return the chunk count and stored frame bytes."""

    def _decode(self, digest: bytes, frame: bytes) -> bytes:
        try:
            return codec.decode_verified(digest, frame, self.max_chunk_size)
        except InvalidInputError as exc:
            # A bad frame at rest is corruption of the store, not bad input from the caller.
            raise CorruptChunkError(digest, str(exc)) from None


class LocalChunkStore(ChunkStore):
    """Frames as files ``root/ab/cd/<hex digest>``, written atomically and durably.

    A put writes a temp file in the target folder, fsyncs it, publishes it with a hard link (which,
    unlike a rename, fails if the name exists: concurrent puts of one digest from any number of
    threads or processes leave exactly one file and exactly one of them returns True), then fsyncs
    the folder. On filesystems without hard links it falls back to ``os.replace``.

    ``stats()`` scans the store once, on first use, and then keeps counters; changes made by other
    processes after that scan are not reflected.
    """

    def __init__(self, root: str | Path, max_chunk_size: int = 256 * 1024, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_chunk_size = max_chunk_size
        self._fsync = fsync
        self._lock = threading.Lock()
        self._stats: StoreStats | None = None
        self._use_link = True

    def path_for(self, digest: bytes) -> Path:
        """Return the file path of ``digest`` (whether or not it exists)."""
        h = check_digest(digest).hex()
        return self.root / h[:2] / h[2:4] / h

    def put(self, digest: bytes, frame: bytes) -> bool:
        """Store ``frame`` under ``digest``; True if newly written, False if already present."""
        final = self.path_for(digest)
        if final.exists():
            return False
        folder = final.parent
        self._make_folder(folder)
        temp = folder / f".{final.name}.{os.getpid()}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            created = self._publish(temp, final, len(frame))
        finally:
            temp.unlink(missing_ok=True)
        if created and self._fsync:
            _fsync_dir(folder)
        return created

    def _publish(self, temp: Path, final: Path, size: int) -> bool:
        # Under the lock so that the first stats() scan and the counters never disagree.
        with self._lock:
            if self._use_link:
                try:
                    os.link(temp, final)
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                        raise
                    self._use_link = False
            if not self._use_link:
                if final.exists():
                    return False
                os.replace(temp, final)
            if self._stats is not None:
                self._stats.chunk_count += 1
                self._stats.stored_bytes += size
            return True

    def _make_folder(self, folder: Path) -> None:
        if folder.is_dir():
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            # New folders must themselves survive a crash, or the chunk inside them is lost.
            _fsync_dir(folder.parent)
            _fsync_dir(self.root)

    def get_frame(self, digest: bytes, verify: bool = True) -> bytes:
        """Return the stored frame, verified against its digest unless ``verify`` is False."""
        d = check_digest(digest)
        try:
            frame = self.path_for(d).read_bytes()
        except FileNotFoundError:
            raise ChunkNotFoundError(d) from None
        if verify:
            self._decode(d, frame)
        return frame

    def has(self, digest: bytes) -> bool:
        """Return True if a frame is stored under ``digest``."""
        return self.path_for(digest).is_file()

    def delete(self, digest: bytes) -> bool:
        """Remove the frame under ``digest``; True if it existed."""
        path = self.path_for(digest)
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return False
            if self._stats is not None:
                self._stats.chunk_count -= 1
                self._stats.stored_bytes -= size
        if self._fsync:
            _fsync_dir(path.parent)
        return True

    def iterate(self) -> Iterator[bytes]:
        """Yield the digest of every stored chunk; temp files and strangers are skipped."""
        for path in self._chunk_files():
            yield bytes.fromhex(path.name)

    def _chunk_files(self) -> Iterator[Path]:
        for level1 in _subdirs(self.root):
            for level2 in _subdirs(level1):
                prefix = level1.name + level2.name
                with os.scandir(level2) as entries:
                    for entry in entries:
                        name = entry.name
                        if len(name) == 64 and name.startswith(prefix) and _HEX.issuperset(name):
                            yield Path(entry.path)

    def stats(self) -> StoreStats:
        """Return the chunk count and stored frame bytes (scanned once, then kept as counters)."""
        with self._lock:
            if self._stats is None:
                count = size = 0
                for path in self._chunk_files():
                    try:
                        size += path.stat().st_size
                    except FileNotFoundError:
                        continue
                    count += 1
                self._stats = StoreStats(count, size)
            return StoreStats(self._stats.chunk_count, self._stats.stored_bytes)


def _subdirs(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if len(e.name) == 2 and _HEX.issuperset(e.name) and e.is_dir())
    for name in names:
        yield folder / name


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def put_data(store: ChunkStore, data: bytes, level: int = 3) -> bytes:
    """Encode ``data``, store it and return its digest."""
    d = digest(data)
    store.put(d, codec.encode(data, level))
    return d
