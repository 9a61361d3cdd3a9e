"""The two-way reconciliation of one path: pure decisions, no I/O (the sync engine's planner).

For every path the sync state holds the *base*: the version both sides last agreed on, its
content digest and the local file's fingerprint at that moment. Each side is compared with the
base, never with the other side, which is what tells "changed here" from "changed there":

=============  ==================  ==================  =====================================
local          remote unchanged    remote changed      remote deleted (or never there)
=============  ==================  ==================  =====================================
unchanged      nothing             download            delete locally
changed        upload (if_version  same content:       upload (the change wins)
               = base version)     record; else
                                   conflict copy
deleted        delete remotely     download (the       forget the base
               (if_version = base) change wins)
=============  ==================  ==================  =====================================

A path without a base is "changed" (new) on whichever side has it. "Conflict" keeps both: the
remote version keeps the name, the local file is renamed ``NAME.sync-conflict-DATE-TIME-CLIENT.EXT``
and uploaded as a new file on the next pass. A local file whose fingerprint equals the base but
was observed too close to its own modification time (a same-tick write could hide) is hashed
before it is trusted (``HASH``), as is a changed local file that might hold what the remote holds
(one whose remote side is unchanged is uploaded directly: equal content commits nothing);
a remote head known only from the change feed has no content digest, so ``STAT`` asks for it.
A local file modified within :data:`SETTLE_NS` is still being written: ``WAIT`` retries it later.

Invariants: no decision overwrites or deletes a side that changed since the base (an upload is
conditional on the version the decision saw, a local write or delete re-checks the fingerprint
first); and after a crash at any point the table converges without re-sending content, because a
transfer that finished but was not recorded shows up as "changed on both sides with the same
content", which is recorded, not transferred.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cas.digest import digest as blake3_digest

FOLDER_MARKER = ".stratusfolder"  # remote stand-in for a folder: NAME/.stratusfolder, empty
EMPTY_DIGEST = blake3_digest(b"").hex()
SETTLE_NS = 200_000_000  # a file modified more recently than this is still being written
RACY_NS = 100_000_000  # a base observed closer than this to the file's mtime/ctime is hashed again


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies a local file's content without reading it (a folder: all zero)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @property
    def newest_ns(self) -> int:
        """The later of mtime and ctime."""
        return max(self.mtime_ns, self.ctime_ns)


FOLDER = Fingerprint(0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Base:
    """The last agreed state of a path: remote version, content digest (hex), local fingerprint."""

    version: int
    digest: str
    fingerprint: Fingerprint
    observed_ns: int  # when the fingerprint was taken

    @property
    def trusted(self) -> bool:
        """False when a write in the same clock tick as the observation could hide behind the fingerprint.

        Only mtime counts: every write sets it to the current time, so once it is clearly older than
        the observation a later write cannot leave it equal (a rename or chmod moves ctime, not the
        content, so a file just downloaded and renamed in place is trusted at once).
        """
        if self.fingerprint == FOLDER:
            return True
        return self.fingerprint.mtime_ns + RACY_NS < self.observed_ns


@dataclass(frozen=True, slots=True)
class Local:
    """A regular file (or a folder's marker) present locally; ``digest`` when it has been hashed."""

    fingerprint: Fingerprint
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class Remote:
    """The remote head of a path: version, delete marker or not, content digest ("" when unknown)."""

    version: int
    deleted: bool
    digest: str = ""
    size: int = 0


class Act(Enum):
    """What to do with one path."""

    NOTHING = "nothing"
    FORGET = "forget"  # both sides gone: drop the base
    RECORD = "record"  # both sides hold the same content: the remote version becomes the base
    REFRESH = "refresh"  # unchanged content, new fingerprint (touched): store the new fingerprint
    HASH = "hash"  # the local digest decides: hash the file, then decide again
    STAT = "stat"  # the remote digest decides (the change feed does not carry it): ask, then decide again
    WAIT = "wait"  # the local file is still being written: decide again later
    UPLOAD = "upload"
    DOWNLOAD = "download"
    DELETE_LOCAL = "delete_local"
    DELETE_REMOTE = "delete_remote"
    CONFLICT = "conflict"  # rename the local file to a conflict copy, then download


@dataclass(frozen=True, slots=True)
class Decision:
    """An action and, for uploads and remote deletes, the version the remote head must still be."""

    act: Act
    if_version: int | None = None


_NOTHING = Decision(Act.NOTHING)


def _local_side(base: Base | None, local: Local | None) -> str:
    """'absent', 'same', 'changed' or 'unknown' (needs hashing) relative to the base."""
    if local is None:
        return "absent"
    if base is None:
        return "changed"
    if local.digest is not None:
        return "same" if local.digest == base.digest else "changed"
    if local.fingerprint == base.fingerprint and base.trusted:
        return "same"
    return "unknown"


def _remote_side(base: Base | None, remote: Remote | None) -> str:
    """'absent', 'same' or 'changed' relative to the base (a delete marker counts as absent)."""
    if remote is None or remote.deleted:
        return "absent"
    if base is None:
        return "changed"
    if remote.version == base.version or (remote.digest and remote.digest == base.digest):
        return "same"
    return "changed"


def decide(base: Base | None, local: Local | None, remote: Remote | None, *, now_ns: int) -> Decision:
    """The decision for one path (see the module docstring for the table)."""
    lside, rside = _local_side(base, local), _remote_side(base, remote)
    if lside == "unknown" and not _upload_decides(base, local, remote):
        return Decision(Act.HASH)
    if lside == "unknown":
        lside = "changed"  # the upload finds out: equal content commits nothing and is only recorded
    if lside == "changed" and local is not None and local.fingerprint.newest_ns + SETTLE_NS > now_ns:
        return Decision(Act.WAIT)
    if lside == "absent":
        return _local_absent(base, remote, rside)
    if lside == "same":
        return _local_same(base, local, remote, rside)
    return _local_changed(local, remote, rside)


def _upload_decides(base: Base | None, local: Local | None, remote: Remote | None) -> bool:
    """A file whose fingerprint changed while the remote head is still the agreed version needs no
    hashing first: uploading it reads it once, and the server commits nothing for equal content."""
    return (base is not None and local is not None and remote is not None and not remote.deleted
            and remote.version == base.version and local.fingerprint != base.fingerprint)


def _local_absent(base: Base | None, remote: Remote | None, rside: str) -> Decision:
    if rside == "absent":
        return Decision(Act.FORGET) if base is not None else _NOTHING
    if rside == "same":
        assert base is not None and remote is not None
        return Decision(Act.DELETE_REMOTE, remote.version)
    return Decision(Act.DOWNLOAD)


def _local_same(base: Base | None, local: Local | None, remote: Remote | None, rside: str) -> Decision:
    assert base is not None and local is not None
    if rside == "absent":
        return Decision(Act.DELETE_LOCAL)
    if rside == "changed":
        return Decision(Act.DOWNLOAD)
    assert remote is not None
    if remote.version != base.version:
        return Decision(Act.RECORD)  # a new remote version with the agreed content
    if local.fingerprint != base.fingerprint:
        return Decision(Act.REFRESH)
    return _NOTHING


def _local_changed(local: Local | None, remote: Remote | None, rside: str) -> Decision:
    assert local is not None
    if rside == "absent":
        return Decision(Act.UPLOAD, remote.version if remote is not None else 0)
    assert remote is not None
    if rside == "same":
        return Decision(Act.UPLOAD, remote.version)
    if local.digest is None:
        return Decision(Act.HASH)
    if remote.digest and local.digest == remote.digest:
        return Decision(Act.RECORD)
    if not remote.digest:
        return Decision(Act.STAT)
    return Decision(Act.CONFLICT)


def conflict_name(name: str, stamp: str, client: str) -> str:
    """``report.txt`` -> ``report.sync-conflict-20240501-120000-CLIENT.txt`` (Syncthing's form).

    ``stamp`` is ``YYYYMMDD-HHMMSS``; a name without an extension (or a dotfile) gets the suffix at the end.
    """
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    return f"{stem}.sync-conflict-{stamp}-{client}{ext}"


def is_folder_marker(rel: str) -> bool:
    """Whether ``rel`` names a folder's marker (``a/b/.stratusfolder``)."""
    return rel == FOLDER_MARKER or rel.endswith("/" + FOLDER_MARKER)


def marker_of(folder_rel: str) -> str:
    """The marker path of folder ``folder_rel``."""
    return f"{folder_rel}/{FOLDER_MARKER}"


def folder_of(marker_rel: str) -> str:
    """The folder a marker path stands for."""
    return marker_rel[: -len(FOLDER_MARKER) - 1]
