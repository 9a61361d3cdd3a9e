"""Local-disk side of a download: indexing an old copy and replacing a file atomically.

A download never writes into the destination itself: it builds a temp file next to it, checks it,
fsyncs it and renames it over the destination, so a crash or a failed check leaves either the old
file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import blake3

from cas.chunker import ChunkParams
from cas.pipeline import Pipeline

_FALLBACK_UMASK = 0o022


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still done
    finally:
        os.close(fd)


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
) -> dict[bytes, tuple[int, int]]:
    """Chunk an open local file and return ``digest -> (offset, length)`` for the wanted digests.

    Only digests in ``wanted`` are kept (the first occurrence), so memory is bounded by what the
    download can use. ``file_hasher`` is fed the whole file, which tells the caller whether the
    local copy already is the wanted version.
    """
    index: dict[bytes, tuple[int, int]] = {}
    own = pipeline is None
    pipe = pipeline or Pipeline(params)
    try:
        # A duplicate fd gets its own file position, so the caller's fd can keep using pread.
        with os.fdopen(os.dup(fd), "rb") as stream:
            for chunk in pipe.hash_stream(stream, file_hasher):
                if chunk.digest in wanted and chunk.digest not in index:
                    index[chunk.digest] = (chunk.offset, chunk.length)
    finally:
        if own:
            pipe.close()
    return index


class AtomicFile:
    """A temp file in the destination's folder that replaces the destination on :meth:`commit`.

    Use as a context manager: leaving the block without a commit (an exception, a failed check)
    removes the temp file and leaves the destination untouched.
    """

    def __init__(self, destination: str | Path) -> None:
        self.destination = Path(destination)
        self.folder = self.destination.parent
        prefix = f".{self.destination.name}."
        self.fd, name = tempfile.mkstemp(dir=self.folder, prefix=prefix, suffix=".svpart")
        self.temp_path = Path(name)
        self._done = False

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.discard()

    def discard(self) -> None:
        """Close and delete the temp file (idempotent)."""
        self._done = True
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def commit(self, *, mode: int | None = None, mtime_ns: int = 0) -> None:
        """fsync the temp file, set its mode and mtime, rename it over the destination, fsync the folder.

        Mode and mtime are set before the rename so the file never appears with the wrong ones.
        ``mode`` None keeps the destination's current mode if it exists, else the umask default.
        """
        try:
            os.fsync(self.fd)
            if mode is None:
                try:
                    mode = os.stat(self.destination).st_mode & 0o7777
                except FileNotFoundError:
                    mode = 0o666 & ~current_umask()
            os.fchmod(self.fd, mode)
            if mtime_ns:
                os.utime(self.fd, ns=(time.time_ns(), mtime_ns))
            os.close(self.fd)
            self._done = True
            os.replace(self.temp_path, self.destination)
        except BaseException:
            self.discard()
            raise
        fsync_dir(self.folder)
