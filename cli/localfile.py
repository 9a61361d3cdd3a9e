"""Local-disk side of a download: indexing an old copy and replacing a file atomically.

A download never writes into the destination itself: it builds a temp file next to it, checks it,
fsyncs it and renames it over the destination, so a crash or a failed check leaves either the old
file or the new one, never a mix. Every operation is relative to a folder fd (cli/localdir.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path

import blake3

from cas.chunker import ChunkParams
from cas.pipeline import Pipeline
from cli.localdir import PART_SUFFIX, Folder, part_name
from cli.plan import OldChunks

_FALLBACK_UMASK = 0o022


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _FALLBACK_UMASK


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, length: int, offset: int) -> bytes | None:
    """Read ``length`` bytes at ``offset``; None when the file is shorter (it changed under us)."""
    parts = []
    while length:
        part = os.pread(fd, length, offset)
        if not part:
            return None
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def index_local_file(
    fd: int,
    params: ChunkParams,
    wanted: Collection[bytes],
    file_hasher: blake3.blake3 | None = None,
    pipeline: Pipeline | None = None,
    others: OldChunks | None = None,
) -> dict[bytes, tuple[int, int]]:
    """Chunk an open local file and return ``digest -> (offset, length)`` for the wanted digests.

    Only digests in ``wanted`` are kept (the first occurrence), so memory is bounded by what the
    download can use. ``file_hasher`` is fed the whole file, which tells the caller whether the
    local copy already is the wanted version. ``others``, when given, gets every chunk whose digest
    is not wanted (the delta base candidates), in file order.
    """
    index: dict[bytes, tuple[int, int]] = {}
    own = pipeline is None
    pipe = pipeline or Pipeline(params)
    try:
        # A duplicate fd gets its own file position, so the caller's fd can keep using pread.
        with os.fdopen(os.dup(fd), "rb") as stream:
            for chunk in pipe.hash_stream(stream, file_hasher):
                if chunk.digest not in wanted:
                    if others is not None:
                        others.add(chunk.offset, chunk.length, chunk.digest)
                elif chunk.digest not in index:
                    index[chunk.digest] = (chunk.offset, chunk.length)
    finally:
        if own:
            pipe.close()
    return index


def touch_fd(fd: int, mode: int | None, mtime_ns: int) -> os.stat_result:
    """Set an open file's mode and mtime where they differ, on the fd (never by path); its stat afterwards."""
    st = os.fstat(fd)
    if mode is not None and (st.st_mode & 0o777) != mode:
        os.fchmod(fd, mode)
    if mtime_ns and st.st_mtime_ns != mtime_ns:
        os.utime(fd, ns=(time.time_ns(), mtime_ns))
    return os.fstat(fd)


def take_partial(folder: Folder, name: str) -> int | None:
    """Open the ``.NAME.svpart`` a killed download to ``name`` left (if it is a regular file), and remove it.

    The returned fd (or None) is read as one more local source: every chunk of it is verified by
    digest before use. Whatever the name held (a file, a link: never its target) is gone afterwards.
    """
    part = part_name(name)
    fd = folder.open_regular(part)
    with contextlib.suppress(IsADirectoryError, PermissionError):
        folder.unlink(part)
    return fd


class AtomicFile:
    """A temp file in the destination's folder that replaces the destination on :meth:`commit`.

    The temp file is ``.NAME.svpart`` beside the destination (created with O_EXCL and O_NOFOLLOW
    relative to the folder's fd), so a download that is killed leaves one known file that the next
    download of the same destination reuses and removes (:func:`take_partial`). Use as a context
    manager: leaving the block without a commit removes the temp file and leaves the destination
    untouched. Nothing is done by path: mode and times are set on the fd, the rename is relative
    to the folder fd and replaces whatever entry (file or symlink) had the name.

    ``destination`` is a path, whose parent (named by the caller) is opened following symlinks, or a
    bare name inside ``folder``.
    """

    def __init__(self, destination: str | Path, folder: Folder | None = None) -> None:
        self._own_folder = folder is None
        if folder is None:
            dest = Path(destination)
            folder = Folder.open_root(dest.parent, create=False)
            destination = dest.name
        self.folder = folder
        self.name = str(destination)
        self.temp_name = part_name(self.name)
        self.stat: os.stat_result | None = None  # of the file in place, taken after the commit
        self.observed_ns = 0  # time.time_ns() taken just before that stat
        try:
            self.fd = self._create()
        except BaseException:
            self._close_folder()
            raise
        self._done = False

    def _create(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.temp_name, flags, 0o600, dir_fd=self.folder.fd)
        except FileExistsError:
            # Another download of the same destination is running (or a folder has the name).
            stem = self.temp_name[: -len(PART_SUFFIX)][:200]
            self.temp_name = f"{stem}.{os.urandom(6).hex()}{PART_SUFFIX}"
            return os.open(self.temp_name, flags, 0o600, dir_fd=self.folder.fd)

    @property
    def temp_path(self) -> Path:
        """Where the temp file is (for messages)."""
        return self.folder.path / self.temp_name

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.discard()
        self._close_folder()

    def _close_folder(self) -> None:
        if self._own_folder:
            self.folder.close()

    def discard(self) -> None:
        """Close and delete the temp file (idempotent)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.folder.unlink(self.temp_name)

    def _mode(self, mode: int | None) -> int:
        """``mode``, else the mode of the regular file being replaced, else the umask default."""
        if mode is not None:
            return mode
        old = self.folder.lstat(self.name)
        if old is not None and stat.S_ISREG(old.st_mode):
            return old.st_mode & 0o7777
        return 0o666 & ~current_umask()

    def commit(self, *, mode: int | None = None, mtime_ns: int = 0,
               check: Callable[[Folder, str], None] | None = None) -> None:
        """fsync the temp file, set its mode and mtime, rename it over the destination, fsync the folder.

        Mode and mtime are set on the fd before the rename, so the file never appears with the
        wrong ones. ``mode`` None keeps the replaced file's mode if it exists, else the umask default.
        ``check(folder, name)`` runs right before the rename; what it raises discards the temp file
        and leaves the destination as it is (a sync re-checks there that it did not change).
        """
        try:
            os.fsync(self.fd)
            if check is not None:
                check(self.folder, self.name)
            os.fchmod(self.fd, self._mode(mode))
            if mtime_ns:
                os.utime(self.fd, ns=(time.time_ns(), mtime_ns))
            fd = self.folder.fd
            os.rename(self.temp_name, self.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            self.discard()
            raise
        self._done = True
        self.folder.fsync()
        self.observed_ns = time.time_ns()
        self.stat = os.fstat(self.fd)
        os.close(self.fd)
