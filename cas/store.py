"""Chunk stores: frames in, verified bytes out.

The interface speaks only digests and frames, so a remote object store (S3 and friends) can
implement it with the same semantics as the local filesystem store below.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cas import codec
from cas.digest import check_digest, digest
from cas.errors import ChunkNotFoundError, CorruptChunkError, InvalidInputError, StorageFullError

_HEX = frozenset("0123456789abcdef")
_TEMP_SUFFIX = ".tmp"
_STAGING = ".staging"
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_FSYNC_MAX = 4  # up to this many paths, fsync each instead of syncfs
RESERVE_FRACTION = 0.01  # of the file system that new chunks never use (see check_room)
RESERVE_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class StoreStats:
    """Number of chunks held and the bytes their frames occupy."""

    chunk_count: int
    stored_bytes: int


@dataclass
class Staged:
    """Frames written to temp files by :meth:`LocalChunkStore.stage`, not yet published."""

    count: int
    files: list[tuple[int, Path, Path, int]] = field(default_factory=list)  # index, temp, final, size
    folders: set[Path] = field(default_factory=set)


class ChunkStore(ABC):
    """A set of chunk frames named by the BLAKE3 digest of their uncompressed bytes."""

    #: Largest uncompressed chunk :meth:`get` decodes (the decompression-bomb limit).
    max_chunk_size: int = 256 * 1024

    @abstractmethod
    def put(self, digest: bytes, frame: bytes) -> bool:
        """Store ``frame`` under ``digest``; True if newly written, False if already present.

        Does not verify the frame: callers check it with :func:`cas.codec.decode_verified` first.
        """

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bool]:
        """Store several (digest, frame) pairs; a store may make them durable together, which is
        much cheaper than one durability barrier per chunk. Same result as calling put for each."""
        return [self.put(d, f) for d, f in items]

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

    A put writes a temp file in ``root/.staging``, makes it durable, then gives it its name with
    a rename that refuses to replace (``renameat2(RENAME_NOREPLACE)``, else a hard link): so
    concurrent puts of one digest from any number of threads or processes leave exactly one file,
    and exactly one of them returns True. Then the folder is made durable. Temp files left by a
    crashed process are removed when a store is opened.

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
        self._folders: set[str] = set()  # level-2 folders known to exist: saves a stat per put
        self.staging = self.root / _STAGING
        self.staging.mkdir(exist_ok=True)
        _remove_orphans(self.staging)

    def path_for(self, digest: bytes) -> Path:
        """Return the file path of ``digest`` (whether or not it exists)."""
        h = check_digest(digest).hex()
        return self.root / h[:2] / h[2:4] / h

    def put(self, digest: bytes, frame: bytes) -> bool:
        """Store ``frame`` under ``digest``; True if newly written, False if already present."""
        return self.put_many([(digest, frame)])[0]

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bool]:
        """Store a batch of frames with two durability barriers for the whole batch."""
        return self.publish(self.stage(items))

    def stage(self, items: Sequence[tuple[bytes, bytes]]) -> Staged:
        """Write temp files for the frames not yet stored, without any durability barrier.

        Nothing is visible under a chunk's name until :meth:`publish`; :meth:`discard` removes
        the temp files of a batch that will not be published. Callers stage several batches and
        publish them together to pay for one barrier per many chunks. A batch that would eat into
        the free-space reserve is refused whole (StorageFullError, see :func:`check_room`); one
        that meets a full disk anyway leaves no temp file behind.
        """
        staged = Staged(len(items))
        todo = [(index, frame, final) for index, (digest, frame) in enumerate(items)
                if not os.path.exists(final := self.path_for(digest))]
        if todo:
            check_room(self.staging, sum(len(frame) for _, frame, _ in todo))
        try:
            for index, frame, final in todo:
                staged.folders |= self._make_folder(final.parent)
                temp = self.staging / f"{final.name}.{os.getpid()}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
                _write_file(temp, frame)
                staged.files.append((index, temp, final, len(frame)))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def publish(self, *batches: Staged) -> list[bool]:
        """Make staged frames durable, give them their names, make the names durable.

        Returns, per staged item in order, True if it was newly stored. A crash at any point
        leaves either nothing or complete, valid chunk files: temp files never carry a chunk's
        name, and they reach the disk before they are linked to it.
        """
        files = [f for batch in batches for f in batch.files]
        folders = set().union(*(batch.folders for batch in batches))
        try:
            if self._fsync and files:
                self._barrier([temp for _, temp, _, _ in files])
            results: list[bool] = []
            for batch in batches:
                flags = [False] * batch.count
                for index, temp, final, size in batch.files:
                    flags[index] = self._publish(temp, final, size)
                    folders.add(final.parent)
                results += flags
            if self._fsync and files:
                self._barrier(sorted(folders | {self.staging}))
            return results
        finally:
            for batch in batches:
                self.discard(batch)

    def discard(self, staged: Staged) -> None:
        """Remove the temp files of a staged batch (after publish, or instead of it)."""
        for _, temp, _, _ in staged.files:
            temp.unlink(missing_ok=True)

    def _barrier(self, paths: list[Path]) -> None:
        """Make the given files or folders durable: one syncfs for many, else fsync each.

        syncfs flushes everything dirty on the filesystem, which beats dozens of fsyncs but
        loses to two or three of them when little else is pending.
        """
        if len(paths) > _FSYNC_MAX and _syncfs(self.root):
            return
        for path in paths:
            _fsync_path(path)

    def _publish(self, temp: Path, final: Path, size: int) -> bool:
        if not _rename_noreplace(temp, final):
            return False
        # Under the lock so that the first stats() scan and the counters never disagree.
        with self._lock:
            if self._stats is not None:
                self._stats.chunk_count += 1
                self._stats.stored_bytes += size
        return True

    def _make_folder(self, folder: Path) -> set[Path]:
        """Create ``folder`` if needed; returns the folders whose entries changed (to make durable:
        a new folder must itself survive a crash, or the chunk inside it is lost)."""
        key = str(folder)
        if key in self._folders:
            return set()
        changed: set[Path] = set()
        if not os.path.isdir(key):
            folder.mkdir(parents=True, exist_ok=True)
            changed = {folder.parent, self.root}
        self._folders.add(key)
        return changed

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
            _fsync_path(path.parent)
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


def check_room(folder: Path, nbytes: int) -> None:
    """Refuse (StorageFullError) to write ``nbytes`` that would leave less than the reserve free.

    The reserve (1% of the file system, at most RESERVE_MAX_BYTES) keeps room for the metadata
    store's append-only file (the embedded Valkey lives in the same data dir), which cannot
    survive a failed write, so a filling disk refuses new chunks while commits still work.
    """
    st = os.statvfs(folder)
    reserve = min(RESERVE_MAX_BYTES, st.f_blocks * st.f_frsize * RESERVE_FRACTION)
    if st.f_bavail * st.f_frsize - nbytes < reserve:
        raise StorageFullError()


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; on failure (a full disk) no part of the file is left behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syncfs.argtypes = [ctypes.c_int]
except (OSError, AttributeError):  # not Linux: fall back to one fsync per path
    _libc = None


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then False); atomic either way."""
    if _libc is not None and getattr(_libc, "renameat2", None) is not None:
        if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    # No renameat2 here: a hard link also refuses to replace an existing name.
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    os.unlink(src)
    return True


def _remove_orphans(staging: Path) -> None:
    """Delete temp files whose writing process is gone (it crashed before publishing)."""
    with os.scandir(staging) as entries:
        for entry in entries:
            parts = entry.name.split(".")
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if _alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _syncfs(folder: Path) -> bool:
    """Flush every dirty page of the filesystem holding ``folder``; False where unsupported."""
    if _libc is None:
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", str(folder))
    finally:
        os.close(fd)
    return True


def put_data(store: ChunkStore, data: bytes, level: int = 3) -> bytes:
    """Encode ``data``, store it and return its digest."""
    d = digest(data)
    store.put(d, codec.encode(data, level))
    return d
