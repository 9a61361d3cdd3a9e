"""The sync engine: keeps a local folder and a remote prefix in step, both ways (``stratus sync``).

One *pass* looks at a set of paths (every path for a full pass), decides each with the pure
planner (cli/syncplan.py), carries the decisions out (cli/syncexec.py) and records the results in
the folder's state (cli/syncstate.py). :meth:`SyncEngine.run_once` repeats full passes until one
has nothing to do (a conflict needs two: rename + download, then the copy's upload);
:meth:`SyncEngine.watch` does a full pass, then a pass over the paths that local file events
(``watchfiles``) and the remote change feed (``Watch``, cli/syncremote.py) name, plus a full
pass every ``rescan_seconds`` because file watchers miss events.

Ordering and crash safety: within a pass, files go before folders, and folders are removed
deepest first; a result is recorded only after its action is durable, so ``kill -9`` at any
point leaves a state the next pass converges from (see cli/syncplan.py). A failing path is
retried with exponential backoff (a file still being written: after it settles) and never stops
the others; a failure of the server itself ends a one-shot run (exit code as elsewhere) and makes
the daemon wait and retry.

The engine never prints: every action, failure and retry goes to ``progress(SyncAction)``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cas.digest import new_hasher
from cas.errors import CasError, LocalChangedError, NotFoundError, VersionConflictError
from cli.client import StratusClient
from cli.errors import classify
from cli.grouping import GROUP_FILES, SMALL_FILE_MAX, is_fatal
from cli.results import Event, Version
from cli.syncexec import Done, Executor, root_folder
from cli.syncplan import RACY_NS, SETTLE_NS, Act, Base, Decision, Local, Remote, decide, folder_of, is_folder_marker
from cli.syncremote import FeedWatcher, head_of_event, head_of_version, refresh, relative
from cli.syncscan import below, ignored, load_ignores, local_of, look, scan, stamp_key
from cli.syncstate import STATE_DIR, SyncState
from cli.tree import Excludes

RETRY_MAX_S = 60.0
SERVER_RETRY_MAX_S = 5.0
WAIT_MAX_S = 10.0  # how long a one-shot run waits for files still being written


@dataclass(frozen=True)
class SyncOptions:
    """How the engine works: transfers in flight, the full-rescan period of ``watch``, passes of a run."""

    jobs: int = 8
    rescan_seconds: float = 600.0
    max_passes: int = 6


@dataclass(frozen=True)
class SyncAction:
    """One thing the engine did or tried (the progress callback's argument, one ``--watch`` log line).

    ``action``: upload, download, delete_local, delete_remote, conflict, record, forget, wait,
    keep_folder, remote_error (the change feed dropped; ``path`` empty) or error.
    """

    action: str
    path: str
    ok: bool = True
    error: str = ""
    error_kind: str = ""
    detail: str = ""
    bytes_sent: int = 0
    bytes_fetched: int = 0
    time_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class SyncReport:
    """What a run did: every action, how many passes, what still waits, the first failure."""

    actions: list[SyncAction] = field(default_factory=list)
    passes: int = 0
    pending: list[str] = field(default_factory=list)
    first_error: BaseException | None = None

    def count(self, action: str) -> int:
        """How many successful actions of a kind."""
        return sum(1 for a in self.actions if a.ok and a.action == action)

    @property
    def failures(self) -> list[SyncAction]:
        """The actions that failed."""
        return [a for a in self.actions if not a.ok]


Progress = Callable[[SyncAction], None]
_TRANSFERS = (Act.UPLOAD, Act.DOWNLOAD, Act.DELETE_REMOTE, Act.CONFLICT)


class _Stop(Exception):
    """A failure of the server or the credentials: the pass ends here."""


class SyncEngine:
    """Syncs ``local`` with ``prefix`` on the server of ``client`` (see the module docstring).

    ``server`` and ``namespace`` bind the folder's state (a folder syncs with one prefix of one
    namespace); UsageError when it already syncs with something else or another engine runs on it.
    """

    def __init__(self, client: StratusClient, local: str | os.PathLike[str], prefix: str, *, server: str,
                 namespace: str, options: SyncOptions | None = None, progress: Progress | None = None) -> None:
        self.client, self.prefix = client, prefix
        self.options = options or SyncOptions()
        self._progress = progress
        self.root_path = Path(local)
        self.root_path.mkdir(parents=True, exist_ok=True)
        self.state = SyncState(self.root_path)
        try:
            self.state.bind(server, namespace, prefix)
            self.root = root_folder(self.root_path)
        except BaseException:
            self.state.close()
            raise
        self.executor = Executor(client, self.root, prefix, self.state.client_id())
        self._pool = ThreadPoolExecutor(max(1, self.options.jobs), thread_name_prefix="sync")
        self._report = SyncReport()
        self._followups: set[str] = set()  # paths an action created (conflict copies): looked at next
        self.ignores: Excludes = load_ignores(self.root_path)

    def close(self) -> None:
        """Release the folder (its lock, fds and worker threads)."""
        self._pool.shutdown(wait=True)
        self.root.close()
        self.state.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- one-shot ---------------------------------------------------------------------------------

    def run_once(self) -> SyncReport:
        """Full passes until nothing is left to do (or ``max_passes``); the server's failure is raised
        after the report's actions were emitted (``first_error`` holds per-path failures)."""
        report = self._report = SyncReport()
        waited = 0.0
        while report.passes < self.options.max_passes:
            report.passes += 1
            if self._full_pass():
                continue
            settle = self._waiting_until()
            if settle is None or waited >= WAIT_MAX_S:
                break
            pause = max(0.0, (settle - time.time_ns()) / 1e9) + 0.01
            waited += pause
            time.sleep(pause)
        report.pending = self.state.due_problems(1 << 62)
        return report

    def _waiting_until(self) -> int | None:
        """When the earliest file still being written may be taken (None: none waits)."""
        row = self.state.db.execute("SELECT MIN(next_ns) FROM problems WHERE kind='waiting'").fetchone()
        return row[0] if row and row[0] is not None else None

    # ---- watch ------------------------------------------------------------------------------------

    def watch(self, stop: threading.Event) -> None:
        """Keep the folder in step until ``stop`` is set (see the module docstring)."""
        inbox: queue.Queue[tuple[str, object]] = queue.Queue()
        # Local events are collected from before the first pass: what changes during it is not missed.
        local = threading.Thread(target=self._watch_local, args=(inbox, stop), name="sync-fs", daemon=True)
        local.start()
        self._full_pass_retrying(stop)
        feed = FeedWatcher(self.client, self.prefix, self.state.meta("cursor") or "0",
                           lambda e: inbox.put(("remote", e)), self._feed_error)
        feed.start()
        next_full = time.monotonic() + self.options.rescan_seconds
        try:
            while not stop.is_set():
                items = self._wait(inbox, next_full, stop)
                if time.monotonic() >= next_full:
                    self._full_pass_retrying(stop)
                    next_full = time.monotonic() + self.options.rescan_seconds
                    continue
                dirty = self._dirty(items) | set(self.state.due_problems(time.time_ns())) | self._followups
                self._followups = set()
                if dirty:
                    self._guarded(lambda d=dirty: self._pass(self._expand(d), time.time_ns()))
        finally:
            feed.stop()

    def _wait(self, inbox: queue.Queue[tuple[str, object]], next_full: float, stop: threading.Event
              ) -> list[tuple[str, object]]:
        """The next events (a short burst is taken together), or none when a retry or rescan is due."""
        retry = self.state.next_retry_ns()
        deadline = next_full if retry is None else min(next_full, time.monotonic() + (retry - time.time_ns()) / 1e9)
        items: list[tuple[str, object]] = []
        try:
            items.append(inbox.get(timeout=max(0.0, min(deadline - time.monotonic(), 1.0))))
        except queue.Empty:
            return items
        end = time.monotonic() + 0.03
        while (left := end - time.monotonic()) > 0:
            try:
                items.append(inbox.get(timeout=left))
            except queue.Empty:
                break
        return items

    def _watch_local(self, inbox: queue.Queue[tuple[str, object]], stop: threading.Event) -> None:
        import watchfiles

        top = str(self.root_path.resolve())
        for changes in watchfiles.watch(top, stop_event=stop, debounce=50, step=20, yield_on_timeout=False,
                                        watch_filter=None, raise_interrupt=False, ignore_permission_denied=True):
            for _, path in changes:
                rel = os.path.relpath(path, top).replace(os.sep, "/")
                if rel != "." and not rel.startswith((STATE_DIR + "/", STATE_DIR, "../")):
                    inbox.put(("local", rel))

    def _feed_error(self, exc: BaseException, delay: float) -> None:
        self._emit(SyncAction("remote_error", "", ok=False, error=f"change feed: {exc}; reconnecting in {delay:.1f} s",
                              error_kind=classify(exc)[1]))

    def _dirty(self, items: list[tuple[str, object]]) -> set[str]:
        dirty: set[str] = set()
        events: list[Event] = []
        for kind, value in items:
            if kind == "local":
                rel = str(value)
                if rel == ".stratusignore":
                    self.ignores = load_ignores(self.root_path)
                dirty.add(rel)
            else:
                events.append(value)  # type: ignore[arg-type]
        if events:
            heads = [(rel, head_of_event(e)) for e in events if (rel := relative(self.prefix, e.path)) is not None]
            dirty.update(self.state.apply_events(heads, events[-1].cursor))
        return dirty

    def _expand(self, dirty: set[str]) -> dict[str, Local | None]:
        """The paths a set of changed names stands for: a folder means everything in and under it."""
        out: dict[str, Local | None] = {}
        for rel in dirty:
            marker = rel if is_folder_marker(rel) else f"{rel}/.stratusfolder"
            names = {rel, marker}
            under = folder_of(marker) + "/"
            names.update(self.state.bases(under))
            names.update(self.state.remotes(under))
            if (self.root_path / folder_of(marker)).is_dir() and not (self.root_path / folder_of(marker)).is_symlink():
                found, unreadable, _ = scan(self.root_path, self.ignores, folder_of(marker))
                out.update((rel, local_of(stamp)) for rel, stamp in found.items())
                names = {n for n in names if not below(n, unreadable)}
            for name in names:
                if name not in out and not ignored(self.ignores, name):
                    out[name] = look(self.root, name)
        return out

    def _full_pass_retrying(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set() and not self._guarded(self._full_pass):
            stop.wait(delay)
            delay = min(delay + 0.5, SERVER_RETRY_MAX_S)

    def _guarded(self, run: Callable[[], object]) -> bool:
        """Run a pass in the daemon; a failure of the server is logged (False), never raised."""
        try:
            run()
            return True
        except (CasError, OSError) as exc:
            self._emit(SyncAction("error", "", ok=False, error=str(exc), error_kind=classify(exc)[1]))
            return False

    # ---- passes -----------------------------------------------------------------------------------

    def _full_pass(self) -> bool:
        """Refresh the remote side, scan the folder, decide and act on every path; True if it acted.

        Paths whose stamp equals their settled base (:meth:`SyncState.known`) are decided
        "nothing" in bulk; paths below a folder that could not be read are left alone this pass.
        """
        self.ignores = load_ignores(self.root_path)
        refresh(self.client, self.state, self.prefix)
        found, unreadable, observed = scan(self.root_path, self.ignores)
        known = self.state.known(RACY_NS)
        paths: dict[str, Local | None] = {rel: local_of(stamp) for rel, stamp in found.items()
                                          if known.get(rel) != stamp_key(stamp)}
        for rel in known:
            if rel not in found and not ignored(self.ignores, rel) and not below(rel, unreadable):
                paths[rel] = None
        return self._pass(paths, observed)

    def _pass(self, paths: dict[str, Local | None], observed: int) -> bool:
        """Decide and act on ``paths`` (their local state as given); True when anything was done."""
        if len(paths) > 256:  # a full pass: one query each beats thousands
            bases, remotes = self.state.bases(), self.state.remotes()
        else:  # a few changed paths: an idle daemon's work must not grow with the folder
            bases = {rel: b for rel in paths if (b := self.state.base(rel)) is not None}
            remotes = {rel: r for rel in paths if (r := self.state.remote(rel)) is not None}
        now = time.time_ns()
        plan: dict[str, tuple[Decision, Local | None]] = {}
        for rel, local in paths.items():
            decision = decide(bases.get(rel), local, remotes.get(rel), now_ns=now)
            if decision.act is Act.HASH and local is not None:
                local = self._hashed(rel, local)
                decision = decide(bases.get(rel), local, remotes.get(rel), now_ns=now) if local else Decision(Act.WAIT)
            if decision.act is Act.STAT:
                remotes[rel] = self._stat(rel, remotes[rel])
                decision = decide(bases.get(rel), local, remotes[rel], now_ns=now)
            plan[rel] = (decision, local)
        acted = self._settle(plan, bases, remotes, observed)
        try:
            acted |= self._transfer(plan, bases, remotes)
        except _Stop as stop:
            if self._report.first_error is None:
                self._report.first_error = stop.__cause__
            raise stop.__cause__ from None  # type: ignore[misc]
        return acted

    def _stat(self, rel: str, known: Remote) -> Remote:
        """The remote head with its content digest (asked with Stat; a delete marker if it is gone)."""
        try:
            head = head_of_version(Version.from_message(self.client.stat(self.prefix + rel)))
        except NotFoundError:
            head = Remote(known.version + 1, True)
        with self.state.transaction():
            self.state.note_remote(rel, head)
        return self.state.remote(rel) or head

    def _hashed(self, rel: str, local: Local) -> Local | None:
        """The local file with its digest (None when it changed or vanished meanwhile)."""
        parts = rel.split("/")
        try:
            with self.root.sub(parts[:-1], create=False) as folder:
                fd = folder.open_regular(parts[-1])
        except (OSError, CasError):
            return None
        if fd is None:
            return None
        try:
            hasher = new_hasher()
            with os.fdopen(os.dup(fd), "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    hasher.update(block)
            after = look(self.root, rel)
        finally:
            os.close(fd)
        if after is None or after.fingerprint != local.fingerprint:
            return None
        return Local(local.fingerprint, hasher.digest().hex())

    def _settle(self, plan: dict[str, tuple[Decision, Local | None]], bases: dict[str, Base],
                remotes: dict[str, Remote], observed: int) -> bool:
        """The decisions that only touch the state (record, refresh, forget, wait), in one transaction."""
        acted = False
        with self.state.transaction():
            for rel, (decision, local) in plan.items():
                act = decision.act
                if act is Act.FORGET:
                    self.state.forget(rel)
                    self.state.clear_problem(rel)
                elif act in (Act.RECORD, Act.REFRESH) and local is not None:
                    remote = remotes[rel]
                    digest = remote.digest or local.digest or bases[rel].digest
                    self.state.set_base(rel, Base(remote.version, digest, local.fingerprint, observed))
                    self.state.clear_problem(rel)
                    if act is Act.RECORD:
                        self._emit(SyncAction("record", rel, detail=f"v{remote.version}"))
                elif act is Act.WAIT:
                    self.state.set_problem(rel, "waiting", "still being written", time.time_ns() + SETTLE_NS)
                elif act is Act.NOTHING:
                    self.state.clear_problem(rel)
        return acted

    def _transfer(self, plan: dict[str, tuple[Decision, Local | None]], bases: dict[str, Base],
                  remotes: dict[str, Remote]) -> bool:
        """Run the transfers: files first (on the pool), then folder removals, deepest first."""
        jobs: list[tuple[Callable[..., object], tuple]] = []
        downloads: list[tuple[str, Remote, Local | None]] = []
        small: list[tuple[str, Local, int]] = []
        folders: list[str] = []
        for rel, (decision, local) in plan.items():
            act = decision.act
            if act is Act.UPLOAD and local is not None:
                if local.fingerprint.size <= SMALL_FILE_MAX:
                    small.append((rel, local, decision.if_version or 0))
                else:
                    jobs.append((self.executor.upload, (rel, local, decision.if_version or 0)))
            elif act is Act.DOWNLOAD:
                downloads.append((rel, remotes[rel], local))
            elif act is Act.DELETE_REMOTE:
                jobs.append((self.executor.delete_remote, (rel, decision.if_version or 0)))
            elif act is Act.CONFLICT and local is not None:
                jobs.append((self.executor.conflict, (rel, local, remotes[rel])))
            elif act is Act.DELETE_LOCAL:
                if is_folder_marker(rel):
                    folders.append(rel)
                else:
                    jobs.append((self.executor.delete_local, (rel, bases[rel])))
        jobs += [(self.executor.download, (group,)) for group in _download_groups(downloads)]
        jobs += [(self.executor.upload_small, (small[i:i + GROUP_FILES],)) for i in range(0, len(small), GROUP_FILES)]
        acted = bool(jobs or folders)
        self._run_jobs(jobs)
        for rel in sorted(folders, key=lambda r: r.count("/"), reverse=True):
            self._run_jobs([(self.executor.delete_local, (rel, bases[rel]))], pooled=False)
        return acted

    def _run_jobs(self, jobs: list[tuple[Callable[..., object], tuple]], *, pooled: bool = True) -> None:
        futures = [(self._pool.submit(fn, *args) if pooled else None, fn, args) for fn, args in jobs]
        stop: BaseException | None = None
        for future, fn, args in futures:
            try:
                result = future.result() if future is not None else fn(*args)
            except BaseException as exc:  # noqa: BLE001 - recorded per path; fatal ones end the pass below
                result = exc
            results = result if isinstance(result, list) else [result]
            paths = [item[0] for item in args[0]] if isinstance(args[0], list) else [args[0]]
            for rel, one in zip(paths, results, strict=False):
                if isinstance(one, BaseException):
                    if is_fatal(one) and stop is None:
                        stop = one
                    self._failed(rel, fn.__name__, one)
                else:
                    self._record(one)  # type: ignore[arg-type]
        if stop is not None:
            raise _Stop() from stop

    def _record(self, done: Done) -> None:
        with self.state.transaction():
            if done.remote is not None:
                self.state.note_remote(done.rel, done.remote)
            if done.forget:
                self.state.forget(done.rel)
            elif done.base is not None:
                self.state.set_base(done.rel, done.base)
            self.state.clear_problem(done.rel)
        self._followups.update(done.extra)
        self._emit(SyncAction(done.action, done.rel, detail=done.detail, bytes_sent=done.bytes_sent,
                              bytes_fetched=done.bytes_fetched))

    def _failed(self, rel: str, action: str, exc: BaseException) -> None:
        kind = classify(exc)[1]
        if isinstance(exc, LocalChangedError):
            delay = SETTLE_NS
        elif isinstance(exc, VersionConflictError):
            delay = 0  # the remote moved: the next pass (after the feed) decides again
        elif is_fatal(exc):  # the server is away: look again soon, it usually comes back in seconds
            delay = int(min(0.5 * ((self._attempts(rel) or 0) + 1), SERVER_RETRY_MAX_S) * 1e9)
        else:
            attempts = (self._attempts(rel) or 0) + 1
            delay = int(min(2 ** attempts * 0.5, RETRY_MAX_S) * 1e9)
        with self.state.transaction():
            self.state.set_problem(rel, kind, str(exc), time.time_ns() + delay)
        if not isinstance(exc, LocalChangedError | VersionConflictError) and self._report.first_error is None:
            self._report.first_error = exc
        self._emit(SyncAction(action, rel, ok=False, error=str(exc), error_kind=kind))

    def _attempts(self, rel: str) -> int | None:
        row = self.state.db.execute("SELECT attempts FROM problems WHERE path=?", (rel,)).fetchone()
        return row[0] if row else None

    def _emit(self, action: SyncAction) -> None:
        self._report.actions.append(action)
        if self._progress is not None:
            self._progress(action)


def _download_groups(items: Iterable[tuple[str, Remote, Local | None]]) -> list[list[tuple[str, Remote, Local | None]]]:
    """Small files in groups (one manifest call and one chunk fetch each), big ones alone."""
    groups: list[list[tuple[str, Remote, Local | None]]] = []
    small: list[tuple[str, Remote, Local | None]] = []
    for item in items:
        if item[1].size > SMALL_FILE_MAX:
            groups.append([item])
            continue
        small.append(item)
        if len(small) >= GROUP_FILES:
            groups.append(small)
            small = []
    if small:
        groups.append(small)
    return groups
