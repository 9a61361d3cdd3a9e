"""The downloader behind ``stratus get``: one file, a stream, or a whole tree as it was at some time.

Every file goes through the stages of the download engine (cli/download.py): plan (which chunks
the local copy, or a killed download's temp file, already has), fetch (the rest), verify (every
chunk, then the whole-file BLAKE3) and write (a temp file fsynced and renamed into place with its
mode and mtime, every step relative to a folder fd opened without following symlinks:
cli/localdir.py). In a tree, small files are planned and fetched in groups, a large file alone;
each file gives one :class:`~cli.download.GetOutcome`, and a command gets one :class:`GetReport`.

A tree is listed once, every page, at one point in time, and each file is then fetched at exactly
the version the listing named, so the restored tree is consistent even while others write.

The engine takes its dependencies explicitly (a client, the state cache, :class:`GetOptions`) and
knows nothing of the command line: no typer, no rich. Progress goes to ``GetOptions.progress``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cas.errors import CasError, NotFoundError
from cas.paths import normalize_path
from cli.client import StratusClient
from cli.download import GetOutcome, get_files
from cli.grouping import DEFAULT_JOBS, SMALL_FILE_MAX, groups
from cli.jobs import run_bounded
from cli.localdir import Folder, LocalTarget, UnsafeLocalPathError
from cli.remote import ProgressFn
from cli.results import Version
from cli.statecache import Entry, StateCache, observe
from cli.tree import RestoreItem, plan_restore, remote_prefix
from proto import stratus_pb2 as pb

__all__ = ["DEFAULT_JOBS", "Downloader", "GetOptions", "GetOutcome", "GetReport", "GetStats", "ProgressEvent"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``start`` (``files`` files, ``nbytes`` bytes, called ``label``), ``bytes``
    (``nbytes`` more done) or ``file`` (one more file finished)."""

    kind: str
    nbytes: int = 0
    files: int = 0
    label: str = ""


@dataclass
class GetOptions:
    """How the engine runs: the cache scope (server, namespace), cache use, signature key, jobs, progress."""

    server: str
    namespace: str = ""
    use_cache: bool = True
    verify_key: object = None
    jobs: int = DEFAULT_JOBS
    progress: Callable[[ProgressEvent], None] | None = None


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
    chunks_delta: int = 0  # of chunks_fetched, those sent as delta frames against the old local copy
    seconds: float = 0.0

    def account(self, outcome: GetOutcome) -> None:
        """Add one file's outcome (a failure counts only as a failure; skips are counted by the caller)."""
        if outcome.status == "failed":
            self.files_failed += 1
            return
        self.files_downloaded += outcome.status == "downloaded"
        self.files_up_to_date += outcome.status == "up_to_date"
        self.bytes_fetched += outcome.bytes_fetched
        self.chunks_reused += outcome.chunks_reused
        self.chunks_fetched += outcome.chunks_fetched
        self.chunks_delta += outcome.chunks_delta
        self.chunks_total += outcome.chunks_total


@dataclass
class GetReport:
    """The result of a ``get``: what was asked, the counters, and one outcome per file."""

    kind: str  # file | tree | stdout
    remote: str
    local: str
    as_of_ms: int = 0
    stats: GetStats = field(default_factory=GetStats)
    outcomes: list[GetOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, outcome: GetOutcome) -> None:
        """Record a file's outcome and count it."""
        self.outcomes.append(outcome)
        if outcome.status == "skipped":
            self.stats.files_skipped_unchanged += 1
        else:
            self.stats.account(outcome)

    @property
    def first_error(self) -> BaseException | None:
        """The error of the first failed file (its exit code is the command's)."""
        return next((o.error for o in self.outcomes if o.error is not None), None)


class _CountingWriter:
    """A binary writer that counts the bytes handed to it (to say how much went out before a failure)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


class Downloader:
    """The download engine (see the module docstring)."""

    def __init__(self, client: StratusClient, cache: StateCache, options: GetOptions) -> None:
        self.client = client
        self.cache = cache
        self.options = options
        # A signature must be checked on every run, so the cache may not vouch for a file then.
        self.use_cache = options.use_cache and options.verify_key is None
        self.jobs = max(1, options.jobs)

    def locate(self, remote: str, *, version: int | None, as_of_ms: int | None) -> Version | str:
        """The file version REMOTE names, or the listing prefix when it names a folder.

        A folder is REMOTE ending in ``/``, the root (``/``), or a path that is not a file (at that
        time) but has files under it. NotFoundError when it is neither.
        """
        if remote.endswith("/") or remote.strip("/") in ("", "."):
            return remote_prefix(remote)
        path = normalize_path(remote)
        try:
            return _version(self.client.stat(path, version=version, as_of_ms=as_of_ms))
        except NotFoundError as not_file:
            if version:
                raise
            prefix = path + "/"
            files, _ = self.client.list_files(prefix, page_size=1, as_of_ms=as_of_ms or 0)
            if files:
                return prefix
            raise not_file

    # ---- one file ---------------------------------------------------------------------------------

    def get_file(self, info: Version | pb.VersionInfo, dest: Path) -> GetReport:
        """Download one version (as :meth:`locate` gives it) to ``dest`` (a folder: the remote name inside it).

        ``dest``'s folder was named by the user and may be a symlink (followed); a symlink at
        ``dest`` itself is replaced by the file. A failure is raised, not reported.
        """
        started = time.perf_counter()
        info = _version(info)
        if dest.is_dir():
            dest = dest / info.path.rsplit("/", 1)[-1]
        report = GetReport("file", info.path, str(dest))
        report.stats.files_listed = 1
        report.stats.bytes_total = info.size
        item = RestoreItem(info, dest)
        entry = self._cached({info.path: info}, info.path).get(info.path)
        if self._is_current(item, entry):
            report.add(GetOutcome(info.path, str(dest), "skipped", info, info.size))
        else:
            self._emit("start", info.size, 1, f"get {info.path}")
            try:
                with Folder.open_root(dest.parent) as root:
                    outcome = self.client.get_file(info.path, LocalTarget(root, (), dest.name, dest),
                                                   version=info.version, verify_key=self.options.verify_key,
                                                   progress=self._file_progress(),
                                                   base_manifest_digest=entry.manifest_digest if entry else b"")
            finally:
                self._emit("file")
            report.add(outcome)
            self._remember([outcome], {info.path: item})
        report.stats.seconds = time.perf_counter() - started
        return report

    def get_stream(self, remote: str, writer: BinaryIO, *, version: int | None, as_of_ms: int | None,
                   label: str = "the output") -> GetReport:
        """Write a version to ``writer`` (``get REMOTE -``); every chunk is verified before it is written.

        A writer cannot be taken back: when a failure comes after some bytes went out, the error's
        ``hint`` says how many were written to ``label``, so that output is discarded.
        """
        started = time.perf_counter()
        path = normalize_path(remote)
        report = GetReport("stdout", path, "-")
        out = _CountingWriter(writer)
        try:
            outcome = self.client.get_stream(path, out, version=version, as_of_ms=as_of_ms,
                                             verify_key=self.options.verify_key, progress=self._file_progress())
        except Exception as exc:
            if out.count:
                exc.hint = (  # type: ignore[attr-defined]
                    f"{out.count} bytes were written to {label} before the failure; discard that output")
            raise
        report.stats.files_listed = 1
        report.stats.bytes_total = outcome.size
        report.add(outcome)
        report.stats.seconds = time.perf_counter() - started
        return report

    # ---- trees --------------------------------------------------------------------------------------

    def get_tree(self, prefix: str, root: Path, *, as_of_ms: int | None) -> GetReport:
        """Restore every file under ``prefix`` (as of ``as_of_ms``, else now) below ``root``.

        Per-file failures are reported in the outcomes and the rest goes on; fatal ones (server,
        credentials) are raised.
        """
        started = time.perf_counter()
        report = GetReport("tree", prefix, str(root), as_of_ms or 0)
        page = self.client.server_info().max_page_size or 1000
        files = [_version(f) for f in self.client.iter_files(prefix, as_of_ms=as_of_ms or 0, page_size=page)]
        if not files:
            where = f"under {prefix!r}" if prefix else "on the server"
            raise NotFoundError(f"no files {where}" + (" at that time" if as_of_ms else ""))
        plan = plan_restore(files, prefix, root)
        report.stats.files_listed = len(files)
        report.stats.bytes_total = sum(f.size for f in files)
        for path, reason in plan.conflicts:
            report.add(GetOutcome(path, "", "failed", error=CasError(f"{path} {reason}")))
        cached = self._cached({i.info.path: i.info for i in plan.items}, prefix)
        todo = []
        for item in plan.items:
            if self._is_current(item, cached.get(item.info.path)):
                report.stats.files_skipped_unchanged += 1
            else:
                todo.append(item)
        if todo:
            with Folder.open_root(root) as opened:
                self._run(todo, opened, report)
        report.stats.seconds = time.perf_counter() - started
        return report

    def _run(self, todo: list[RestoreItem], root: Folder, report: GetReport) -> None:
        """Download ``todo`` below the opened destination ``root`` (no symlink inside it is followed)."""
        done: list[GetOutcome] = []
        self._emit("start", sum(i.info.size for i in todo), len(todo), "get")
        small = [i for i in todo if i.info.size <= SMALL_FILE_MAX]
        tasks = iter([(self._get_group, group) for group in groups(small, lambda i: i.info.size)]
                     + [(self._get_group, [i]) for i in todo if i.info.size > SMALL_FILE_MAX])
        items = {i.info.path: i for i in todo}
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="stratus-get") as pool:
            try:
                for outcomes in run_bounded(pool, tasks, self.jobs * 2, root):
                    for outcome in outcomes:
                        report.add(outcome)
                        done.append(outcome)
            finally:
                self._remember(done, items)

    def _get_group(self, group: list[RestoreItem], root: Folder) -> list[GetOutcome]:
        """Download a group of small files, or one large file, through the engine's stages together.

        Per-file failures are outcomes; a fatal one (server, credentials) is raised.
        """
        outcomes: list[GetOutcome] = []
        files = []
        for item in group:
            try:
                files.append((item.info, LocalTarget.below(root, item.dest)))
            except UnsafeLocalPathError as exc:
                outcomes.append(GetOutcome(item.info.path, str(item.dest), "failed", item.info, item.info.size,
                                           error=exc))
        manifests = self.client.manifests
        try:
            outcomes += get_files(self.client.remote, files, verify_key=self.options.verify_key,
                                  progress=self._file_progress(), keep=manifests.put if manifests else None)
        finally:
            for _ in group:
                self._emit("file")
        return outcomes

    # ---- shared pieces --------------------------------------------------------------------------------

    def _emit(self, kind: str, nbytes: int = 0, files: int = 0, label: str = "") -> None:
        if self.options.progress is not None:
            self.options.progress(ProgressEvent(kind, nbytes, files, label))

    def _file_progress(self) -> ProgressFn | None:
        """A per-file ``progress(done, total)`` callback that reports the bytes done as events."""
        if self.options.progress is None:
            return None
        last = [0]

        def update(done: int, _total: int | None) -> None:
            delta, last[0] = done - last[0], done
            if delta:
                self._emit("bytes", delta)

        return update

    def _cached(self, wanted: dict[str, Version], prefix: str) -> dict[str, Entry]:
        if not self.use_cache:
            return {}
        server, ns = self.options.server, self.options.namespace
        if len(wanted) == 1:
            path = next(iter(wanted))
            entry = self.cache.get(server, ns, path)
            return {path: entry} if entry else {}
        return self.cache.under(server, ns, prefix)

    @staticmethod
    def _is_current(item: RestoreItem, entry: Entry | None) -> bool:
        """True when the state cache vouches that the local file is this version with its mode and mtime."""
        if entry is None or not entry.state.trusted:
            return False
        local = os.path.abspath(item.dest)
        if entry.state.local_path != local or entry.manifest_digest.hex() != item.info.manifest_digest:
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

    def _remember(self, outcomes: list[GetOutcome], items: dict[str, RestoreItem]) -> None:
        """Record files written or checked in the state cache (their state comes from an fstat, never a path)."""
        entries = []
        for o in outcomes:
            if o.state is None or o.status == "failed":
                continue
            info = items[o.remote].info
            entries.append(Entry(o.remote, o.state, info.version, bytes.fromhex(info.manifest_digest)))
        if entries:
            self.cache.put_many(self.options.server, self.options.namespace, entries)


def _version(info: pb.VersionInfo | Version) -> Version:
    """The library value of a version the client returned (converted once, as it enters the engine)."""
    return info if isinstance(info, Version) else Version.from_message(info)
