"""Directory trees: walking a local tree (excludes, symlinks, special files) and planning a restore.

Excludes are gitignore-ish globs matched against paths relative to the tree's root, with ``/``
as the separator whatever the platform:

* ``*.log``, ``node_modules``: no slash, so they match a name at any depth;
* ``build/*.o``, ``/dist``: a slash (leading or inside) anchors the pattern at the root;
* ``cache/``: a trailing slash matches directories only;
* ``*`` and ``?`` never cross a ``/``; ``**`` does (``docs/**/*.png``); ``[abc]``, ``[!abc]`` classes.

An excluded directory is not entered at all. Lines starting with ``#`` and empty patterns are ignored.

Symlinks are not followed unless asked (each one is reported as skipped, with the way to follow
it); a followed symlink that leads back into a directory being walked is reported as a loop.
FIFOs, sockets and devices are always skipped: reading them could block or have side effects.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cas.errors import IntegrityError, InvalidPathError
from cas.paths import normalize_path
from cli.results import Version
from cli.statecache import FileState


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)) > 0:
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    dir_only: bool


class Excludes:
    """A compiled list of exclude patterns (see the module docstring for the syntax)."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in patterns if p.strip() and not p.lstrip().startswith("#")]
        self._rules: list[_Rule] = []
        for raw in self.patterns:
            pattern = raw.strip().replace(os.sep, "/")
            dir_only = pattern.endswith("/")
            pattern = pattern.rstrip("/")
            anchored = "/" in pattern
            body = _glob_to_regex(pattern.lstrip("/"))
            regex = body if anchored else "(?:.*/)?" + body
            self._rules.append(_Rule(re.compile(regex, re.DOTALL), dir_only))
        # one alternation per kind of entry: a single fullmatch per path, however many rules
        self._any = _union(r.regex for r in self._rules)
        self._files = _union(r.regex for r in self._rules if not r.dir_only)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, rel: str, is_dir: bool) -> bool:
        """Whether the entry ``rel`` itself is excluded (its parents are not looked at)."""
        regex = self._any if is_dir else self._files
        return regex is not None and regex.fullmatch(rel) is not None

    def excludes_file(self, rel: str) -> bool:
        """Whether a file at ``rel`` would be excluded, by its own name or by any parent directory."""
        if not self._rules:
            return False
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if self.match("/".join(parts[:depth]), True):
                return True
        return self.match(rel, False)


def _union(regexes: Iterable[re.Pattern[str]]) -> re.Pattern[str] | None:
    bodies = [f"(?:{r.pattern})" for r in regexes]
    return re.compile("|".join(bodies), re.DOTALL) if bodies else None


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A regular file found by the walk."""

    rel: str  # relative to the root, '/'-separated
    path: str  # absolute local path
    state: FileState


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry the walk did not take, and why; ``error`` marks ones that make the run fail."""

    rel: str
    reason: str
    error: bool = False


@dataclass
class WalkResult:
    """Everything a walk found."""

    files: list[LocalFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    excluded: int = 0
    symlinks_skipped: int = 0
    dirs: list[str] = field(default_factory=list)  # relative paths of the folders entered (not the root)


def walk(
    root: str | os.PathLike[str], excludes: Excludes, *, follow_symlinks: bool = False, rel_root: str = ""
) -> WalkResult:
    """Walk the tree under ``root`` and stat every regular file once; files come sorted by path.

    ``rel_root``: the relative path of ``root`` itself inside a larger tree (a subtree of a synced
    folder); relative paths and exclude matching then start from there.
    """
    result = WalkResult()
    top = os.path.abspath(root)
    top_st = os.stat(top)
    # (directory path, its relative path, the (dev, ino) chain above it to detect symlink loops)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (top, rel_root, frozenset({(top_st.st_dev, top_st.st_ino)}))]
    while stack:
        folder, rel_folder, seen = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.skipped.append(Skipped(rel_folder or ".", f"cannot read directory: {exc.strerror}", error=True))
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            try:
                _visit(entry, rel, seen, excludes, follow_symlinks, result, subdirs)
            except OSError as exc:
                result.skipped.append(Skipped(rel, f"cannot stat: {exc.strerror}", error=True))
        stack.extend(reversed(subdirs))  # popped in name order
    result.files.sort(key=lambda f: f.rel)  # the order the server lists them in
    return result


def _visit(
    entry: os.DirEntry[str], rel: str, seen: frozenset[tuple[int, int]], excludes: Excludes,
    follow: bool, result: WalkResult, subdirs: list[tuple[str, str, frozenset[tuple[int, int]]]],
) -> None:
    if entry.is_symlink():
        if not follow:
            target = _readlink(entry.path)
            result.skipped.append(Skipped(rel, f"symlink to {target} (use --follow-symlinks to follow it)"))
            result.symlinks_skipped += 1
            return
        observed = time.time_ns()
        try:
            st = os.stat(entry.path)
        except FileNotFoundError:
            result.skipped.append(Skipped(rel, f"broken symlink to {_readlink(entry.path)}"))
            result.symlinks_skipped += 1
            return
    else:
        observed = time.time_ns()
        st = entry.stat(follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        if excludes and excludes.match(rel, True):
            result.excluded += 1
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            result.skipped.append(Skipped(rel, "symlink loop: leads back to a directory above it"))
            return
        subdirs.append((entry.path, rel, seen | {key}))
        result.dirs.append(rel)
    elif stat.S_ISREG(st.st_mode):
        if excludes and excludes.match(rel, False):
            result.excluded += 1
            return
        path = os.path.abspath(entry.path)
        result.files.append(LocalFile(rel, path, FileState.from_stat(path, st, observed)))
    else:
        result.skipped.append(Skipped(rel, "not a regular file (FIFO, socket or device)"))


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


# ---- remote side ----------------------------------------------------------------------------------


def remote_prefix(remote: str) -> str:
    """The listing prefix for a remote directory: ``docs`` -> ``docs/``; ``""``, ``/``, ``.`` -> root."""
    stripped = remote.strip("/")
    if stripped in ("", "."):
        return ""
    return stripped + "/"


def remote_join(prefix: str, rel: str) -> str:
    """The normalised remote path of ``rel`` under ``prefix``; InvalidPathError if it is not a valid path."""
    return normalize_path(prefix + rel)


@dataclass(frozen=True, slots=True)
class RestoreItem:
    """One file of a restore: the version to fetch and where it goes."""

    info: Version
    dest: Path


@dataclass
class RestorePlan:
    """Files to restore, plus remote paths that cannot be written (a file that is also a folder)."""

    items: list[RestoreItem] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (remote path, reason)


def plan_restore(files: Sequence[Version], prefix: str, root: str | os.PathLike[str]) -> RestorePlan:
    """Map listed files to local paths under ``root``.

    Every listed path must lie under ``prefix`` and be a valid relative path: a listing that would
    write outside ``root`` raises IntegrityError (a server never sends one; a hostile one might).
    """
    plan = RestorePlan()
    base = Path(root)
    folders: set[str] = set()
    for info in files:
        parts = info.path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for info in files:
        if not info.path.startswith(prefix):
            raise IntegrityError(f"the server listed {info.path!r}, which is not under {prefix!r}")
        rel = info.path[len(prefix):]
        try:
            if normalize_path(rel) != rel:
                raise InvalidPathError(rel)
        except InvalidPathError:
            raise IntegrityError(f"the server listed an unsafe path {info.path!r}") from None
        if info.path in folders:
            plan.conflicts.append((info.path, "is both a file and a folder on the server; the folder wins"))
            continue
        plan.items.append(RestoreItem(info, base.joinpath(*rel.split("/"))))
    return plan
