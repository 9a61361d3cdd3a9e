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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from cas import codec
from cas.digest import check_digest, digest
from cas.errors import ChunkNotFoundError, CorruptChunkError, InvalidInputError, StorageFullError

_HEX = frozenset("0123456789abcdef")
_TEMP_SUFFIX = ".tmp"
_STAGING = ".staging"
_DAMAGED = ".damaged"
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
    repairs: set[Path] = field(default_factory=set)  # finals whose stored copy is damaged: replace them
    lost: set[bytes] = field(default_factory=set)  # never filled here: the files layout is not collected


@dataclass
class CheckReport:
    """What :meth:`LocalChunkStore.check` found."""

    checked: int = 0
    checked_bytes: int = 0
    damaged: list[bytes] = field(default_factory=list)  # found damaged by this check


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

    def get_frames(self, digests: Sequence[bytes], verify: bool = True) -> list[bytes]:
        """:meth:`get_frame` of each digest, in order; the first failure raises (a store may look
        them all up at once, which beats one index query per chunk)."""
        return [self.get_frame(d, verify) for d in digests]

    def get(self, digest: bytes) -> bytes:
        """Return the decoded, verified bytes; :class:`ChunkNotFoundError` or :class:`CorruptChunkError`.

        A copy that fails verification is marked damaged (:meth:`mark_damaged`) before the error.
        """
        d = check_digest(digest)
        try:
            return self._decode(d, self.get_frame(d, verify=False))
        except CorruptChunkError:
            self.mark_damaged(d)
            raise

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
        """Return the chunk count and stored frame bytes (may block while it counts)."""

    def known_stats(self) -> StoreStats | None:
        """The stats if they are known without blocking, else None (call :meth:`stats` off the
        event loop to count them)."""
        return None

    def is_empty(self) -> bool:
        """True if the store holds no chunk at all."""
        return next(iter(self.iterate()), None) is None

    def close(self) -> None:
        """Release what the store holds open (nothing, unless a subclass says otherwise)."""
        return None

    def mark_damaged(self, digest: bytes) -> bool:
        """Record that the copy under ``digest`` is damaged or missing, unless it now verifies.

        A damaged chunk is never served and is replaced by the next verified copy stored under
        its digest. Returns True if the chunk is (now) marked damaged.
        """
        return False

    def was_collected(self, digest: bytes) -> bool:
        """True if the last garbage collection removed ``digest`` on purpose (it is gone, not lost)."""
        return False

    def damaged_among(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests, in order, whose stored copy is known to be damaged or missing."""
        return []

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

    ``stats()`` counts the store once, on first use, and then keeps counters; changes made by other
    processes after that count are not reflected. The count walks one level-2 folder at a time
    under the store's lock, so puts and deletes go on while it runs and it never stalls them for
    longer than one folder takes; :meth:`known_stats` answers without waiting at all.

    Self-healing: a copy found damaged (it fails to decode or verify on a read or a check) or
    missing is moved aside to ``root/.damaged/<hex digest>`` (an empty file there records a
    missing one), so it is never served again, and the digest is in :meth:`damaged_among` until
    a verified copy is stored under it, which replaces it atomically. A put of a digest whose
    file exists compares the stored bytes with the (verified) frame it brings and verifies the
    stored copy when they differ, so damage nobody has read yet is repaired by the next upload.
    """

    def __init__(self, root: str | Path, max_chunk_size: int = 256 * 1024, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_chunk_size = max_chunk_size
        self._fsync = fsync
        self._lock = threading.Lock()  # chunk names appear and vanish, and counters change, under it
        self._room = threading.Lock()  # the free-space check and the writes it allows are one step
        self._count = _Count()
        self._folders: set[str] = set()  # level-2 folders known to exist: saves a stat per put
        self.staging = self.root / _STAGING
        self.staging.mkdir(exist_ok=True)
        _remove_orphans(self.staging)
        self.quarantine = self.root / _DAMAGED
        self.quarantine.mkdir(exist_ok=True)
        self._heal_lock = threading.Lock()  # orders marking a copy damaged and replacing it
        self._damaged: set[bytes] = {
            bytes.fromhex(e.name) for e in os.scandir(self.quarantine) if len(e.name) == 64 and _HEX.issuperset(e.name)
        }

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

    def stage(
        self, items: Sequence[tuple[bytes, bytes]], bases: Mapping[bytes, Sequence[bytes]] | None = None,
        decoded: Mapping[bytes, bytes] | None = None,
    ) -> Staged:
        """Write temp files for the frames not yet stored, without any durability barrier.

        ``bases`` and ``decoded`` (delta hints and the frames' bytes, as for
        :meth:`cas.packstore.PackChunkStore.stage`) are ignored: this layout stores every chunk as
        its own frame.

        Nothing is visible under a chunk's name until :meth:`publish`; :meth:`discard` removes
        the temp files of a batch that will not be published. Callers stage several batches and
        publish them together to pay for one barrier per many chunks. A batch that would eat into
        the free-space reserve is refused whole (StorageFullError, see :func:`check_room`); one
        that meets a full disk anyway leaves no temp file behind.
        """
        staged = Staged(len(items))
        todo: list[tuple[int, bytes, Path]] = []
        for index, (d, frame) in enumerate(items):
            final = self.path_for(d)
            if d in self._damaged or self._stored_copy_damaged(d, final, frame):
                staged.repairs.add(final)
            elif os.path.exists(final):
                continue
            todo.append((index, frame, final))
        if todo:
            self._write_temps(staged, todo)
        return staged

    def _write_temps(self, staged: Staged, todo: list[tuple[int, bytes, Path]]) -> None:
        """Check for room and write the batch's temp files as one step (under ``_room``): concurrent
        batches could otherwise each see room that only one of them has. Once written, a batch's
        bytes are taken from the free space the next check sees, so no reserve accounting is
        needed. On failure no temp file of the batch is left."""
        with self._room:
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
                    if final in batch.repairs:
                        flags[index] = self._repair(temp, final, size)
                        folders.add(self.quarantine)
                    else:
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
        # The rename and the counter change are one step for the count in progress, if any.
        with self._lock:
            if not _rename_noreplace(temp, final):
                return False
            self._count.changed(final.name, 1, size)
        return True

    def _stored_copy_damaged(self, digest: bytes, final: Path, frame: bytes) -> bool:
        """True if ``final`` exists but is not a good copy; ``frame`` is a verified frame of ``digest``.

        Equal bytes prove the stored copy good without decoding it; only a copy that differs (an
        other compression level, or damage) is decoded and verified.
        """
        try:
            stored = final.read_bytes()
        except FileNotFoundError:
            return False
        if stored == frame:
            return False
        try:
            self._decode(digest, stored)
        except CorruptChunkError:
            return True
        return False

    def _repair(self, temp: Path, final: Path, size: int) -> bool:
        """Replace a damaged (or missing) copy with the verified frame in ``temp``, atomically."""
        digest = bytes.fromhex(final.name)
        with self._heal_lock:
            try:
                old = final.stat().st_size
            except FileNotFoundError:
                old = None
            with self._lock:  # the replace and the counter change are one step for a count in progress
                os.replace(temp, final)
                self._count.changed(final.name, 0 if old is not None else 1, size - (old or 0))
            self._damaged.discard(digest)
            (self.quarantine / final.name).unlink(missing_ok=True)
        return True

    def mark_damaged(self, digest: bytes) -> bool:
        """Move a copy that does not verify aside to ``.damaged`` (record a missing one there).

        The copy is checked again under the lock, so a copy repaired in the meantime stays.
        """
        d = check_digest(digest)
        final = self.path_for(d)
        with self._heal_lock:
            try:
                frame = final.read_bytes()
            except FileNotFoundError:
                frame = None
            if frame is not None:
                try:
                    self._decode(d, frame)
                    return False
                except CorruptChunkError:
                    pass
                with self._lock:
                    os.replace(final, self.quarantine / final.name)
                    self._count.changed(final.name, -1, -len(frame))
            else:
                (self.quarantine / final.name).touch()
            self._damaged.add(d)
        if self._fsync:
            _fsync_path(self.quarantine)
            if frame is not None:
                _fsync_path(final.parent)
        return True

    def iterate_damaged(self) -> list[bytes]:
        """Every digest marked damaged or missing (sorted)."""
        with self._heal_lock:
            return sorted(self._damaged)

    def damaged_among(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests, in first-seen order without duplicates, whose copy is known damaged or
        missing (an in-memory set: free while nothing is damaged)."""
        damaged = self._damaged
        return list(dict.fromkeys(d for d in digests if d in damaged)) if damaged else []

    def check(self, read_data: bool = False) -> CheckReport:
        """Walk every chunk file: its header (and, with ``read_data``, its content) must verify.

        Copies that fail are marked damaged (:meth:`mark_damaged`) and listed in the report.
        """
        report = CheckReport()
        for path in self._chunk_files():
            d = bytes.fromhex(path.name)
            try:
                frame = path.read_bytes()
            except FileNotFoundError:
                continue
            report.checked += 1
            report.checked_bytes += len(frame)
            try:
                self._decode(d, frame) if read_data else self._check_header(d, frame)
            except CorruptChunkError:
                if self.mark_damaged(d):
                    report.damaged.append(d)
        return report

    def _check_header(self, digest: bytes, frame: bytes) -> None:
        """The cheap check of a frame that is not decoded: its header and declared sizes agree."""
        try:
            length = codec.frame_length(frame)
        except InvalidInputError as exc:
            raise CorruptChunkError(digest, str(exc)) from None
        if length > self.max_chunk_size:
            raise CorruptChunkError(digest, f"header declares {length} bytes, over the chunk size limit")
        payload = memoryview(frame)[codec.HEADER_SIZE:]
        if frame[3] == codec.METHOD_RAW:
            declared = payload.nbytes
        else:
            try:
                declared = zstandard.frame_content_size(payload)
            except zstandard.ZstdError as exc:
                raise CorruptChunkError(digest, f"bad zstd frame header: {exc}") from None
        if declared != length:
            raise CorruptChunkError(digest, f"frame header declares {length} bytes, its payload {declared}")

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
        if d in self._damaged:
            raise CorruptChunkError(d, "the stored copy is damaged; it is repaired when the chunk is uploaded again")
        try:
            frame = self.path_for(d).read_bytes()
        except FileNotFoundError:
            raise ChunkNotFoundError(d) from None
        try:
            self._decode(d, frame) if verify else self._check_header(d, frame)
        except CorruptChunkError:
            self.mark_damaged(d)
            raise
        return frame

    def has(self, digest: bytes) -> bool:
        """Return True if a frame is stored under ``digest`` and not known to be damaged."""
        return digest not in self._damaged and self.path_for(digest).is_file()

    def delete(self, digest: bytes) -> bool:
        """Remove the frame under ``digest``; True if it existed."""
        path = self.path_for(digest)
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return False
            self._count.changed(path.name, -1, -size)
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
        """Return the chunk count and stored frame bytes: counted once (blocking the calling thread,
        never the store), then kept as counters. Concurrent first callers share one count."""
        with self._count.running:
            if self._count.totals is None:
                self._count_all()
        totals = self._count.totals
        assert totals is not None
        return StoreStats(*totals)

    def known_stats(self) -> StoreStats | None:
        """The stats if the first count has finished, else None; never blocks."""
        totals = self._count.totals
        return None if totals is None else StoreStats(*totals)

    def _count_all(self) -> None:
        """Walk every level-1 name (not a listing, so folders made meanwhile are not missed), listing
        its level-2 folders and counting each one under the lock; the rules of :class:`_Count` make
        puts and deletes during the walk count exactly once."""
        with self._lock:
            self._count.start()  # from zero, also after a walk that failed half-way
        for level1 in (f"{n:02x}" for n in range(256)):
            with self._lock:
                self._count.enter(level1, _level2_names(self.root / level1))
            for level2 in sorted(self._count.listed):
                with self._lock:
                    count, size = _count_folder(self.root / level1 / level2, level1 + level2)
                    self._count.add_folder(level2, count, size)
        with self._lock:
            self._count.finish()


class _Count:
    """The state of the first count of a store and the counters it leaves behind.

    Invariant (all under the store's lock): ``counted`` is the total of every chunk the walk has
    passed, plus every change made since in a place the walk had passed or will never look at.
    A change is recorded here only if the walk will not see it: its level-1 name is below the
    current one, or equal and its level-2 folder is either counted already or was not listed.
    """

    def __init__(self) -> None:
        self.running = threading.Lock()  # one count at a time
        self.totals: tuple[int, int] | None = None  # (chunks, bytes) once the count has finished
        self.level1 = ""  # the level-1 folder being counted ("" before the walk starts)
        self.listed: frozenset[str] = frozenset()
        self.done: set[str] = set()
        self.counted = [0, 0]

    def changed(self, name: str, chunks: int, size: int) -> None:
        """Record a chunk named ``name`` appearing (+1, +size) or vanishing (-1, -size)."""
        if self.totals is not None:
            self.totals = (self.totals[0] + chunks, self.totals[1] + size)
            return
        level1, level2 = name[:2], name[2:4]
        if level1 < self.level1 or (level1 == self.level1 and (level2 in self.done or level2 not in self.listed)):
            self.counted[0] += chunks
            self.counted[1] += size

    def start(self) -> None:
        """Begin a walk: nothing passed, nothing counted."""
        self.level1, self.listed, self.done = "", frozenset(), set()
        self.counted = [0, 0]

    def enter(self, level1: str, listed: frozenset[str]) -> None:
        """The walk moves on to ``level1``, whose level-2 folders are ``listed``."""
        self.level1, self.listed, self.done = level1, listed, set()

    def add_folder(self, level2: str, chunks: int, size: int) -> None:
        """Add the count of one level-2 folder of the current level-1 folder."""
        self.counted[0] += chunks
        self.counted[1] += size
        self.done.add(level2)

    def finish(self) -> None:
        """Publish the totals; from now on every change goes straight to them."""
        self.totals = (self.counted[0], self.counted[1])


def _level2_names(folder: Path) -> frozenset[str]:
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if len(e.name) == 2 and _HEX.issuperset(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def _count_folder(folder: Path, prefix: str) -> tuple[int, int]:
    """Number and total size of the chunk files in one level-2 folder."""
    count = size = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if len(name) == 64 and name.startswith(prefix) and _HEX.issuperset(name):
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat(follow_symlinks=False).st_size
                    count += 1
    return count, size


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
