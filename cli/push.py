"""``stratus put``: upload a file, a stream or a whole tree, skipping what has not changed.

A tree goes up as one remote path per regular file. Before anything is read, the walk's stat of
each file is compared with the state cache and the server's listing of the prefix: a file whose
size, timestamps and inode are unchanged since it was uploaded, and whose uploaded version is
still the head, is skipped without being opened. The rest go up a few at a time (a thread pool;
each upload is itself pipelined), and the cache learns the result in batches as they finish, so
an interrupted run keeps what it did.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cas.errors import NotFoundError, VersionConflictError
from cas.paths import normalize_path
from cli import errors
from cli.jobs import run_bounded
from cli.progress import TransferProgress
from cli.runtime import Runtime
from cli.smallfiles import SMALL_FILE_MAX, groups, upload_group
from cli.statecache import Entry, FileState, observe
from cli.tree import Excludes, LocalFile, WalkResult, remote_join, walk
from proto import stratus_pb2 as pb

DEFAULT_JOBS = 8
_CACHE_FLUSH_EVERY = 500  # entries
_FATAL = ("unavailable", "unauthenticated", "permission_denied", "rate_limited", "internal")


@dataclass
class PutStats:
    """Counters of one ``put`` (the ``stats`` object of its JSON output)."""

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


@dataclass
class Outcome:
    """What happened to one file."""

    remote: str
    local: str
    status: str  # uploaded | unchanged | skipped | failed | deleted
    version: int | None = None
    size: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    chunks_total: int = 0
    chunks_sent: int = 0
    error: str | None = None
    exit_code: int = 0
    manifest_delta: bool = False  # the manifest went as a delta against the previous version's


@dataclass
class PutReport:
    """The result of a ``put``: counters, per-file outcomes (not the skipped ones) and notes."""

    kind: str  # file | tree | stream
    local: str
    remote: str
    stats: PutStats = field(default_factory=PutStats)
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0, or the exit code of the first failure."""
        return next((o.exit_code for o in self.outcomes if o.exit_code), 0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``put --json``."""
        return {
            "ok": self.exit_code == 0, "kind": self.kind, "local": self.local, "remote": self.remote,
            "stats": asdict(self.stats), "files": [asdict(o) for o in self.outcomes], "notes": self.notes,
        }


class Uploader:
    """Runs uploads for one command; see the module docstring."""

    def __init__(self, rt: Runtime, *, use_cache: bool = True, sign_key: object = None, jobs: int = DEFAULT_JOBS):
        self.rt = rt
        self.client = rt.client
        self.use_cache = use_cache
        self.sign_key = sign_key
        self.jobs = max(1, jobs)
        self._signer = b""
        if sign_key is not None:
            from cas import signing

            self._signer = signing.public_key_bytes(sign_key)  # type: ignore[arg-type]

    # ---- shared pieces ----------------------------------------------------------------------------

    def _skippable(self, entry: Entry | None, state: FileState, head: pb.VersionInfo | None) -> bool:
        if entry is None or head is None or head.deleted:
            return False
        if self._signer and bytes(head.signer_public_key) != self._signer:
            return False  # the user wants a version signed by this key
        return entry.matches(state, head.version, bytes(head.manifest_digest))

    def _upload(
        self, file: LocalFile, remote: str, if_version: int | None, progress: TransferProgress, *, tree: bool
    ) -> tuple[Outcome, Entry | None]:
        """Upload one file; returns its outcome and the cache entry to record (None: do not cache).

        In a tree a file's failure becomes a "failed" outcome and the others go on, unless it
        dooms the whole run (server gone, credentials refused, a bug): that one is raised.
        """
        try:
            result = self.client.put_file(
                file.path, remote, if_version=if_version, sign_key=self.sign_key, progress=progress.for_file()
            )
        except Exception as exc:  # noqa: BLE001 - one failed file must not stop a tree
            if not tree or errors.classify(exc)[1] in _FATAL:
                raise
            return Outcome(remote, file.path, "failed", error=errors.describe(exc),
                           exit_code=errors.exit_code(exc)), None
        finally:
            progress.file_done()
        v = result.version
        outcome = Outcome(
            remote, file.path, "unchanged" if result.unchanged else "uploaded", v.version, v.size,
            result.bytes_read, result.bytes_sent, result.chunks_total, result.chunks_sent,
            manifest_delta=result.manifest_delta,
        )
        try:
            _, after = observe(file.path)
        except OSError:
            return outcome, None
        if not after.same_file(file.state):
            return outcome, None  # it changed while it was read: the next run must read it again
        return outcome, Entry(remote, file.state, v.version, bytes(v.manifest_digest))

    @staticmethod
    def _account(stats: PutStats, outcome: Outcome) -> None:
        if outcome.status == "failed":
            stats.files_failed += 1
            return
        stats.files_uploaded += outcome.status == "uploaded"
        stats.files_same_content += outcome.status == "unchanged"
        stats.bytes_read += outcome.bytes_read
        stats.bytes_sent += outcome.bytes_sent
        stats.chunks_total += outcome.chunks_total
        stats.chunks_sent += outcome.chunks_sent

    def _remember(self, entries: Iterable[Entry]) -> None:
        # Recorded even under --no-cache: that run read every file, so its entries are fresh.
        self.rt.cache.put_many(self.rt.settings.server, self.rt.namespace, entries)

    # ---- one file, one stream -----------------------------------------------------------------------

    def put_file(self, local: Path, remote: str, *, if_version: int | None = None) -> PutReport:
        """Upload one regular file (skipped when the cache and the server's head say it is unchanged)."""
        started = time.perf_counter()
        path = normalize_path(remote)
        abs_path = os.path.abspath(local)
        st, state = observe(abs_path)
        report = PutReport("file", str(local), path)
        report.stats.files_scanned = 1
        report.stats.bytes_scanned = st.st_size
        file = LocalFile(Path(abs_path).name, abs_path, state)
        if self.use_cache and self._skip_single(file, path, if_version, report):
            report.stats.seconds = time.perf_counter() - started
            return report
        with TransferProgress(self.rt.out, f"put {path}", st.st_size) as progress:
            outcome, entry = self._upload(file, path, if_version, progress, tree=False)
        self._account(report.stats, outcome)
        report.outcomes.append(outcome)
        if entry is not None:
            self._remember([entry])
        report.stats.seconds = time.perf_counter() - started
        return report

    def _skip_single(self, file: LocalFile, path: str, if_version: int | None, report: PutReport) -> bool:
        entry = self.rt.cache.get(self.rt.settings.server, self.rt.namespace, path)
        if entry is None or not entry.state.trusted or not entry.state.same_file(file.state):
            return False  # decided locally, without asking the server
        try:
            head: pb.VersionInfo | None = self.client.stat(path)
        except NotFoundError:
            head = None
        if not self._skippable(entry, file.state, head):
            return False
        assert head is not None
        if if_version is not None and if_version != head.version:
            raise VersionConflictError(path, if_version, head.version)
        report.stats.files_skipped_unchanged = 1
        report.outcomes.append(Outcome(path, file.path, "skipped", head.version, head.size))
        return True

    def put_stream(self, remote: str, *, if_version: int | None = None) -> PutReport:
        """Upload standard input (``put - REMOTE``)."""
        started = time.perf_counter()
        path = normalize_path(remote)
        report = PutReport("stream", "-", path)
        with TransferProgress(self.rt.out, f"put {path}", 0) as progress:
            result = self.client.put_stream(
                sys.stdin.buffer, path, if_version=if_version, sign_key=self.sign_key,
                mtime_ns=time.time_ns(), mode=0o644, progress=progress.for_file(),
            )
        v = result.version
        outcome = Outcome(path, "-", "unchanged" if result.unchanged else "uploaded", v.version, v.size,
                          result.bytes_read, result.bytes_sent, result.chunks_total, result.chunks_sent)
        report.stats.files_scanned = 1
        report.stats.bytes_scanned = result.bytes_read
        self._account(report.stats, outcome)
        report.outcomes.append(outcome)
        report.stats.seconds = time.perf_counter() - started
        return report

    # ---- trees --------------------------------------------------------------------------------------

    def put_tree(
        self, local: Path, prefix: str, *, excludes: Excludes, follow_symlinks: bool = False, delete: bool = False
    ) -> PutReport:
        """Upload every regular file under ``local`` to ``prefix`` + its relative path."""
        started = time.perf_counter()
        found = walk(local, excludes, follow_symlinks=follow_symlinks)
        report = PutReport("tree", str(local), prefix)
        stats = report.stats
        stats.files_scanned = len(found.files)
        stats.bytes_scanned = sum(f.state.size for f in found.files)
        stats.files_excluded = found.excluded
        stats.symlinks_skipped = found.symlinks_skipped
        stats.other_skipped = len(found.skipped) - found.symlinks_skipped
        for s in found.skipped:
            report.notes.append(f"{s.rel}: {s.reason}")
            if s.error:
                report.outcomes.append(Outcome(prefix + s.rel, os.path.join(str(local), s.rel), "failed",
                                               error=s.reason, exit_code=errors.ERROR))
                stats.files_failed += 1
        heads = self._list_heads(prefix) if (self.use_cache or delete) else {}
        cached = self.rt.cache.under(self.rt.settings.server, self.rt.namespace, prefix) if self.use_cache else {}
        todo: list[tuple[LocalFile, str]] = []
        for file in found.files:
            try:
                remote = remote_join(prefix, file.rel)
            except Exception as exc:  # noqa: BLE001 - e.g. a name that is not valid UTF-8
                # Not a usage error here: the tree holds a name the store cannot represent.
                report.outcomes.append(Outcome(prefix + file.rel, file.path, "failed",
                                               error=f"name cannot be stored: {errors.describe(exc)}",
                                               exit_code=errors.ERROR))
                stats.files_failed += 1
                continue
            if self.use_cache and self._skippable(cached.get(remote), file.state, heads.get(remote)):
                stats.files_skipped_unchanged += 1
            else:
                todo.append((file, remote))
        self._run_uploads(todo, report)
        if delete:
            self._delete_missing(found, prefix, heads, excludes, report)
        stats.seconds = time.perf_counter() - started
        return report

    def _list_heads(self, prefix: str) -> dict[str, pb.VersionInfo]:
        page = self.client.server_info().max_page_size or 1000
        return {v.path: v for v in self.client.iter_files(prefix, page_size=page)}

    def _upload_small(
        self, group: list[tuple[LocalFile, str]], progress: TransferProgress
    ) -> list[tuple[Outcome, Entry | None]]:
        """Upload a group of small files together (see cli/smallfiles.py)."""
        done = []
        for r in upload_group(self.client, self.rt.settings.server, group, sign_key=self.sign_key):
            report = progress.for_file()
            if report is not None:
                report(r.file.state.size, r.file.state.size)
            progress.file_done()
            if r.error is not None:
                if errors.classify(r.error)[1] in _FATAL:
                    raise r.error
                done.append((Outcome(r.remote, r.file.path, "failed", error=errors.describe(r.error),
                                     exit_code=errors.exit_code(r.error)), None))
                continue
            assert r.version is not None
            done.append((Outcome(
                r.remote, r.file.path, "unchanged" if r.unchanged else "uploaded", r.version.version,
                r.version.size, r.bytes_read, r.bytes_sent, r.chunks_total, r.chunks_sent,
            ), r.entry))
        return done

    def _run_uploads(self, todo: list[tuple[LocalFile, str]], report: PutReport) -> None:
        if not todo:
            return
        total = sum(f.state.size for f, _ in todo)
        small = [item for item in todo if item[0].state.size <= SMALL_FILE_MAX]
        large = [item for item in todo if item[0].state.size > SMALL_FILE_MAX]
        pending_entries: list[Entry] = []
        with TransferProgress(self.rt.out, "put", total, len(todo)) as progress, \
                ThreadPoolExecutor(self.jobs, thread_name_prefix="stratus-put") as pool:
            tasks = iter([
                *((self._upload_small, group) for group in groups(small)),
                *((lambda item, p: [self._upload(item[0], item[1], None, p, tree=True)], item) for item in large),
            ])
            try:
                for results in run_bounded(pool, tasks, self.jobs * 2, progress):
                    for outcome, entry in results:
                        self._account(report.stats, outcome)
                        report.outcomes.append(outcome)
                        if entry is not None:
                            pending_entries.append(entry)
                    if len(pending_entries) >= _CACHE_FLUSH_EVERY:
                        self._remember(pending_entries)
                        pending_entries = []
            finally:
                self._remember(pending_entries)

    def _delete_missing(
        self, found: WalkResult, prefix: str, heads: dict[str, pb.VersionInfo], excludes: Excludes, report: PutReport
    ) -> None:
        # Anything present locally in any form (even a skipped symlink) keeps its remote copy.
        rels = [f.rel for f in found.files] + [s.rel for s in found.skipped]
        local = {_remote_name(prefix, rel) for rel in rels}
        gone = [p for p in heads if p not in local and not excludes.excludes_file(p[len(prefix):])]
        forgotten = []
        for path in sorted(gone):
            try:
                tomb = self.client.delete(path, if_version=heads[path].version)
            except Exception as exc:  # noqa: BLE001 - reported per file
                report.outcomes.append(Outcome(path, "", "failed", error=errors.describe(exc),
                                               exit_code=errors.exit_code(exc)))
                report.stats.files_failed += 1
                continue
            report.outcomes.append(Outcome(path, "", "deleted", tomb.version))
            report.stats.files_deleted += 1
            forgotten.append(path)
        self.rt.cache.forget(self.rt.settings.server, self.rt.namespace, forgotten)


def _remote_name(prefix: str, rel: str) -> str:
    """The remote path of ``rel`` as the server stores it (NFC), or as is when it is not a valid path."""
    try:
        return remote_join(prefix, rel)
    except Exception:  # noqa: BLE001 - such a name was reported as failed; it just must not match
        return prefix + rel
