"""Local folders of a download, opened as directory fds so that no write can leave the destination.

Policy (README, "Trees, the state cache and what is skipped"):

* The destination root named on the command line may itself be a symlink: the user chose it, so
  it is followed once, when it is opened (and created with its parents when missing).
* Inside the root, every folder is entered with ``O_NOFOLLOW | O_DIRECTORY`` relative to the fd
  of its parent. A symlink where a folder is expected is never followed: the files below it fail
  with :class:`UnsafeLocalPathError` (one per-file error, exit 1), the rest of the tree goes on.
* A symlink (or anything else) where a file is to be written is replaced by the file: the final
  ``rename`` relative to the folder fd replaces the link itself; its target is never opened for
  writing, chmod'ed or utime'd.

Because each step is relative to an fd that was opened without following links, a folder swapped
for a symlink while a restore runs cannot redirect a write: the walk fails instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cas.digest import digest as blake3_digest
from cas.errors import CasError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused right after.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NAME_MAX = 255
PART_SUFFIX = ".svpart"


class UnsafeLocalPathError(CasError):
    """A local path of a download goes through a symlink or a non-folder inside the destination."""


class Folder:
    """An open directory fd (owned: close it, or use as a context manager) and its display path."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open_root(cls, path: str | os.PathLike[str], *, create: bool = True) -> Folder:
        """Open the destination root named by the user, following a symlink there (once)."""
        root = Path(path)
        if create:
            root.mkdir(parents=True, exist_ok=True)
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)), root)

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sub(self, parts: tuple[str, ...] | list[str], *, create: bool = True) -> Folder:
        """Open the folder ``parts`` below this one without following any symlink, creating missing ones.

        UnsafeLocalPathError when a component is a symlink or not a folder; FileNotFoundError when
        one is missing and ``create`` is false.
        """
        fd = os.dup(self.fd)
        path = self.path
        try:
            for name in parts:
                path = path / name
                nxt = _enter(fd, name, path, create)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return Folder(fd, path)

    def open_regular(self, name: str) -> int | None:
        """Open ``name`` in this folder for reading if it is a regular file (never through a symlink).

        None when it is missing, a symlink, a folder, a FIFO, a device or unreadable.
        """
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def lstat(self, name: str) -> os.stat_result | None:
        """lstat ``name`` in this folder; None when it does not exist."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def unlink(self, name: str) -> None:
        """Remove ``name`` (a file or a link, never what a link points to) if it exists."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def fsync(self) -> None:
        """fsync the folder so that a rename inside it survives a crash (no-op where unsupported)."""
        with contextlib.suppress(OSError):
            os.fsync(self.fd)


def _enter(parent: int, name: str, path: Path, create: bool) -> int:
    """Open the folder ``name`` below ``parent`` (an fd) without following a symlink."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):  # a concurrent job made it: enter that
                os.mkdir(name, 0o777, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise _unsafe(parent, name, path) from None
            raise
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _unsafe(parent: int, name: str, path: Path) -> UnsafeLocalPathError:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
    except OSError:
        what = "not a folder"
    return UnsafeLocalPathError(
        f"{path} is {what}; a download never writes through a symlink inside its destination "
        "(nothing was written there; replace it with a folder to restore the files below it)"
    )


def part_name(name: str) -> str:
    """The deterministic temp file name of a download to ``name``: ``.NAME.svpart`` in the same folder.

    A name too long for that gets a digest of the name instead, still deterministic.
    """
    part = f".{name}{PART_SUFFIX}"
    if len(os.fsencode(part)) <= _NAME_MAX:
        return part
    return f".{blake3_digest(os.fsencode(name)).hex()[:40]}{PART_SUFFIX}"


@dataclass(frozen=True)
class LocalTarget:
    """Where a downloaded file goes: folder ``parts`` below ``root``, file ``name``, shown as ``path``."""

    root: Folder
    parts: tuple[str, ...]
    name: str
    path: Path
    guard: Callable[[Folder, str], None] | None = None  # called before the rename; raises to keep what is there

    @classmethod
    def below(cls, root: Folder, dest: Path) -> LocalTarget:
        """The target of ``dest``, a path below ``root.path`` (as a restore plan builds them)."""
        rel = dest.relative_to(root.path).parts
        if not rel or any(p in ("", ".", "..") for p in rel):
            raise UnsafeLocalPathError(f"{dest} is not below {root.path}")
        return cls(root, tuple(rel[:-1]), rel[-1], dest)

    def open_folder(self, *, create: bool = True) -> Folder:
        """Open (and create) the target's folder; see :meth:`Folder.sub`."""
        return self.root.sub(self.parts, create=create)
