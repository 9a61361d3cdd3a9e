"""The sync state of one folder: SQLite in ``LOCAL_DIR/.stratus-sync/state.sqlite3``.

Tables (paths are relative to the folder and to the remote prefix, ``/``-separated):

* ``base``: per path, the version both sides last agreed on, its content digest, and the local
  fingerprint (size, mtime, ctime, inode) observed at that moment (cli/syncplan.py ``Base``);
* ``remote``: per path, the newest remote head this client has heard of (listing or change feed);
* ``meta``: the change-feed ``cursor`` up to which ``remote`` is complete, the server, namespace and
  prefix the folder syncs with, and this folder's client id (used in conflict names);
* ``problems``: paths that failed or wait (``sync status`` shows them), with the next retry time.

Invariants: ``remote`` and ``cursor`` change in one transaction, so after a crash the cursor never
claims events that ``remote`` lacks; a remote head is only ever replaced by a newer version. A base
row is written after the action it records is durable (the rename or the commit), so a crash
leaves at worst an action that is recognised as done ("same content on both sides") on restart.
WAL mode with synchronous=NORMAL: a lost tail after a power cut only forgets agreements, which
the same rule re-establishes. One engine per folder at a time (an flock on ``lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from cli.errors import UsageError
from cli.syncplan import Base, Fingerprint, Remote

STATE_DIR = ".stratus-sync"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS base (path TEXT PRIMARY KEY, version INTEGER NOT NULL, digest TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    observed_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS remote (path TEXT PRIMARY KEY, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
    digest TEXT NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS problems (path TEXT PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_ns INTEGER NOT NULL) WITHOUT ROWID;
"""


def _base(row: tuple) -> Base:
    return Base(row[0], row[1], Fingerprint(row[2], row[3], row[4], row[5]), row[6])


def _upper(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class SyncState:
    """The state database of one folder (one connection, used from the engine's thread only)."""

    def __init__(self, root: Path) -> None:
        folder = root / STATE_DIR
        folder.mkdir(exist_ok=True)
        self._lock = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise UsageError(f"another sync is running on {root} (one at a time per folder)") from None
        self.db = sqlite3.connect(folder / "state.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    @classmethod
    def read_only(cls, root: Path) -> SyncState:
        """The state opened for reading only, without the lock (``sync status`` while a daemon runs)."""
        path = root / STATE_DIR / "state.sqlite3"
        if not path.exists():
            raise FileNotFoundError(2, "no sync state here (run `stratus sync LOCAL_DIR REMOTE_PREFIX` first)",
                                    str(root))
        state = cls.__new__(cls)
        state._lock = -1
        state.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        return state

    def close(self) -> None:
        """Close the database and release the folder's lock."""
        self.db.close()
        if self._lock >= 0:
            os.close(self._lock)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write (BEGIN IMMEDIATE ... COMMIT)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- meta -----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A meta value (None when unset)."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bind(self, server: str, namespace: str, prefix: str) -> None:
        """Remember what the folder syncs with; UsageError when it already syncs with something else."""
        want = {"server": server, "namespace": namespace, "prefix": prefix}
        have = {k: self.meta(k) for k in want}
        if all(v is None for v in have.values()):
            with self.transaction():
                for k, v in want.items():
                    self.set_meta(k, v)
            return
        if have["namespace"] != namespace or have["prefix"] != prefix:
            raise UsageError(
                f"this folder syncs with {have['prefix'] or '/'} in namespace {have['namespace']}; "
                f"remove its {STATE_DIR} folder to sync it with something else")
        if have["server"] != server:  # another address of the same store: its cursor may not apply
            with self.transaction():
                self.set_meta("server", server)
                self.db.execute("DELETE FROM meta WHERE key='cursor'")

    def client_id(self) -> str:
        """This folder's short client id (7 characters, made once), as Syncthing's device ids in conflict names."""
        value = self.meta("client_id")
        if value is None:
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            value = "".join(secrets.choice(alphabet) for _ in range(7))
            with self.transaction():
                self.set_meta("client_id", value)
        return value

    # ---- base -----------------------------------------------------------------------------------

    def bases(self, prefix: str = "") -> dict[str, Base]:
        """Every base row (under ``prefix``)."""
        sql = "SELECT path, version, digest, size, mtime_ns, ctime_ns, inode, observed_ns FROM base"
        if prefix:
            rows = self.db.execute(sql + " WHERE path >= ? AND path < ?", (prefix, _upper(prefix)))
        else:
            rows = self.db.execute(sql)
        return {r[0]: _base(r[1:]) for r in rows}

    def known(self, racy_ns: int) -> dict[str, str | None]:
        """Every path with a base or a live remote head, in one query; for a *settled* one the stamp
        of its base as ``"size mtime_ns ctime_ns inode"`` (cli/syncscan.py ``stamp_key``), else None.

        Settled: the remote head is the agreed version, the base fingerprint is trusted (observed
        more than ``racy_ns`` after its mtime, or a folder's) and no problem waits. The planner
        decides "nothing" for a settled path whose scanned stamp equals this one (cli/syncplan.py),
        so a full pass skips it without building its Base, Local and Remote.
        """
        return dict(self.db.execute(
            "SELECT b.path, CASE WHEN r.version = b.version AND r.deleted = 0 "
            "AND (b.mtime_ns + ? < b.observed_ns OR (b.size = 0 AND b.mtime_ns = 0 AND b.ctime_ns = 0 "
            "AND b.inode = 0)) AND NOT EXISTS (SELECT 1 FROM problems p WHERE p.path = b.path) "
            "THEN b.size || ' ' || b.mtime_ns || ' ' || b.ctime_ns || ' ' || b.inode END "
            "FROM base b LEFT JOIN remote r ON r.path = b.path "
            "UNION ALL SELECT r.path, NULL FROM remote r WHERE r.deleted = 0 "
            "AND NOT EXISTS (SELECT 1 FROM base b WHERE b.path = r.path)", (racy_ns,)))

    def base(self, path: str) -> Base | None:
        """The base of one path."""
        row = self.db.execute("SELECT version, digest, size, mtime_ns, ctime_ns, inode, observed_ns FROM base "
                              "WHERE path=?", (path,)).fetchone()
        return _base(row) if row else None

    def set_base(self, path: str, base: Base) -> None:
        """Record an agreement (after the action it records is durable)."""
        fp = base.fingerprint
        self.db.execute("INSERT OR REPLACE INTO base VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (path, base.version, base.digest, fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode,
                         base.observed_ns))

    def forget(self, path: str) -> None:
        """Drop the base of a path (both sides are gone, or it must be decided afresh)."""
        self.db.execute("DELETE FROM base WHERE path=?", (path,))

    # ---- remote ---------------------------------------------------------------------------------

    def remotes(self, prefix: str = "") -> dict[str, Remote]:
        """Every known remote head (under ``prefix``)."""
        sql = "SELECT path, version, deleted, digest, size FROM remote"
        if prefix:
            rows = self.db.execute(sql + " WHERE path >= ? AND path < ?", (prefix, _upper(prefix)))
        else:
            rows = self.db.execute(sql)
        return {r[0]: Remote(r[1], bool(r[2]), r[3], r[4]) for r in rows}

    def remote(self, path: str) -> Remote | None:
        """The known remote head of one path."""
        row = self.db.execute("SELECT version, deleted, digest, size FROM remote WHERE path=?", (path,)).fetchone()
        return Remote(row[0], bool(row[1]), row[2], row[3]) if row else None

    def note_remote(self, path: str, head: Remote) -> bool:
        """Store a remote head unless a newer (or the same, with a digest) one is known; True when stored."""
        old = self.remote(path)
        if old is not None and (old.version > head.version or (old.version == head.version and
                                                               (old.digest or not head.digest))):
            return False
        self.db.execute("INSERT OR REPLACE INTO remote VALUES (?, ?, ?, ?, ?)",
                        (path, head.version, int(head.deleted), head.digest, head.size))
        return True

    def apply_events(self, heads: Iterable[tuple[str, Remote]], cursor: str) -> list[str]:
        """Apply change-feed heads and move the cursor, atomically; the paths whose head changed."""
        changed = []
        with self.transaction():
            for path, head in heads:
                if self.note_remote(path, head):
                    changed.append(path)
            if cursor:
                self.set_meta("cursor", cursor)
        return changed

    # ---- problems -------------------------------------------------------------------------------

    def set_problem(self, path: str, kind: str, message: str, next_ns: int) -> int:
        """Record that ``path`` failed or waits; returns how many times in a row it has."""
        row = self.db.execute("SELECT attempts FROM problems WHERE path=?", (path,)).fetchone()
        attempts = (row[0] if row else 0) + 1
        self.db.execute("INSERT OR REPLACE INTO problems VALUES (?, ?, ?, ?, ?)",
                        (path, kind, message, attempts, next_ns))
        return attempts

    def clear_problem(self, path: str) -> None:
        """The path is fine again."""
        self.db.execute("DELETE FROM problems WHERE path=?", (path,))

    def due_problems(self, now_ns: int) -> list[str]:
        """Paths whose retry time has come."""
        return [r[0] for r in self.db.execute("SELECT path FROM problems WHERE next_ns <= ?", (now_ns,))]

    def next_retry_ns(self) -> int | None:
        """The earliest retry time (None: nothing to retry)."""
        row = self.db.execute("SELECT MIN(next_ns) FROM problems").fetchone()
        return row[0] if row and row[0] is not None else None
