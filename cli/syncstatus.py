"""``stratus sync status``: what a synced folder has pending, in conflict or failing, from its state alone.

No server is asked: pending work is what the planner decides for the folder as it is now against
the remote heads last heard of (a running daemon keeps those current). Reading never takes the
folder's lock, so it works while a daemon runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.syncplan import Act, decide
from cli.syncscan import ignored, load_ignores, local_of, scan
from cli.syncstate import SyncState


@dataclass(frozen=True)
class Problem:
    """A path that failed (``kind`` as the exit-code kinds) or waits, and when it is tried again."""

    path: str
    kind: str
    message: str
    attempts: int
    next_ms: int


@dataclass
class SyncStatus:
    """The state of a synced folder."""

    prefix: str
    server: str
    namespace: str
    cursor: str
    synced: int = 0
    pending: list[tuple[str, str]] = field(default_factory=list)  # (path, action)
    conflicts: list[str] = field(default_factory=list)  # conflict copies present in the folder
    problems: list[Problem] = field(default_factory=list)


def status(root: Path) -> SyncStatus:
    """The status of the folder ``root`` (FileNotFoundError when it was never synced)."""
    state = SyncState.read_only(root)
    try:
        result = SyncStatus(state.meta("prefix") or "", state.meta("server") or "", state.meta("namespace") or "",
                            state.meta("cursor") or "")
        bases, remotes = state.bases(), state.remotes()
        rows = state.db.execute("SELECT path, kind, message, attempts, next_ns FROM problems ORDER BY path")
        result.problems = [Problem(p, k, m, a, n // 1_000_000) for p, k, m, a, n in rows]
    finally:
        state.close()
    ignores = load_ignores(root)
    stamps, _, _ = scan(root, ignores)
    found = {rel: local_of(stamp) for rel, stamp in stamps.items()}
    result.synced = len(bases)
    result.conflicts = sorted(rel for rel in found if ".sync-conflict-" in rel.rsplit("/", 1)[-1])
    now = time.time_ns()
    for rel in sorted({*bases, *found, *(r for r, h in remotes.items() if not h.deleted)}):
        if ignored(ignores, rel):
            continue
        act = decide(bases.get(rel), found.get(rel), remotes.get(rel), now_ns=now).act
        if act not in (Act.NOTHING, Act.REFRESH, Act.HASH):  # HASH: only a re-check of a racy fingerprint
            result.pending.append((rel, act.value))
    return result
