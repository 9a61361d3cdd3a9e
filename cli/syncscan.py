"""The local side of a sync: what the folder holds now, as the planner's ``Local`` values.

The walk is cli/tree.py's (symlinks are never followed, FIFOs and devices are skipped), with
``LOCAL_DIR/.stratusignore`` as its exclude patterns (the syntax of ``put --exclude``) plus the
rules no folder can turn off: the state folder, the temp files of downloads (``*.svpart``), the
ignore file itself and files named like a folder marker. Every folder (the root excepted) appears
as its marker path ``FOLDER/.stratusfolder`` so that empty folders travel too.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from cli.localdir import PART_SUFFIX, Folder, UnsafeLocalPathError
from cli.syncplan import EMPTY_DIGEST, FOLDER, FOLDER_MARKER, Fingerprint, Local, folder_of, is_folder_marker, marker_of
from cli.syncstate import STATE_DIR
from cli.tree import Excludes

IGNORE_FILE = ".stratusignore"
BUILTIN_IGNORES = (f"/{STATE_DIR}", f"*{PART_SUFFIX}", FOLDER_MARKER, f"/{IGNORE_FILE}")


def load_ignores(root: Path) -> Excludes:
    """The folder's ignore rules: ``.stratusignore`` (one pattern a line, ``#`` comments) plus the built-in ones."""
    try:
        lines = (root / IGNORE_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    return Excludes([*BUILTIN_IGNORES, *lines])


def fingerprint(st: os.stat_result) -> Fingerprint:
    """The fingerprint of a stat."""
    return Fingerprint(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


FOLDER_LOCAL = Local(FOLDER, EMPTY_DIGEST)
Stamp = tuple[int, int, int, int]  # (size, mtime_ns, ctime_ns, inode): a Fingerprint without the object
FOLDER_STAMP: Stamp = (0, 0, 0, 0)


def local_of(stamp: Stamp) -> Local:
    """The planner's ``Local`` for a scanned stamp (a folder's marker for the all-zero stamp)."""
    return FOLDER_LOCAL if stamp == FOLDER_STAMP else Local(Fingerprint(*stamp))


def stamp_key(stamp: Stamp) -> str:
    """A stamp as the state database spells it (cli/syncstate.py ``SyncState.known``)."""
    return f"{stamp[0]} {stamp[1]} {stamp[2]} {stamp[3]}"


def scan(root: Path, ignores: Excludes, under: str = "") -> tuple[dict[str, Stamp], list[str], int]:
    """Every file and folder marker below ``root`` (or its subfolder ``under``) with its stamp; the
    folders that could not be read (what lies below them is unknown, not absent); the time the
    scan started (``time.time_ns()``, the observation time of its stats).

    The walk of cli/tree.py without its per-file objects, so that an unchanged folder costs little
    more than its stats: one ``lstat`` per regular file, none per folder; symlinks, FIFOs and
    devices are left out.
    """
    started = time.time_ns()
    found: dict[str, Stamp] = {}
    unreadable: list[str] = []
    stack = [(os.path.join(root, under) if under else os.fspath(root), under)]
    match = ignores.match if ignores else None
    while stack:
        folder, rel_folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            unreadable.append(rel_folder)
            continue
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                if match is None or not match(rel, True):
                    stack.append((entry.path, rel))
                    found[marker_of(rel)] = FOLDER_STAMP
            elif entry.is_file(follow_symlinks=False) and (match is None or not match(rel, False)):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return found, unreadable, started


def below(rel: str, folders: list[str]) -> bool:
    """Whether ``rel`` lies in (or is the marker of) one of ``folders`` ("" is the root)."""
    return any(not f or rel.startswith(f + "/") for f in folders)


def look(root: Folder, rel: str) -> Local | None:
    """The current local state of one path (a file, or a folder for a marker path), never through a symlink.

    None when it is missing, a symlink, or anything but a regular file (a folder for a marker).
    """
    want_folder = is_folder_marker(rel)
    parts = (folder_of(rel) if want_folder else rel).split("/")
    try:
        with root.sub(parts[:-1], create=False) as parent:
            st = parent.lstat(parts[-1])
    except (FileNotFoundError, NotADirectoryError, UnsafeLocalPathError):
        return None
    if st is None:
        return None
    if want_folder:
        return FOLDER_LOCAL if stat.S_ISDIR(st.st_mode) else None
    return Local(fingerprint(st)) if stat.S_ISREG(st.st_mode) else None


def ignored(ignores: Excludes, rel: str) -> bool:
    """Whether a path (file or marker) is outside the sync by the rules."""
    if is_folder_marker(rel):
        folder = folder_of(rel)
        return not folder or ignores.excludes_file(folder) or ignores.match(folder, True)
    return ignores.excludes_file(rel)
