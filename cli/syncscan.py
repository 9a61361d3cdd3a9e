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
from cli.tree import Excludes, Skipped, walk

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


def scan(root: Path, ignores: Excludes, under: str = "") -> tuple[dict[str, Local], list[Skipped], int]:
    """Every file and folder marker below ``root`` (or its subfolder ``under``); also the skipped
    entries and the time the scan started (``time.time_ns()``, the observation time of its stats)."""
    started = time.time_ns()
    top = root / under if under else root
    found = walk(top, ignores, rel_root=under)
    entries = {f.rel: Local(fingerprint_of(f.state)) for f in found.files}
    entries.update((marker_of(d), FOLDER_LOCAL) for d in found.dirs)
    return entries, found.skipped, started


def fingerprint_of(state: object) -> Fingerprint:
    """The fingerprint of a cli.statecache.FileState."""
    return Fingerprint(state.size, state.mtime_ns, state.ctime_ns, state.inode)  # type: ignore[attr-defined]


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
