"""The sync's fast path: the lean scan (cli/syncscan.py) finds what cli/tree.walk finds, and the
settled stamps of the state (cli/syncstate.py ``known``) are exactly the paths the planner decides
"nothing" for."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from cli.syncplan import FOLDER, RACY_NS, Act, Base, Fingerprint, Local, Remote, decide, marker_of
from cli.syncscan import FOLDER_STAMP, load_ignores, scan, stamp_key
from cli.syncstate import STATE_DIR, SyncState
from cli.tree import walk

NOW = 1_000_000_000_000_000_000
OLD = NOW - 10_000_000_000


def _tree(root: Path) -> None:
    for rel in ("a.txt", "d/b.txt", "d/e/c.txt", "d/skip.log", "build/out.o", "d/.x.txt.svpart",
                f"{STATE_DIR}/state.sqlite3", "empty/.keep", "d/.stratusfolder"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "hollow").mkdir()
    (root / ".stratusignore").write_text("*.log\nbuild/\n")
    os.symlink(root / "a.txt", root / "link.txt")
    os.symlink(root / "d", root / "dlink")
    os.mkfifo(root / "d/fifo")


def test_scan_finds_what_the_walk_finds(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignores = load_ignores(tmp_path)
    found, unreadable, _ = scan(tmp_path, ignores)
    walked = walk(tmp_path, ignores)
    files = {f.rel: f.state for f in walked.files}
    assert unreadable == []
    assert {rel for rel, stamp in found.items() if stamp != FOLDER_STAMP} == set(files) == {
        "a.txt", "d/b.txt", "d/e/c.txt", "empty/.keep"}
    assert {rel for rel, stamp in found.items() if stamp == FOLDER_STAMP} == {marker_of(d) for d in walked.dirs} == {
        "d/.stratusfolder", "d/e/.stratusfolder", "empty/.stratusfolder", "hollow/.stratusfolder"}
    for rel, state in files.items():
        assert found[rel] == (state.size, state.mtime_ns, state.ctime_ns, state.inode)
    sub, _, _ = scan(tmp_path, ignores, "d")
    assert set(sub) == {"d/b.txt", "d/e/c.txt", "d/e/.stratusfolder"}


def test_settled_stamps_are_exactly_the_quiet_paths(tmp_path: Path) -> None:
    """Every combination of base trust, remote head and pending problem: ``known`` gives the base's
    stamp when, and only when, the planner decides "nothing" for an unchanged local file."""
    fp = Fingerprint(5, OLD, OLD, 42)
    bases = {"trusted": Base(3, "aa", fp, OLD + 10 * RACY_NS), "racy": Base(3, "aa", fp, OLD + RACY_NS // 2),
             "folder": Base(3, "aa", FOLDER, OLD)}
    remotes = {"none": None, "same": Remote(3, False, "aa"), "newer": Remote(4, False, "bb"),
               "deleted": Remote(4, True)}
    state = SyncState(tmp_path)
    expected: dict[str, bool] = {}
    try:
        with state.transaction():
            for (bname, base), (rname, remote), problem in itertools.product(bases.items(), remotes.items(),
                                                                            (False, True)):
                path = f"{bname}-{rname}-{problem}"
                state.set_base(path, base)
                if remote is not None:
                    state.note_remote(path, remote)
                if problem:
                    state.set_problem(path, "waiting", "still being written", NOW)
                quiet = decide(base, Local(base.fingerprint), remote, now_ns=NOW).act is Act.NOTHING
                expected[path] = quiet and not problem
            state.note_remote("remote-only", Remote(1, False, "cc"))
            state.note_remote("remote-gone", Remote(2, True))
        known = state.known(RACY_NS)
    finally:
        state.close()
    assert set(known) == set(expected) | {"remote-only"}
    assert known["remote-only"] is None
    assert any(expected.values()) and not all(expected.values())
    for path, quiet in expected.items():
        fp_of = bases[path.split("-")[0]].fingerprint
        stamp = (fp_of.size, fp_of.mtime_ns, fp_of.ctime_ns, fp_of.inode)
        assert (known[path] == stamp_key(stamp)) is quiet, path
