"""The upload engine's entry point: a file, a stream or a whole tree, skipping what has not changed.

:class:`Uploader` takes its dependencies explicitly (a client, the state cache as one server and
namespace see it, :class:`UploadOptions` with a progress callback) and imports no terminal code:
the CLI's ``put`` builds one, renders its :class:`UploadReport` and maps errors to exit codes.

A tree goes up as one remote path per regular file. Before anything is read, the walk's stat of
each file is compared with the state cache and the server's listing of the prefix: a file whose
size, timestamps and inode are unchanged since it was uploaded, and whose uploaded version is
still the head, is skipped without being opened. Small files go up in groups
(:mod:`cli.smallfiles`), big ones one by one (:mod:`cli.upload`), ``jobs`` at a time; the cache
learns the results in batches as they finish, so an interrupted run keeps what it did.

Partial results: a tree never loses what it did. A file's own failure is its ``failed`` outcome
and the others go on; a failure that dooms the run (server gone, credentials refused) stops it:
files not committed yet end as ``failed`` with that error, :attr:`UploadReport.stopped` holds
it, and every file listed as committed really is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cas.errors import CasError, CommitUnansweredError, NotFoundError, VersionConflictError
from cas.paths import normalize_path
from cli.grouping import DEFAULT_JOBS, SMALL_FILE_MAX, groups, is_fatal
from cli.jobs import run_bounded
from cli.remote import Advance
from cli.results import Version
from cli.smallfiles import upload_group
from cli.statecache import CacheScope, Entry, FileState, observe
from cli.tree import Excludes, LocalFile, WalkResult, remote_join, walk
from cli.upload import FileOutcome, signing_key, stream_source, upload, upload_path
from proto import stratus_pb2 as pb

if TYPE_CHECKING:
    from cli.client import StratusClient

_CACHE_FLUSH_EVERY = 500  # entries

Done = list[tuple[FileOutcome, Entry | None]]  # outcomes of a task, with the cache entry to record


class UploadProgress(Protocol):
    """Progress of one upload run. ``advance`` and ``file_done`` may be called from any thread."""

    def start(self, files: int, total_bytes: int) -> None:
        """Work is about to begin (``total_bytes`` 0: unknown, e.g. a stream)."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes were read and checked or sent."""

    def file_done(self, outcome: FileOutcome) -> None:
        """A file has its outcome."""

    def finish(self) -> None:
        """The run is over (also after a failure)."""


class NoProgress:
    """An :class:`UploadProgress` that shows nothing."""

    def start(self, files: int, total_bytes: int) -> None:
        """Nothing to show."""

    def advance(self, nbytes: int) -> None:
        """Nothing to show."""

    def file_done(self, outcome: FileOutcome) -> None:
        """Nothing to show."""

    def finish(self) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class UploadOptions:
    """How an :class:`Uploader` works. ``sign_key``: an Ed25519 private key object or PEM bytes."""

    jobs: int = DEFAULT_JOBS
    sign_key: object = None
    use_cache: bool = True  # False: read every file (the cache is still refreshed)
    excludes: Excludes = field(default_factory=Excludes)
    follow_symlinks: bool = False
    delete: bool = False  # trees: delete remote files that no longer exist locally
    progress: UploadProgress = field(default_factory=NoProgress)


@dataclass
class UploadStats:
    """Counters of one run (the ``stats`` object of ``put --json``)."""

    files_scanned: int = 0
    files_skipped_unchanged: int = 0  # cache says unchanged and still the head: not even opened
    files_uploaded: int = 0  # a new version was written
    files_same_content: int = 0  # read, but the head already had exactly this content
    files_failed: int = 0
    files_deleted: int = 0  # --delete: remote files with no local counterpart
    files_excluded: int = 0
    symlinks_skipped: int = 0
    other_skipped: int = 0
    bytes_scanned: int = 0  # total size of the files considered
    bytes_read: int = 0
    bytes_sent: int = 0  # compressed chunk bytes on the wire
    chunks_total: int = 0  # chunks of the files that were read
    chunks_sent: int = 0
    seconds: float = 0.0

    def account(self, o: FileOutcome) -> None:
        """Count one outcome of a read file (uploaded, unchanged or failed)."""
        if o.status == "failed":
            self.files_failed += 1
            return
        self.files_uploaded += o.status == "uploaded"
        self.files_same_content += o.status == "unchanged"
        self.bytes_read += o.bytes_read
        self.bytes_sent += o.bytes_sent
        self.chunks_total += o.chunks_total
        self.chunks_sent += o.chunks_sent


@dataclass
class UploadReport:
    """The result of a run: counters, per-file outcomes (not the skipped ones of a tree) and notes.

    ``stopped`` is the error that ended a tree early (None: every file was tried); then the
    outcomes still name every file: committed ones with their version, the rest ``failed``.
    """

    kind: str  # file | tree | stream
    local: str
    remote: str
    stats: UploadStats = field(default_factory=UploadStats)
    files: list[FileOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped: BaseException | None = None

    @property
    def failures(self) -> list[FileOutcome]:
        """The failed outcomes, in order."""
        return [o for o in self.files if o.status == "failed"]

    @property
    def first_error(self) -> BaseException | None:
        """What decides the exit code: the error that stopped the run, else the first file's error."""
        return self.stopped or next((o.error for o in self.failures), None)


class Uploader:
    """Runs uploads for one client and one state-cache scope (see the module docstring)."""

    def __init__(self, client: StratusClient, state: CacheScope, options: UploadOptions | None = None) -> None:
        self.client = client
        self.state = state
        self.options = options or UploadOptions()
        self.progress = self.options.progress
        self._key = signing_key(self.options.sign_key)  # parsed once, not per file
        self._signer = b""
        if self._key is not None:
            from cas import signing

            self._signer = signing.public_key_bytes(self._key)  # type: ignore[arg-type]
        self._stop = threading.Event()
        self._stopped_by: BaseException | None = None
        self._existing: frozenset[str] | None = None  # the tree's remote paths with a head, when listed

    # ---- one file, one stream -----------------------------------------------------------------------

    def put_file(self, local: str | os.PathLike[str], remote: str, *, if_version: int | None = None) -> UploadReport:
        """Upload one regular file (a symlink is followed); skipped when the cache and the server's
        head say it is unchanged. Raises on failure: nothing was committed then."""
        started = time.perf_counter()
        path = normalize_path(remote)
        abs_path = os.path.abspath(local)
        st, state = observe(abs_path)
        report = UploadReport("file", os.fspath(local), path)
        report.stats.files_scanned, report.stats.bytes_scanned = 1, st.st_size
        file = LocalFile(Path(abs_path).name, abs_path, state)
        skipped = self._skip_single(file, path, if_version) if self.options.use_cache else None
        if skipped is not None:
            report.stats.files_skipped_unchanged = 1
            report.files.append(skipped)
        else:
            outcome = self._single(st.st_size, lambda advance: upload_path(
                self.client.remote, abs_path, path, if_version=if_version, sign_key=self._key,
                advance=advance, cache=self.client.manifests))
            report.stats.account(outcome)
            report.files.append(outcome)
            self._remember([e for e in [self._entry(file, outcome)] if e is not None])
        report.stats.seconds = time.perf_counter() - started
        return report

    def put_stream(self, stream: BinaryIO, remote: str, *, if_version: int | None = None) -> UploadReport:
        """Upload everything readable from ``stream`` (e.g. standard input); raises on failure."""
        started = time.perf_counter()
        path = normalize_path(remote)
        report = UploadReport("stream", "-", path)
        outcome = self._single(0, lambda advance: upload(
            self.client.remote, stream_source(stream), path, if_version=if_version, sign_key=self._key,
            mtime_ns=time.time_ns(), mode=0o644, advance=advance, cache=self.client.manifests))
        report.stats.files_scanned, report.stats.bytes_scanned = 1, outcome.bytes_read
        report.stats.account(outcome)
        report.files.append(outcome)
        report.stats.seconds = time.perf_counter() - started
        return report

    def _single(self, size: int, run: Callable[[Advance], FileOutcome]) -> FileOutcome:
        self.progress.start(1, size)
        try:
            outcome = run(self.progress.advance)
        finally:
            self.progress.finish()
        self.progress.file_done(outcome)
        return outcome

    def _skip_single(self, file: LocalFile, path: str, if_version: int | None) -> FileOutcome | None:
        entry = self.state.get(path)
        if entry is None or not entry.state.trusted or not entry.state.same_file(file.state):
            return None  # decided locally, without asking the server
        try:
            head: pb.VersionInfo | None = self.client.stat(path)
        except NotFoundError:
            head = None
        if not self._skippable(entry, file.state, head):
            return None
        assert head is not None
        if if_version is not None and if_version != head.version:
            raise VersionConflictError(path, if_version, head.version)
        return FileOutcome(path, file.path, "skipped", Version.from_message(head))

    # ---- trees --------------------------------------------------------------------------------------

    def put_tree(self, local: str | os.PathLike[str], prefix: str) -> UploadReport:
        """Upload every regular file under ``local`` to ``prefix`` + its relative path.

        Never raises for a file or for the server going away mid-run: see the module docstring.
        """
        started = time.perf_counter()
        opts = self.options
        self._stop.clear()
        self._stopped_by = None
        found = walk(Path(local), opts.excludes, follow_symlinks=opts.follow_symlinks)
        report = UploadReport("tree", os.fspath(local), prefix)
        self._count_walk(found, report)
        heads = self._list_heads(prefix) if (opts.use_cache or opts.delete) else {}
        listed = opts.use_cache or opts.delete
        self._existing = frozenset(p for p, v in heads.items() if not v.deleted) if listed else None
        cached = self.state.under(prefix) if opts.use_cache else {}
        todo: list[tuple[LocalFile, str]] = []
        for file in found.files:
            try:
                remote = remote_join(prefix, file.rel)
            except (CasError, ValueError) as exc:  # e.g. not valid UTF-8: the tree's problem, not usage
                self._fail(report, FileOutcome(prefix + file.rel, file.path, "failed",
                                               error=CasError(f"name cannot be stored: {exc}")))
                continue
            if opts.use_cache and self._skippable(cached.get(remote), file.state, heads.get(remote)):
                report.stats.files_skipped_unchanged += 1
            else:
                todo.append((file, remote))
        self._run(todo, report)
        report.stopped = self._stopped_by
        if opts.delete and report.stopped is None:
            self._delete_missing(found, prefix, heads, report)
        report.stats.seconds = time.perf_counter() - started
        return report

    def _count_walk(self, found: WalkResult, report: UploadReport) -> None:
        stats = report.stats
        stats.files_scanned = len(found.files)
        stats.bytes_scanned = sum(f.state.size for f in found.files)
        stats.files_excluded = found.excluded
        stats.symlinks_skipped = found.symlinks_skipped
        stats.other_skipped = len(found.skipped) - found.symlinks_skipped
        for s in found.skipped:
            report.notes.append(f"{s.rel}: {s.reason}")
            if s.error:
                self._fail(report, FileOutcome(report.remote + s.rel, os.path.join(report.local, s.rel),
                                               "failed", error=CasError(s.reason)))

    @staticmethod
    def _fail(report: UploadReport, outcome: FileOutcome) -> None:
        report.files.append(outcome)
        report.stats.files_failed += 1

    def _list_heads(self, prefix: str) -> dict[str, pb.VersionInfo]:
        page = self.client.server_info().max_page_size or 1000
        return {v.path: v for v in self.client.iter_files(prefix, page_size=page)}

    def _run(self, todo: list[tuple[LocalFile, str]], report: UploadReport) -> None:
        """Upload ``todo`` (groups of small files, big files one by one), ``jobs`` at a time.

        Every file of ``todo`` ends with exactly one outcome in ``report``; entries of committed
        files unchanged since the walk go to the state cache every few hundred files.
        """
        if not todo:
            return
        small = [item for item in todo if item[0].state.size <= SMALL_FILE_MAX]
        large = [item for item in todo if item[0].state.size > SMALL_FILE_MAX]
        tasks = [*((self._group_task, g) for g in groups(small, lambda item: item[0].state.size)),
                 *((self._file_task, item) for item in large)]
        jobs = max(1, self.options.jobs)
        pending: list[Entry] = []
        self.progress.start(len(todo), sum(f.state.size for f, _ in todo))
        try:
            with ThreadPoolExecutor(jobs, thread_name_prefix="stratus-put") as pool:
                for done in run_bounded(pool, tasks, jobs * 2):
                    for outcome, entry in done:
                        report.stats.account(outcome)
                        report.files.append(outcome)
                        pending += [entry] if entry is not None else []
                    if len(pending) >= _CACHE_FLUSH_EVERY:
                        self._remember(pending)
                        pending = []
        finally:
            self._remember(pending)
            self.progress.finish()

    def _group_task(self, group: list[tuple[LocalFile, str]]) -> Done:
        """A task: one group of small files. Never raises: failures become outcomes."""
        if self._stop.is_set():
            return self._not_sent(group)
        try:
            outcomes = upload_group(self.client.remote, [(f.path, r) for f, r in group], sign_key=self._key,
                                    advance=self.progress.advance, cache=self.client.manifests,
                                    existing=self._existing)
        except Exception as exc:  # noqa: BLE001 - a failed call fails the group, not the tree
            outcomes = [FileOutcome(r, f.path, "failed", error=exc) for f, r in group]
        return [self._finished(f, o) for (f, _), o in zip(group, outcomes, strict=True)]

    def _file_task(self, item: tuple[LocalFile, str]) -> Done:
        """A task: one big file, pipelined. Never raises: a failure becomes its outcome."""
        file, remote = item
        if self._stop.is_set():
            return self._not_sent([item])
        try:
            outcome = upload_path(self.client.remote, file.path, remote, sign_key=self._key,
                                  advance=self.progress.advance, cache=self.client.manifests)
        except Exception as exc:  # noqa: BLE001 - one failed file must not stop a tree
            outcome = FileOutcome(remote, file.path, "failed", error=exc)
        return [self._finished(file, outcome)]

    def _finished(self, file: LocalFile, outcome: FileOutcome) -> tuple[FileOutcome, Entry | None]:
        if outcome.error is not None and is_fatal(outcome.error) and not self._stop.is_set():
            # Files not sent yet fail with the plain cause (their commit was never in doubt).
            error = outcome.error
            self._stopped_by = error.__cause__ if isinstance(error, CommitUnansweredError) else error
            self._stop.set()  # tasks not started yet end at once as "not sent"
        self.progress.file_done(outcome)
        return outcome, self._entry(file, outcome)

    def _not_sent(self, items: list[tuple[LocalFile, str]]) -> Done:
        done = []
        for f, r in items:
            outcome = FileOutcome(r, f.path, "failed", error=self._stopped_by)
            self.progress.file_done(outcome)
            done.append((outcome, None))
        return done

    # ---- the state cache ------------------------------------------------------------------------------

    def _skippable(self, entry: Entry | None, state: FileState, head: pb.VersionInfo | None) -> bool:
        if entry is None or head is None or head.deleted:
            return False
        if self._signer and bytes(head.signer_public_key) != self._signer:
            return False  # the user wants a version signed by this key
        return entry.matches(state, head.version, bytes(head.manifest_digest))

    @staticmethod
    def _entry(file: LocalFile, outcome: FileOutcome) -> Entry | None:
        """The cache entry of a committed file, or None when it changed while it was read."""
        if outcome.status not in ("uploaded", "unchanged") or outcome.version is None:
            return None
        try:
            _, after = observe(file.path)
        except OSError:
            return None
        if not after.same_file(file.state):
            return None  # it changed while it was read: the next run must read it again
        v = outcome.version
        return Entry(outcome.remote, file.state, v.version, bytes.fromhex(v.manifest_digest))

    def _remember(self, entries: list[Entry]) -> None:
        # Recorded even under --no-cache: that run read every file, so its entries are fresh.
        self.state.put_many(entries)

    # ---- --delete -------------------------------------------------------------------------------------

    def _delete_missing(
        self, found: WalkResult, prefix: str, heads: dict[str, pb.VersionInfo], report: UploadReport
    ) -> None:
        # Anything present locally in any form (even a skipped symlink) keeps its remote copy.
        rels = [f.rel for f in found.files] + [s.rel for s in found.skipped]
        local = {_remote_name(prefix, rel) for rel in rels}
        excludes = self.options.excludes
        gone = [p for p in heads if p not in local and not excludes.excludes_file(p[len(prefix):])]
        forgotten = []
        for path in sorted(gone):
            try:
                tomb = self.client.delete(path, if_version=heads[path].version)
            except CasError as exc:
                self._fail(report, FileOutcome(path, "", "failed", error=exc))
                continue
            report.files.append(FileOutcome(path, "", "deleted", Version.from_message(tomb)))
            report.stats.files_deleted += 1
            forgotten.append(path)
        self.state.forget(forgotten)


def _remote_name(prefix: str, rel: str) -> str:
    """The remote path of ``rel`` as the server stores it (NFC), or as is when it is not a valid path."""
    try:
        return remote_join(prefix, rel)
    except (CasError, ValueError):  # such a name was reported as failed; it just must not match
        return prefix + rel
