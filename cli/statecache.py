"""Local state cache: lets ``put`` skip files that have not changed since they were last uploaded.

For every (server, namespace, remote path) it remembers which local file was last uploaded (or
downloaded) there, that file's size, mtime, ctime, inode and device as seen just before it was
read, and the version and manifest digest that resulted. A later run skips a file without reading
it when all of that still matches *and* the server's head is still that version, the way restic
and borg use their files caches.

Two rules keep a skip from ever hiding a change:

* ctime is part of the key: it changes on every write, chmod and rename, and cannot be set back
  by ``touch -d`` the way mtime can;
* "racy" entries are never trusted: if the file's timestamps are not clearly older than the
  moment its stat was taken, a write in the same clock tick could leave every field equal, so
  such a file is read again next time (after which its entry is old enough to be trusted).

The cache is only a hint: deleting it costs a re-read of every file, never correctness.
SQLite in WAL mode, one row per remote path; concurrent ``stratus`` processes may share it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
FILE_NAME = "state-v1.sqlite3"
# How much older than the stat a timestamp must be to rule out a same-tick write.
RACY_NS_FINE = 100_000_000  # file systems with sub-second timestamps (clock ticks are <= 10 ms)
RACY_NS_COARSE = 2_000_000_000  # whole-second (or FAT's two-second) timestamps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    server TEXT NOT NULL,
    namespace TEXT NOT NULL,
    remote_path TEXT NOT NULL,
    local_path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    observed_ns INTEGER NOT NULL,
    version INTEGER NOT NULL,
    manifest_digest BLOB NOT NULL,
    PRIMARY KEY (server, namespace, remote_path)
) WITHOUT ROWID
"""
_COLUMNS = ("local_path, size, mtime_ns, ctime_ns, inode, device, observed_ns, version, manifest_digest, "
            "remote_path")


@dataclass(frozen=True, slots=True)
class FileState:
    """What a local file looked like when it was read (``observed_ns``: when the stat was taken)."""

    local_path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    observed_ns: int

    @classmethod
    def from_stat(cls, local_path: str, st: os.stat_result, observed_ns: int) -> FileState:
        """Build from an ``os.stat_result``; take ``observed_ns = time.time_ns()`` *before* the stat."""
        return cls(local_path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, observed_ns)

    def same_file(self, other: FileState) -> bool:
        """Same path, size, timestamps and identity (the observation time does not count)."""
        return (self.local_path, self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device) == (
            other.local_path, other.size, other.mtime_ns, other.ctime_ns, other.inode, other.device)

    @property
    def trusted(self) -> bool:
        """False for a racy observation (see the module docstring)."""
        newest = max(self.mtime_ns, self.ctime_ns)
        whole_seconds = self.mtime_ns % 1_000_000_000 == 0 and self.ctime_ns % 1_000_000_000 == 0
        margin = RACY_NS_COARSE if whole_seconds else RACY_NS_FINE
        return newest + margin < self.observed_ns


@dataclass(frozen=True, slots=True)
class Entry:
    """A cache row: the local file's state and the remote version it corresponds to."""

    remote_path: str
    state: FileState
    version: int
    manifest_digest: bytes

    def matches(self, current: FileState, head_version: int, head_manifest: bytes) -> bool:
        """True when the file can be skipped: unchanged, trusted, and still the server's head."""
        return (
            self.state.trusted
            and self.state.same_file(current)
            and self.version == head_version
            and self.manifest_digest == head_manifest
        )


def _prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """[low, high) bounds of the strings that start with ``prefix`` (high None: unbounded)."""
    if not prefix:
        return "", None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class StateCache:
    """The SQLite-backed cache; safe to use from several threads (one connection, a lock).

    Best effort by design: when the database cannot be opened or written (read-only home, disk
    full, locked for too long) the cache answers "nothing known" and records the reason in
    :attr:`problem`; a transfer never fails because of it, it only reads more.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except sqlite3.OperationalError:
                raise  # locked or unreadable: not a reason to throw the file away
            except sqlite3.DatabaseError:
                # A damaged cache is only lost speed: start a new one.
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            self.problem = f"cannot open {self.path}: {exc}"

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS files")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @staticmethod
    def _entry(row: tuple) -> Entry:
        state = FileState(row[0], row[1], row[2], row[3], row[4], row[5], row[6])
        return Entry(row[9], state, row[7], bytes(row[8]))

    def _rows(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            if self._db is None:
                return []
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self.problem = f"cannot read {self.path}: {exc}"
                return []

    def get(self, server: str, namespace: str, remote_path: str) -> Entry | None:
        """The entry of one remote path, if any."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM files WHERE server=? AND namespace=? AND remote_path=?",
                          (server, namespace, remote_path))
        return self._entry(rows[0]) if rows else None

    def under(self, server: str, namespace: str, prefix: str) -> dict[str, Entry]:
        """Every entry whose remote path starts with ``prefix``, by remote path (one query)."""
        low, high = _prefix_bounds(prefix)
        sql = f"SELECT {_COLUMNS} FROM files WHERE server=? AND namespace=? AND remote_path>=?"
        args: tuple = (server, namespace, low)
        if high is not None:
            sql += " AND remote_path<?"
            args += (high,)
        return {row[9]: self._entry(row) for row in self._rows(sql, args)}

    def put_many(self, server: str, namespace: str, entries: Iterable[Entry]) -> None:
        """Insert or replace entries in one transaction."""
        rows = [
            (server, namespace, e.remote_path, e.state.local_path, e.state.size, e.state.mtime_ns,
             e.state.ctime_ns, e.state.inode, e.state.device, e.state.observed_ns, e.version, e.manifest_digest)
            for e in entries
        ]
        self._write("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def forget(self, server: str, namespace: str, remote_paths: Iterable[str]) -> None:
        """Drop the entries of these remote paths (after a delete, for instance)."""
        rows = [(server, namespace, p) for p in remote_paths]
        self._write("DELETE FROM files WHERE server=? AND namespace=? AND remote_path=?", rows)

    def _write(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.problem = f"cannot write {self.path}: {exc}"


def observe(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> tuple[os.stat_result, FileState]:
    """stat a file now and return (stat, FileState) with the observation time taken before the stat."""
    observed = time.time_ns()
    st = os.stat(path, follow_symlinks=follow_symlinks)
    return st, FileState.from_stat(os.fspath(path), st, observed)


@dataclass(frozen=True)
class CacheScope:
    """The cache as one (server, namespace) sees it: what a transfer reads and records."""

    cache: StateCache
    server: str
    namespace: str

    def get(self, remote_path: str) -> Entry | None:
        """The entry of one remote path, if any."""
        return self.cache.get(self.server, self.namespace, remote_path)

    def under(self, prefix: str) -> dict[str, Entry]:
        """Every entry under ``prefix``, by remote path."""
        return self.cache.under(self.server, self.namespace, prefix)

    def put_many(self, entries: Iterable[Entry]) -> None:
        """Record entries (one transaction)."""
        self.cache.put_many(self.server, self.namespace, entries)

    def forget(self, remote_paths: Iterable[str]) -> None:
        """Drop the entries of these remote paths."""
        self.cache.forget(self.server, self.namespace, remote_paths)
