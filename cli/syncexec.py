"""The sync executor: carries out one planner decision for one path, on disk and on the server.

Every local step is relative to the folder's fds, opened without following symlinks
(cli/localdir.py), and checks first that the local entry is still what the planner saw:

* a download is written to a temp file, verified, fsynced and renamed in place only if the
  destination still has the fingerprint seen at scan time (or is still absent): a file edited
  meanwhile is never clobbered (:class:`LocalChangedError`, decided again later);
* an upload reads the file through an fd opened with O_NOFOLLOW and, before the commit, checks that
  neither the fd nor the name changed while it was read (a file still being written is not
  committed half-written); the commit carries ``if_version``, so a concurrent remote writer is
  detected (VersionConflictError), never overwritten;
* a local delete removes the file only if it still has the base fingerprint; a folder is removed
  only when empty;
* a conflict renames the local file to its conflict name (never over an existing name) and then
  downloads the remote version into the freed name; the conflict copy is uploaded as a new file
  by the next pass.

Each function returns a :class:`Done`: the new base to record (or None to forget it), the remote
head it learned, and byte counts. The engine records it; nothing here touches the state.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cas.errors import CasError, LocalChangedError
from cli.client import StratusClient
from cli.grouping import SMALL_FILE_MAX
from cli.lazy import lazy
from cli.localdir import Folder, LocalTarget
from cli.results import Version
from cli.syncplan import (
    EMPTY_DIGEST,
    FOLDER,
    Base,
    Fingerprint,
    Local,
    Remote,
    conflict_name,
    folder_of,
    is_folder_marker,
)
from cli.syncremote import head_of_version
from cli.syncscan import fingerprint

if TYPE_CHECKING:
    from cli import upload as _upload
    from cli.download import get_files
    from cli.smallfiles import Buffer, upload_buffers
else:  # the transfer machinery loads with the first transfer: an unchanged sync never needs it
    _upload = lazy("cli.upload")
    get_files = lazy("cli.download", "get_files")
    Buffer = lazy("cli.smallfiles", "Buffer")
    upload_buffers = lazy("cli.smallfiles", "upload_buffers")


@dataclass
class Done:
    """The result of one action on one path."""

    rel: str
    action: str
    base: Base | None = None  # the agreement to record; None with ``forget`` drops it
    forget: bool = False
    remote: Remote | None = None  # the remote head the action produced or saw
    bytes_sent: int = 0
    bytes_fetched: int = 0
    detail: str = ""  # e.g. the conflict copy's name
    extra: list[str] = field(default_factory=list)  # more paths to decide again (a conflict copy)


def _split(rel: str) -> tuple[list[str], str]:
    parts = rel.split("/")
    return parts[:-1], parts[-1]


def _same(st: os.stat_result | None, expected: Fingerprint | None) -> bool:
    if expected is None:
        return st is None
    return st is not None and fingerprint(st) == expected


def _expect(expected: Fingerprint | None, rel: str) -> object:
    def check(folder: Folder, name: str) -> None:
        if not _same(folder.lstat(name), expected):
            raise LocalChangedError(f"{rel} changed locally while it was being synced; it is looked at again")
    return check


class Executor:
    """Runs actions for one folder (``root``, an open fd) and one remote prefix; thread-safe per path."""

    def __init__(self, client: StratusClient, root: Folder, prefix: str, client_id: str) -> None:
        self.client, self.root, self.prefix, self.client_id = client, root, prefix, client_id

    def remote_path(self, rel: str) -> str:
        """The remote path of a relative path."""
        return self.prefix + rel

    # ---- upload ---------------------------------------------------------------------------------

    def upload(self, rel: str, local: Local, if_version: int) -> Done:
        """Upload the local file (or a folder's empty marker) if the remote head is still ``if_version``."""
        if is_folder_marker(rel):
            return self._upload_marker(rel, if_version)
        parts, name = _split(rel)
        with self.root.sub(parts, create=False) as folder:
            fd = folder.open_regular(name)
            if fd is None:
                raise LocalChangedError(f"{rel} is gone or no longer a regular file")
            observed = time.time_ns()
            with os.fdopen(fd, "rb") as stream:
                st = os.fstat(fd)
                if fingerprint(st) != local.fingerprint:
                    raise LocalChangedError(f"{rel} changed since it was scanned; it is looked at again")

                def unchanged() -> None:
                    if fingerprint(os.fstat(fd)) != local.fingerprint or not _same(folder.lstat(name),
                                                                                   local.fingerprint):
                        raise LocalChangedError(f"{rel} changed while it was read (still being written?)")

                def rewind() -> object:
                    stream.seek(0)
                    return stream

                source = _upload.Source(stream, st.st_size, rewind)  # type: ignore[arg-type]
                outcome = _upload.upload(
                    self.client.remote, source, self.remote_path(rel), local=str(folder.path / name),
                    if_version=if_version, mode=st.st_mode & 0o777, mtime_ns=st.st_mtime_ns,
                    cache=self.client.manifests, before_commit=unchanged)
        assert outcome.version is not None
        version = outcome.version
        base = Base(version.version, version.file_digest, local.fingerprint, observed)
        return Done(rel, "record" if outcome.unchanged else "upload", base, remote=head_of_version(version),
                    bytes_sent=outcome.bytes_sent)

    def upload_small(self, items: list[tuple[str, Local, int]]) -> list[Done | BaseException]:
        """Upload small files and folder markers as one group (one FindMissingChunks, PutChunks and
        CommitFiles); each is read whole, checked unchanged after the read, and committed with its own
        ``if_version``. Per item its result or its error."""
        out: list[Done | BaseException | None] = [None] * len(items)
        buffers, where, observed = [], [], time.time_ns()
        for i, (rel, local, if_version) in enumerate(items):
            try:
                buffers.append(self._buffer(rel, local, if_version))
                where.append(i)
            except (OSError, CasError) as exc:
                out[i] = exc
        outcomes = upload_buffers(self.client.remote, buffers, cache=self.client.manifests) if buffers else []
        for i, outcome in zip(where, outcomes, strict=True):
            rel, local, _ = items[i]
            if outcome.error is not None or outcome.version is None:
                out[i] = outcome.error or LocalChangedError(f"{rel}: not committed")
                continue
            v = outcome.version
            base = Base(v.version, v.file_digest, local.fingerprint, observed)
            out[i] = Done(rel, "record" if outcome.unchanged else "upload", base, remote=head_of_version(v),
                          bytes_sent=outcome.bytes_sent)
        return out  # type: ignore[return-value]

    def _buffer(self, rel: str, local: Local, if_version: int) -> Buffer:
        """A small file (or a folder's empty marker) read into memory, unchanged since the scan."""
        if is_folder_marker(rel):
            return Buffer(rel, self.remote_path(rel), b"", 0o644, 0, if_version)
        parts, name = _split(rel)
        with self.root.sub(parts, create=False) as folder:
            fd = folder.open_regular(name)
            if fd is None:
                raise LocalChangedError(f"{rel} is gone or no longer a regular file")
            with os.fdopen(fd, "rb") as stream:
                st = os.fstat(fd)
                data = stream.read(SMALL_FILE_MAX + 1)
                after = folder.lstat(name)
        if fingerprint(st) != local.fingerprint \
                or not _same(after, local.fingerprint) or len(data) != st.st_size:
            raise LocalChangedError(f"{rel} changed while it was read (still being written?)")
        return Buffer(str(folder.path / name), self.remote_path(rel), data, st.st_mode & 0o777, st.st_mtime_ns,
                      if_version)

    def _upload_marker(self, rel: str, if_version: int) -> Done:
        info = self.client.put_bytes(b"", self.remote_path(rel), if_version=if_version, mode=0o644)
        version = info.version
        assert version is not None
        return Done(rel, "upload", Base(version.version, EMPTY_DIGEST, FOLDER, time.time_ns()),
                    remote=head_of_version(version))

    # ---- download -------------------------------------------------------------------------------

    def download(self, items: list[tuple[str, Remote, Local | None]]) -> list[Done | BaseException]:
        """Download several remote heads (a group: one manifest call, one chunk fetch), each only
        over the local state the planner saw; per item its result or its error."""
        out: list[Done | BaseException | None] = [None] * len(items)
        files = []
        for i, (rel, remote, local) in enumerate(items):
            if is_folder_marker(rel):
                out[i] = self._make_folder(rel, remote)
                continue
            parts, name = _split(rel)
            expected = local.fingerprint if local is not None else None
            target = LocalTarget(self.root, tuple(parts), name, self.root.path / rel, _expect(expected, rel))
            listed = Version(path=self.remote_path(rel), version=remote.version, size=remote.size, created_ms=0,
                             identity="")
            files.append((i, listed, target))
        if files:
            outcomes = get_files(self.client.remote, [(v, t) for _, v, t in files],
                                 keep=self.client.manifests.put if self.client.manifests is not None else None)
            for (i, _, _), outcome in zip(files, outcomes, strict=True):
                out[i] = self._downloaded(items[i][0], outcome)
        return out  # type: ignore[return-value]

    def _downloaded(self, rel: str, outcome: object) -> Done | BaseException:
        error = getattr(outcome, "error", None)
        if error is not None:
            return error
        version: Version = outcome.version  # type: ignore[attr-defined]
        state = outcome.state  # type: ignore[attr-defined]
        fp = Fingerprint(state.size, state.mtime_ns, state.ctime_ns, state.inode)
        return Done(rel, "download", Base(version.version, version.file_digest, fp, state.observed_ns),
                    remote=head_of_version(version), bytes_fetched=outcome.bytes_fetched)  # type: ignore[attr-defined]

    def _make_folder(self, rel: str, remote: Remote) -> Done:
        with self.root.sub(folder_of(rel).split("/"), create=True):
            pass
        self.root.fsync()
        return Done(rel, "download", Base(remote.version, EMPTY_DIGEST, FOLDER, time.time_ns()), remote=remote)

    # ---- deletes --------------------------------------------------------------------------------

    def delete_local(self, rel: str, base: Base) -> Done:
        """Remove the local file if it still is the agreed one (a folder: if it is empty)."""
        if is_folder_marker(rel):
            return self._remove_folder(rel)
        parts, name = _split(rel)
        with self.root.sub(parts, create=False) as folder:
            if not _same(folder.lstat(name), base.fingerprint):
                raise LocalChangedError(f"{rel} changed locally; it is not deleted")
            folder.unlink(name)
            folder.fsync()
        return Done(rel, "delete_local", forget=True)

    def _remove_folder(self, rel: str) -> Done:
        parts = folder_of(rel).split("/")
        try:
            with self.root.sub(parts[:-1], create=False) as parent:
                os.rmdir(parts[-1], dir_fd=parent.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            # Files the rules ignore (or new ones) keep it: decide it afresh (it is uploaded again).
            return Done(rel, "keep_folder", forget=True, detail="not empty")
        return Done(rel, "delete_local", forget=True)

    def delete_remote(self, rel: str, if_version: int) -> Done:
        """Write a delete marker if the remote head is still ``if_version`` (history keeps the content)."""
        marker = Version.from_message(self.client.delete(self.remote_path(rel), if_version=if_version))
        return Done(rel, "delete_remote", forget=True, remote=head_of_version(marker))

    # ---- conflicts ------------------------------------------------------------------------------

    def conflict(self, rel: str, local: Local, remote: Remote) -> list[Done | BaseException]:
        """Keep both: the local file becomes the conflict copy, the remote version takes the name."""
        parts, name = _split(rel)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        with self.root.sub(parts, create=False) as folder:
            if not _same(folder.lstat(name), local.fingerprint):
                raise LocalChangedError(f"{rel} changed locally; the conflict is decided again")
            copy = conflict_name(name, stamp, self.client_id)
            n = 1
            while folder.lstat(copy) is not None:
                n += 1
                copy = conflict_name(name, f"{stamp}-{n}", self.client_id)
            os.rename(name, copy, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            folder.fsync()
        copy_rel = "/".join([*parts, copy])
        (got,) = self.download([(rel, remote, None)])
        if isinstance(got, Done):
            got.action, got.detail, got.extra = "conflict", copy_rel, [copy_rel]
        return [got]


def root_folder(path: Path) -> Folder:
    """Open the synced folder (the one path followed if it is a symlink: the user named it)."""
    return Folder.open_root(path, create=True)
