"""``stratus get``: download a file, or restore a whole tree as it was at some time.

Every file goes through the client's delta download (chunks the existing local copy already has
are reused, the rest fetched, everything verified, the file replaced atomically with its mode and
mtime). A tree is listed once, every page, at one point in time, and each file is then fetched at
exactly the version the listing named, so the restored tree is consistent even while others write.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cas.errors import NotFoundError
from cas.paths import normalize_path
from cli import errors
from cli.grouping import DEFAULT_JOBS, SMALL_FILE_MAX, groups, is_fatal
from cli.jobs import run_bounded
from cli.localdir import Folder, LocalTarget
from cli.progress import TransferProgress
from cli.runtime import Runtime
from cli.smallget import download_group
from cli.statecache import Entry, FileState, observe
from cli.tree import RestoreItem, plan_restore, remote_prefix
from proto import stratus_pb2 as pb


@dataclass
class GetStats:
    """Counters of one ``get`` (the ``stats`` object of its JSON output)."""

    files_listed: int = 0
    files_downloaded: int = 0  # written
    files_up_to_date: int = 0  # the local copy already was that version (checked by hashing it)
    files_skipped_unchanged: int = 0  # the state cache vouched for the local copy: not even read
    files_failed: int = 0
    bytes_total: int = 0  # size of the files listed
    bytes_fetched: int = 0  # compressed chunk bytes received
    chunks_total: int = 0
    chunks_reused: int = 0
    chunks_fetched: int = 0
    seconds: float = 0.0


@dataclass
class GetOutcome:
    """What happened to one file."""

    remote: str
    local: str
    status: str  # downloaded | up_to_date | skipped | failed
    version: int | None = None
    size: int = 0
    chunks_total: int = 0
    chunks_reused: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    error: str | None = None
    exit_code: int = 0


@dataclass
class GetReport:
    """The result of a ``get``."""

    kind: str  # file | tree | stdout
    remote: str
    local: str
    as_of_ms: int = 0
    stats: GetStats = field(default_factory=GetStats)
    outcomes: list[GetOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0, or the exit code of the first failure."""
        return next((o.exit_code for o in self.outcomes if o.exit_code), 0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``get --json``."""
        return {
            "ok": self.exit_code == 0, "kind": self.kind, "remote": self.remote, "local": self.local,
            "as_of_ms": self.as_of_ms or None, "stats": asdict(self.stats),
            "files": [asdict(o) for o in self.outcomes if o.status != "skipped"], "notes": self.notes,
        }


class _CountingWriter:
    """A binary writer that counts the bytes handed to it (to say how much reached stdout)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


class Downloader:
    """Runs downloads for one command; see the module docstring."""

    def __init__(self, rt: Runtime, *, use_cache: bool = True, verify_key: object = None, jobs: int = DEFAULT_JOBS):
        self.rt = rt
        self.client = rt.client
        # A signature must be checked on every run, so the cache may not vouch for a file then.
        self.use_cache = use_cache and verify_key is None
        self.verify_key = verify_key
        self.jobs = max(1, jobs)

    def locate(self, remote: str, *, version: int | None, as_of_ms: int | None) -> pb.VersionInfo | str:
        """The file version REMOTE names, or the listing prefix when it names a folder.

        A folder is REMOTE ending in ``/``, the root (``/``), or a path that is not a file (at that
        time) but has files under it. NotFoundError when it is neither.
        """
        if remote.endswith("/") or remote.strip("/") in ("", "."):
            return remote_prefix(remote)
        path = normalize_path(remote)
        try:
            return self.client.stat(path, version=version, as_of_ms=as_of_ms)
        except NotFoundError as not_file:
            if version:
                raise
            prefix = path + "/"
            files, _ = self.client.list_files(prefix, page_size=1, as_of_ms=as_of_ms or 0)
            if files:
                return prefix
            raise not_file

    # ---- one file ---------------------------------------------------------------------------------

    def get_file(self, info: pb.VersionInfo, dest: Path) -> GetReport:
        """Download one version to ``dest`` (a folder gets the remote file's name inside it)."""
        started = time.perf_counter()
        if dest.is_dir():
            dest = dest / info.path.rsplit("/", 1)[-1]
        report = GetReport("file", info.path, str(dest))
        report.stats.files_listed = 1
        report.stats.bytes_total = info.size
        cached = self._cached({info.path: info}, info.path)
        item = RestoreItem(info, dest)
        if self._is_current(item, cached.get(info.path)):
            report.outcomes.append(GetOutcome(info.path, str(dest), "skipped", info.version, info.size))
            report.stats.files_skipped_unchanged = 1
        else:
            with Folder.open_root(dest.parent) as root, \
                    TransferProgress(self.rt.out, f"get {info.path}", info.size) as progress:
                target = LocalTarget(root, (), dest.name, dest)
                outcome, entry = self._download(item, target, progress, tree=False)
            self._account(report.stats, outcome)
            report.outcomes.append(outcome)
            self._remember([entry] if entry else [])
        report.stats.seconds = time.perf_counter() - started
        return report

    def get_stdout(self, remote: str, *, version: int | None, as_of_ms: int | None) -> GetReport:
        """Write a version to standard output (``get REMOTE -``)."""
        started = time.perf_counter()
        path = normalize_path(remote)
        report = GetReport("stdout", path, "-")
        out = _CountingWriter(sys.stdout.buffer)
        try:
            result = self.client.get_stream(path, out, version=version, as_of_ms=as_of_ms,
                                            verify_key=self.verify_key)
        except Exception as exc:
            if out.count:
                exc.hint = (f"{out.count} bytes were written to standard output before the failure; "  # type: ignore[attr-defined]
                            "discard that output")
            raise
        v = result.version
        outcome = GetOutcome(path, "-", "downloaded", v.version, v.size, result.chunks_total,
                             result.chunks_reused, result.chunks_fetched, result.bytes_fetched)
        report.stats.files_listed = 1
        report.stats.bytes_total = v.size
        self._account(report.stats, outcome)
        report.outcomes.append(outcome)
        report.stats.seconds = time.perf_counter() - started
        return report

    # ---- trees --------------------------------------------------------------------------------------

    def get_tree(self, prefix: str, root: Path, *, as_of_ms: int | None) -> GetReport:
        """Restore every file under ``prefix`` (as of ``as_of_ms``, else now) below ``root``."""
        started = time.perf_counter()
        report = GetReport("tree", prefix, str(root), as_of_ms or 0)
        page = self.client.server_info().max_page_size or 1000
        files = list(self.client.iter_files(prefix, as_of_ms=as_of_ms or 0, page_size=page))
        if not files:
            where = f"under {prefix!r}" if prefix else "on the server"
            raise NotFoundError(f"no files {where}" + (" at that time" if as_of_ms else ""))
        plan = plan_restore(files, prefix, root)
        stats = report.stats
        stats.files_listed = len(files)
        stats.bytes_total = sum(f.size for f in files)
        for path, reason in plan.conflicts:
            report.outcomes.append(GetOutcome(path, "", "failed", error=f"{path} {reason}", exit_code=errors.ERROR))
            stats.files_failed += 1
        cached = self._cached({i.info.path: i.info for i in plan.items}, prefix)
        todo = []
        for item in plan.items:
            if self._is_current(item, cached.get(item.info.path)):
                stats.files_skipped_unchanged += 1
            else:
                todo.append(item)
        if todo:
            with Folder.open_root(root) as opened:
                self._run(todo, opened, report)
        stats.seconds = time.perf_counter() - started
        return report

    def _run(self, todo: list[RestoreItem], root: Folder, report: GetReport) -> None:
        """Download ``todo`` below the opened destination ``root`` (no symlink inside it is followed)."""
        entries: list[Entry] = []
        total = sum(i.info.size for i in todo)
        small = [i for i in todo if i.info.size <= SMALL_FILE_MAX]
        large = [i for i in todo if i.info.size > SMALL_FILE_MAX]
        with TransferProgress(self.rt.out, "get", total, len(todo)) as progress, \
                ThreadPoolExecutor(self.jobs, thread_name_prefix="stratus-get") as pool:
            tasks = iter([
                *((lambda group, p: self._download_small(group, root, p), group)
                  for group in groups(small, lambda i: i.info.size)),
                *((lambda item, p: [self._download(item, LocalTarget.below(root, item.dest), p, tree=True)], item)
                  for item in large),
            ])
            try:
                for results in run_bounded(pool, tasks, self.jobs * 2, progress):
                    for outcome, entry in results:
                        self._account(report.stats, outcome)
                        report.outcomes.append(outcome)
                        if entry is not None:
                            entries.append(entry)
            finally:
                self._remember(entries)

    def _download_small(
        self, group: list[RestoreItem], root: Folder, progress: TransferProgress
    ) -> list[tuple[GetOutcome, Entry | None]]:
        """Restore a group of small files together (see cli/smallget.py)."""
        done = []
        server = self.rt.settings.server
        for r in download_group(self.client, server, group, root, verify_key=self.verify_key):
            info, dest = r.item.info, r.item.dest
            report = progress.for_file()
            if report is not None:
                report(info.size, info.size)
            progress.file_done()
            if r.error is not None:
                if is_fatal(r.error):
                    raise r.error
                done.append((GetOutcome(info.path, str(dest), "failed", info.version, info.size,
                                        error=errors.describe(r.error), exit_code=errors.exit_code(r.error)), None))
                continue
            outcome = GetOutcome(info.path, str(dest), "up_to_date" if r.up_to_date else "downloaded",
                                 info.version, info.size, r.chunks_total, r.chunks_reused, r.chunks_fetched,
                                 r.bytes_fetched)
            done.append((outcome, self._entry(r.item, r.state)))
        return done

    # ---- shared pieces --------------------------------------------------------------------------------

    def _download(
        self, item: RestoreItem, target: LocalTarget, progress: TransferProgress, *, tree: bool
    ) -> tuple[GetOutcome, Entry | None]:
        info = item.info
        try:
            result = self.client.get_file(info.path, target, version=info.version, verify_key=self.verify_key,
                                          progress=progress.for_file())
        except Exception as exc:  # noqa: BLE001 - one failed file must not stop a tree
            if not tree or is_fatal(exc):
                raise
            return GetOutcome(info.path, str(item.dest), "failed", info.version, info.size,
                              error=errors.describe(exc), exit_code=errors.exit_code(exc)), None
        finally:
            progress.file_done()
        outcome = GetOutcome(info.path, str(item.dest), "up_to_date" if result.up_to_date else "downloaded",
                             info.version, info.size, result.chunks_total, result.chunks_reused,
                             result.chunks_fetched, result.bytes_fetched)
        return outcome, self._entry(item, result.state)

    @staticmethod
    def _entry(item: RestoreItem, state: FileState | None) -> Entry | None:
        """The cache entry of a file just written (or checked) at ``item.info``'s version.

        ``state`` comes from an fstat of the file the download wrote or checked, never from a path.
        """
        if state is None:
            return None
        return Entry(item.info.path, state, item.info.version, bytes(item.info.manifest_digest))

    @staticmethod
    def _account(stats: GetStats, outcome: GetOutcome) -> None:
        if outcome.status == "failed":
            stats.files_failed += 1
            return
        stats.files_downloaded += outcome.status == "downloaded"
        stats.files_up_to_date += outcome.status == "up_to_date"
        stats.bytes_fetched += outcome.bytes_fetched
        stats.chunks_reused += outcome.chunks_reused
        stats.chunks_fetched += outcome.chunks_fetched
        stats.chunks_total += outcome.chunks_total

    def _cached(self, wanted: dict[str, pb.VersionInfo], prefix: str) -> dict[str, Entry]:
        if not self.use_cache:
            return {}
        server, ns = self.rt.settings.server, self.rt.namespace
        if len(wanted) == 1:
            path = next(iter(wanted))
            entry = self.rt.cache.get(server, ns, path)
            return {path: entry} if entry else {}
        return self.rt.cache.under(server, ns, prefix)

    @staticmethod
    def _is_current(item: RestoreItem, entry: Entry | None) -> bool:
        if entry is None or not entry.state.trusted:
            return False
        local = os.path.abspath(item.dest)
        if entry.state.local_path != local or entry.manifest_digest != item.info.manifest_digest:
            return False
        try:
            st, now = observe(local, follow_symlinks=False)
        except OSError:
            return False
        if not entry.state.same_file(now):
            return False
        # Content is right; make sure mode and mtime are too (what a restore promises).
        mode_ok = not item.info.mode or (st.st_mode & 0o777) == (item.info.mode & 0o777)
        return mode_ok and (not item.info.mtime_ns or st.st_mtime_ns == item.info.mtime_ns)

    def _remember(self, entries: list[Entry]) -> None:
        if entries:
            self.rt.cache.put_many(self.rt.settings.server, self.rt.namespace, entries)
