"""The sync planner's decision table (cli/syncplan.py), every row, plus conflict names."""

from __future__ import annotations

import pytest

from cli.syncplan import (
    EMPTY_DIGEST,
    FOLDER,
    SETTLE_NS,
    Act,
    Base,
    Fingerprint,
    Local,
    Remote,
    conflict_name,
    decide,
    folder_of,
    is_folder_marker,
    marker_of,
)

NOW = 1_000_000_000_000_000_000
OLD = NOW - 10_000_000_000  # ten seconds ago: settled, and a base observed then is trusted
FP = Fingerprint(5, OLD, OLD, 42)
FP2 = Fingerprint(6, OLD + 1, OLD + 1, 42)
BASE = Base(3, "aa", FP, OLD + 1_000_000_000)
SAME = Local(FP)
CHANGED = Local(FP2)
R_SAME = Remote(3, False, "aa")
R_NEW = Remote(4, False, "bb")
R_GONE = Remote(4, True)


@pytest.mark.parametrize(("base", "local", "remote", "act", "if_version"), [
    # nothing known on either side
    (None, None, None, Act.NOTHING, None),
    (None, None, R_GONE, Act.NOTHING, None),
    # new on one side
    (None, CHANGED, None, Act.UPLOAD, 0),
    (None, CHANGED, R_GONE, Act.UPLOAD, 4),  # over a delete marker: conditional on it
    (None, None, R_NEW, Act.DOWNLOAD, None),
    # unchanged locally
    (BASE, SAME, R_SAME, Act.NOTHING, None),
    (BASE, SAME, R_NEW, Act.DOWNLOAD, None),
    (BASE, SAME, R_GONE, Act.DELETE_LOCAL, None),
    (BASE, SAME, None, Act.DELETE_LOCAL, None),
    (BASE, SAME, Remote(5, False, "aa"), Act.RECORD, None),  # a new version with the agreed content
    # changed locally
    (BASE, CHANGED, R_SAME, Act.UPLOAD, 3),  # remote unchanged: the upload itself finds equal content
    (BASE, Local(FP2, "cc"), R_SAME, Act.UPLOAD, 3),
    (BASE, Local(FP2, "aa"), R_SAME, Act.REFRESH, None),  # touched, same content
    (BASE, Local(FP2, "cc"), R_GONE, Act.UPLOAD, 4),  # delete vs change: the change wins
    (BASE, Local(FP2, "cc"), R_NEW, Act.CONFLICT, None),
    (BASE, Local(FP2, "bb"), R_NEW, Act.RECORD, None),  # both made the same change
    (BASE, Local(FP2, "cc"), Remote(4, False, ""), Act.STAT, None),  # digest unknown (change feed)
    (BASE, CHANGED, R_NEW, Act.HASH, None),
    # deleted locally
    (BASE, None, R_SAME, Act.DELETE_REMOTE, 3),
    (BASE, None, R_NEW, Act.DOWNLOAD, None),  # delete vs change: the change wins
    (BASE, None, R_GONE, Act.FORGET, None),
    (BASE, None, None, Act.FORGET, None),
    # new on both sides
    (None, Local(FP2, "bb"), R_NEW, Act.RECORD, None),
    (None, Local(FP2, "cc"), R_NEW, Act.CONFLICT, None),
    (None, CHANGED, R_NEW, Act.HASH, None),
])
def test_decision_table(base, local, remote, act, if_version) -> None:
    decision = decide(base, local, remote, now_ns=NOW)
    assert decision.act is act
    assert decision.if_version == if_version


def test_racy_base_is_hashed_before_it_is_trusted() -> None:
    racy = Base(3, "aa", FP, FP.newest_ns + 1)  # observed in the same tick as the last write
    assert decide(racy, SAME, R_SAME, now_ns=NOW).act is Act.HASH
    assert decide(BASE, CHANGED, Remote(4, False, "aa"), now_ns=NOW).act is Act.HASH  # new version, same content
    assert decide(racy, Local(FP, "aa"), R_SAME, now_ns=NOW).act is Act.NOTHING
    assert decide(racy, Local(FP, "zz"), R_SAME, now_ns=NOW).act is Act.UPLOAD


def test_a_file_still_being_written_waits() -> None:
    fresh = Local(Fingerprint(9, NOW - SETTLE_NS // 2, NOW - SETTLE_NS // 2, 1))
    assert decide(None, fresh, None, now_ns=NOW).act is Act.WAIT
    assert decide(BASE, Local(fresh.fingerprint, "cc"), R_SAME, now_ns=NOW).act is Act.WAIT
    assert decide(None, fresh, None, now_ns=NOW + SETTLE_NS).act is Act.UPLOAD


def test_folders_never_conflict_and_never_wait() -> None:
    folder = Local(FOLDER, EMPTY_DIGEST)
    marker_base = Base(1, EMPTY_DIGEST, FOLDER, 0)
    assert decide(None, folder, None, now_ns=NOW).act is Act.UPLOAD
    assert decide(None, folder, Remote(2, False, EMPTY_DIGEST), now_ns=NOW).act is Act.RECORD
    assert decide(marker_base, folder, Remote(1, False, EMPTY_DIGEST), now_ns=NOW).act is Act.NOTHING
    assert decide(marker_base, folder, Remote(2, True), now_ns=NOW).act is Act.DELETE_LOCAL
    assert decide(marker_base, None, Remote(1, False, EMPTY_DIGEST), now_ns=NOW).act is Act.DELETE_REMOTE


def test_conflict_names_follow_syncthing() -> None:
    expected = "report.sync-conflict-20240501-120000-ABCDEFG.txt"
    assert conflict_name("report.txt", "20240501-120000", "ABCDEFG") == expected
    assert conflict_name("Makefile", "20240501-120000", "C") == "Makefile.sync-conflict-20240501-120000-C"
    assert conflict_name(".bashrc", "20240501-120000", "C") == ".bashrc.sync-conflict-20240501-120000-C"
    assert conflict_name("a.tar.gz", "20240501-120000", "C") == "a.tar.sync-conflict-20240501-120000-C.gz"


def test_folder_markers() -> None:
    assert marker_of("a/b") == "a/b/.stratusfolder"
    assert folder_of("a/b/.stratusfolder") == "a/b"
    assert is_folder_marker("a/.stratusfolder") and not is_folder_marker("a/x.stratusfolder")
