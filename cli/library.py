"""The StratusVault client library: ``from cli.library import Client``.

This module is the stable import path for scripts. Everything a backup script needs is here:
:class:`Client`, the values it returns (frozen dataclasses, never protobuf), the reports of
transfers, the progress protocols and the typed exceptions of :mod:`cas.errors`. Names not listed
in ``__all__`` (and the modules behind them) may change between releases.

::

    from cli.library import Client, NotFoundError

    with Client() as vault:                      # the same settings as the `stratus` command
        report = vault.put("/srv/data", "backups/data/")
        for failed in report.failures:
            print(failed.local, failed.error)
        print(vault.stat("backups/data/db.sqlite").version)

Settings: ``Client()`` resolves exactly what ``stratus`` resolves (cli/settings.py): the
arguments, then the ``STRATUS_*`` environment variables, then the client config file, then the
defaults; and it shares the CLI's state cache and manifest cache (``STRATUS_CACHE_DIR``), so a
script and the CLI make the same skip decisions and send the same manifest deltas.

Errors: every method raises the typed exceptions re-exported here (all subclasses of
:class:`CasError`); :class:`UsageError` means the call cannot work as given (bad settings,
conflicting arguments) and nothing was done. A tree put or get never raises for one file: each
file's failure is its outcome in the report, and the rest goes on.

Progress: ``put(progress=...)`` takes an :class:`UploadProgress` (``start``, ``advance``,
``file_done``, ``finish``; called from worker threads), ``get(progress=...)`` a callable that
receives :class:`ProgressEvent` values (``start``, ``bytes``, ``file``).

The client is synchronous and thread-safe for concurrent calls of the browsing methods; one
transfer runs its own worker threads (``jobs``). This module imports no terminal code (no typer,
no rich); gRPC and the transfer engines load on first use.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from cas.errors import (
    BackendUnavailableError,
    CasError,
    CommitUnansweredError,
    IntegrityError,
    InvalidInputError,
    InvalidPathError,
    InvalidPolicyError,
    LimitExceededError,
    MissingChunksError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerUnavailableError,
    SignatureError,
    StorageFullError,
    UnauthenticatedError,
    VersionConflictError,
)
from cas.paths import normalize_path, normalize_prefix
from cas.retention import Duration, RetentionPolicy, parse_count
from cli.errors import UsageError
from cli.lazy import lazy
from cli.results import (
    ByteRange,
    Changes,
    DiffResult,
    Event,
    ForgetPath,
    ForgetReport,
    Page,
    ServerInfo,
    StoreStats,
    Version,
    VersionVerdict,
)
from cli.settings import ConnectionSettings, cache_dir, resolve
from cli.timeparse import parse_time_ms

if TYPE_CHECKING:
    from cli.client import StratusClient
    from cli.push import NoProgress, UploadProgress, UploadReport, UploadStats
    from cli.restore import GetOutcome, GetReport, GetStats, ProgressEvent
    from cli.statecache import StateCache
    from cli.sync import SyncAction, SyncEngine, SyncOptions, SyncReport
    from cli.upload import FileOutcome

    GetProgress = Callable[[ProgressEvent], None]
else:  # gRPC, sqlite and the transfer engines load on first use
    StratusClient = lazy("cli.client", "StratusClient")
    StateCache = lazy("cli.statecache", "StateCache")

# Names loaded on first use from the engines (see __getattr__): reports, outcomes, progress.
_ENGINE_NAMES = {
    "UploadReport": "cli.push", "UploadStats": "cli.push", "UploadProgress": "cli.push", "NoProgress": "cli.push",
    "FileOutcome": "cli.upload",
    "SyncAction": "cli.sync", "SyncEngine": "cli.sync", "SyncOptions": "cli.sync", "SyncReport": "cli.sync",
    "GetReport": "cli.restore", "GetStats": "cli.restore", "GetOutcome": "cli.restore", "ProgressEvent": "cli.restore",
}

__all__ = [
    "BackendUnavailableError", "ByteRange", "CasError", "Changes", "Client", "CommitUnansweredError", "DiffResult",
    "Event", "FileOutcome", "ForgetPath", "ForgetReport", "GetOutcome", "GetReport", "GetStats", "IntegrityError",
    "InvalidInputError", "InvalidPathError", "InvalidPolicyError", "LimitExceededError", "MissingChunksError",
    "NoProgress", "NotFoundError", "Page", "PermissionDeniedError", "ProgressEvent", "RateLimitedError",
    "ServerInfo", "ServerUnavailableError", "SignatureError", "StorageFullError", "StoreStats",
    "SyncAction", "SyncEngine", "SyncOptions", "SyncReport",
    "UnauthenticatedError", "UploadProgress", "UploadReport", "UploadStats", "UsageError", "Version",
    "VersionConflictError", "VersionVerdict", "parse_as_of", "retention_policy",
]

AsOf = dt.datetime | int | str  # a datetime, Unix milliseconds, or ISO 8601 / an age such as "2h"


def __getattr__(name: str) -> object:
    """The engines' report, outcome and progress types, imported with their engine on first use."""
    module = _ENGINE_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def parse_as_of(when: AsOf | None) -> int | None:
    """A point in time as Unix milliseconds (None stays None).

    ``when``: a datetime (a naive one is local time), an int of Unix milliseconds, or a string:
    ISO 8601 (``2024-05-01T12:00``, ``...Z``) or an age meaning "that long ago" (``90m``, ``2h``,
    ``3d``), as ``--as-of`` reads it (cli/timeparse.py). UsageError for anything else.
    """
    if when is None:
        return None
    if isinstance(when, bool):
        raise UsageError(f"as_of: expected a datetime, Unix milliseconds or a string, got {when!r}")
    if isinstance(when, dt.datetime):
        aware = when if when.tzinfo is not None else when.astimezone()
        return int(aware.timestamp() * 1000)
    if isinstance(when, int):
        if when <= 0:
            raise UsageError(f"as_of: Unix milliseconds must be positive, got {when}")
        return when
    if isinstance(when, str):
        return parse_time_ms(when)
    raise UsageError(f"as_of: expected a datetime, Unix milliseconds or a string, got {type(when).__name__}")


def retention_policy(
    *, keep_last: int | str = 0, keep_hourly: int | str = 0, keep_daily: int | str = 0, keep_weekly: int | str = 0,
    keep_monthly: int | str = 0, keep_yearly: int | str = 0, keep_within: str = "",
) -> RetentionPolicy:
    """A retention policy from restic-style values: counts are numbers, -1 or ``"unlimited"``;
    ``keep_within`` a duration such as ``"1y2m3d4h"``. InvalidPolicyError for a bad value or when
    no rule is set (a forget without any rule is refused, never "keep everything")."""
    counts = {"last": keep_last, "hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly,
              "monthly": keep_monthly, "yearly": keep_yearly}
    policy = RetentionPolicy(**{rule: parse_count(value, rule) for rule, value in counts.items()},
                             within=Duration.parse(keep_within))
    if policy.is_empty():
        raise InvalidPolicyError("no retention rule given: set at least one --keep-* option (nothing was removed)")
    return policy


def _sign_key(sign_key: object) -> object:
    """A private key object, PEM bytes, or the path of a key file (loaded here)."""
    if isinstance(sign_key, str | os.PathLike):
        from cas import signing

        return signing.load_private_key(Path(sign_key))
    return sign_key


class Client:
    """A connection to a StratusVault server, with the CLI's settings and caches (see the module docstring).

    ``server`` (HOST:PORT), ``tls_dir``, ``insecure``, ``client_name`` and ``namespace`` override
    the environment and the config file, as the CLI's flags do. Settings are resolved and the
    channel is opened at construction (no traffic until the first call); UsageError when the
    settings cannot work (e.g. no TLS material and not insecure).
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        tls_dir: str | os.PathLike[str] | None = None,
        insecure: bool | None = None,
        client_name: str | None = None,
        namespace: str | None = None,
    ) -> None:
        settings = resolve(server=server, tls_dir=os.fspath(tls_dir) if tls_dir is not None else None,
                           insecure=insecure, client_name=client_name, namespace=namespace)
        self._open(settings)

    @classmethod
    def from_settings(cls, settings: ConnectionSettings) -> Client:
        """A client for already resolved settings (as the CLI's ``Runtime`` holds them)."""
        client = cls.__new__(cls)
        client._open(settings)
        return client

    def _open(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._cache: StateCache | None = None
        self._namespace: str | None = None
        self.connection: StratusClient = StratusClient.connect(
            settings.server, tls_dir=settings.tls_dir, insecure=settings.insecure,
            client_name=settings.client_name, manifest_cache=cache_dir() / "manifests",
            namespace=settings.namespace,
        )
        """The low-level connection (protobuf in and out); for what this class does not cover."""

    # ---- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and the state cache (in-flight calls are cancelled)."""
        self.connection.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def state_cache(self) -> StateCache:
        """The local state cache shared with the CLI (opened on first use)."""
        if self._cache is None:
            self._cache = StateCache(cache_dir())
        return self._cache

    @property
    def cache_problem(self) -> str | None:
        """Why the state cache could not be used in this session (None: it worked or was not opened)."""
        return self._cache.problem if self._cache is not None else None

    @property
    def namespace(self) -> str:
        """The namespace the server puts this client in (asked once)."""
        if self._namespace is None:
            self._namespace = self.connection.server_info().namespace
        return self._namespace

    # ---- transfers ------------------------------------------------------------------------------------

    def put(
        self,
        local: str | os.PathLike[str] | BinaryIO | bytes,
        remote: str,
        *,
        if_version: int | None = None,
        sign_key: object = None,
        excludes: Iterable[str] = (),
        delete: bool = False,
        follow_symlinks: bool = False,
        jobs: int = 8,
        use_cache: bool = True,
        progress: UploadProgress | None = None,
    ) -> UploadReport:
        """Upload a file, a folder (tree), a binary stream or bytes; only chunks the server lacks travel.

        - a file goes to ``remote`` (``remote`` ending in ``/``: to ``remote`` + the file's name);
          a file unchanged since the last put (state cache) and still the head is skipped unread;
        - a folder goes to the prefix ``remote``, one path per regular file; ``excludes``
          (gitignore-style patterns), ``follow_symlinks`` and ``delete`` (delete remote files under
          the prefix that no longer exist locally) apply to folders;
        - a stream (anything with ``read``) or bytes goes to ``remote`` as one file.

        ``if_version`` (single files, streams, bytes): commit only if the head is that version (0:
        only if the path does not exist), else VersionConflictError. ``sign_key``: an Ed25519
        private key object, its PEM bytes, or the path of a key file (``stratus keys init``).

        A single file, stream or bytes raises on failure (then nothing was committed, except after
        CommitUnansweredError). A tree never raises for one file: see :attr:`UploadReport.failures`,
        :attr:`UploadReport.stopped` (an error that stopped the run) and ``first_error``.
        """
        from cli.push import Uploader, UploadOptions
        from cli.statecache import CacheScope
        from cli.tree import Excludes, remote_prefix

        stream = _as_stream(local)
        is_tree = stream is None and Path(local).is_dir()  # type: ignore[arg-type]
        if is_tree and if_version is not None:
            raise UsageError("--if-version applies to a single file, not to a folder")
        if not is_tree and delete:
            raise UsageError("--delete applies to folders")
        options = UploadOptions(
            jobs=jobs, sign_key=_sign_key(sign_key), use_cache=use_cache,
            excludes=excludes if isinstance(excludes, Excludes) else Excludes(list(excludes)),
            follow_symlinks=follow_symlinks, delete=delete, **({"progress": progress} if progress else {}),
        )
        uploader = Uploader(self.connection, CacheScope(self.state_cache, self.settings.server, self.namespace),
                            options)
        if stream is not None:
            return uploader.put_stream(stream, remote, if_version=if_version)
        source = Path(local)  # type: ignore[arg-type]
        if is_tree:
            return uploader.put_tree(source, remote_prefix(remote))
        target = remote + source.name if remote.endswith("/") else remote
        return uploader.put_file(source, target, if_version=if_version)

    def get(
        self,
        remote: str,
        local: str | os.PathLike[str] | BinaryIO,
        *,
        version: int | None = None,
        as_of: AsOf | None = None,
        verify_key: object = None,
        jobs: int = 8,
        use_cache: bool = True,
        progress: GetProgress | None = None,
    ) -> GetReport:
        """Download a file, or restore a folder, fetching only the chunks the local copy lacks.

        ``remote`` names a folder when it ends in ``/``, is the root, or is not a file but has
        files under it (the CLI's rule); a folder is restored below ``local`` as it was at one
        point in time (now, or ``as_of``). A file goes to ``local`` (into it when it is a folder),
        or into ``local`` when that is a binary writer (anything with ``write``).

        ``version`` picks a version of a file, ``as_of`` (datetime, Unix ms, ISO 8601 or an age
        such as ``"2h"``) the newest at that time; not both. ``verify_key`` (public key object,
        raw bytes, hex/base64/PEM text or a key file) requires a valid signature by that key
        (SignatureError otherwise, before anything is written).

        A single file raises on failure (the old local file is left untouched). A tree never
        raises for one file: each failure is a ``failed`` outcome of :attr:`GetReport.outcomes`.
        """
        from cli.restore import Downloader, GetOptions

        if version is not None and as_of is not None:
            raise UsageError("give either --version or --as-of, not both")
        as_of_ms = parse_as_of(as_of)
        key = None
        if verify_key is not None:
            from cas import signing

            key = signing.load_public_key(verify_key)  # type: ignore[arg-type]
        options = GetOptions(self.settings.server, self.namespace, use_cache, key, jobs, progress)
        downloader = Downloader(self.connection, self.state_cache, options)
        if hasattr(local, "write"):
            if remote.endswith("/"):
                raise UsageError("only a single file can go to a stream")
            return downloader.get_stream(remote, local, version=version, as_of_ms=as_of_ms,  # type: ignore[arg-type]
                                         label="standard output" if local is _stdout() else "the output")
        target = downloader.locate(remote, version=version, as_of_ms=as_of_ms)
        if isinstance(target, str):
            if version is not None:
                raise UsageError(f"{remote} is a folder: --version selects a version of one file; use --as-of")
            return downloader.get_tree(target, Path(local), as_of_ms=as_of_ms)  # type: ignore[arg-type]
        return downloader.get_file(target, Path(local))  # type: ignore[arg-type]

    # ---- sync -------------------------------------------------------------------------------------------

    def sync_engine(
        self, local: str | os.PathLike[str], prefix: str, *, options: SyncOptions | None = None,
        progress: Callable[[SyncAction], None] | None = None,
    ) -> SyncEngine:
        """The two-way sync engine of folder ``local`` and remote ``prefix`` (close it, or use ``with``).

        ``engine.run_once()`` reconciles once and returns a :class:`SyncReport`;
        ``engine.watch(stop_event)`` keeps both in step until the event is set. ``progress`` receives
        every :class:`SyncAction` (from the engine's thread). UsageError when the folder already
        syncs with another prefix or namespace, or another engine runs on it.
        """
        from cli.sync import SyncEngine
        from cli.tree import remote_prefix

        target = remote_prefix(prefix)
        normalize_prefix(target)
        return SyncEngine(self.connection, local, target, server=self.settings.server, namespace=self.namespace,
                          options=options, progress=progress)

    def sync(
        self, local: str | os.PathLike[str], prefix: str, *, jobs: int = 8,
        progress: Callable[[SyncAction], None] | None = None,
    ) -> SyncReport:
        """One two-way reconciliation of folder ``local`` and remote ``prefix`` (README, "Sync").

        Per-path failures are in :attr:`SyncReport.failures` (``first_error``); a failure of the
        server or the credentials is raised.
        """
        from cli.sync import SyncOptions

        with self.sync_engine(local, prefix, options=SyncOptions(jobs=jobs), progress=progress) as engine:
            return engine.run_once()

    # ---- browsing ---------------------------------------------------------------------------------------

    def ls(self, prefix: str = "", *, as_of: AsOf | None = None, include_deleted: bool = False,
           page_size: int = 0) -> Iterator[Version]:
        """Every file under ``prefix`` (heads, or as of ``as_of``), walking all pages lazily.

        ``include_deleted`` also yields paths whose head is a delete marker; ``page_size`` 0 uses
        the server's largest page.
        """
        normalize_prefix(prefix)  # a clear error at the call, before any traffic
        as_of_ms = parse_as_of(as_of) or 0
        return self._walk(prefix, as_of_ms, include_deleted, page_size)

    def _walk(self, prefix: str, as_of_ms: int, include_deleted: bool, page_size: int) -> Iterator[Version]:
        size = page_size or self.connection.server_info().max_page_size or 1000
        for message in self.connection.iter_files(prefix, as_of_ms=as_of_ms, include_deleted=include_deleted,
                                                  page_size=size):
            yield Version.from_message(message)

    def ls_page(self, prefix: str = "", *, limit: int = 0, page_token: str = "", as_of: AsOf | None = None,
                include_deleted: bool = False) -> Page:
        """One page of files under ``prefix`` (``limit`` 0: the server's default page size); pass
        ``page.next_page_token`` back as ``page_token`` for the next one ("" on the last page)."""
        normalize_prefix(prefix)
        files, token = self.connection.list_files(prefix, limit, page_token, parse_as_of(as_of) or 0,
                                                  include_deleted)
        return Page([Version.from_message(f) for f in files], token)

    def log(self, path: str, *, limit: int = 0) -> list[Version]:
        """The versions of ``path``, newest first (``limit`` 0: all), delete markers included."""
        return [Version.from_message(v) for v in self.connection.list_versions(normalize_path(path), limit)]

    def stat(self, path: str, *, version: int | None = None, as_of: AsOf | None = None) -> Version:
        """One version of ``path``: the head, version ``version``, or the newest at ``as_of``.

        NotFoundError when there is none (also when the head is a delete marker and no version
        was named).
        """
        info = self.connection.stat(normalize_path(path), version=version, as_of_ms=parse_as_of(as_of))
        return Version.from_message(info)

    def rm(self, path: str, *, if_version: int | None = None) -> Version:
        """Delete ``path``: writes a delete marker (returned); earlier versions stay readable.

        ``if_version``: only if the head is that version, else VersionConflictError.
        """
        return Version.from_message(self.connection.delete(normalize_path(path), if_version=if_version))

    def forget(
        self, prefix: str = "", *, keep_last: int | str = 0, keep_hourly: int | str = 0, keep_daily: int | str = 0,
        keep_weekly: int | str = 0, keep_monthly: int | str = 0, keep_yearly: int | str = 0, keep_within: str = "",
        dry_run: bool = False,
    ) -> ForgetReport:
        """Remove old versions of every path under ``prefix`` by restic's forget rules, each path on its
        own (README "Retention"): the head always stays; the rules are those of :func:`retention_policy`.

        ``dry_run`` removes nothing and reports what would go. Never raises for one path: its
        failure is in the report (``failures``, ``first_error``) and the other paths go on.
        InvalidPolicyError (nothing sent) for a bad or empty policy.
        """
        normalize_prefix(prefix)
        policy = retention_policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
                                  keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
                                  keep_within=keep_within)
        from cli.rpc_errors import map_item_error
        from proto import stratus_pb2 as pb

        message = pb.RetentionPolicy(keep_within=str(policy.within), **{
            f"keep_{rule}": getattr(policy, rule) for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
        })
        paths = [
            ForgetPath(r.path, [VersionVerdict.from_message(v) for v in r.versions], r.removed,
                       map_item_error(r.error) if r.HasField("error") else None)
            for r in self.connection.forget(prefix, message, dry_run)
        ]
        return ForgetReport(prefix, policy, dry_run, paths)

    def diff(self, path: str, from_version: int = 0, to_version: int = 0) -> DiffResult:
        """What changed from ``from_version`` (0: the one before ``to_version``) to ``to_version``
        (0: the head): changed byte ranges, new and shared chunks."""
        return DiffResult.from_message(self.connection.diff(normalize_path(path), from_version, to_version))

    def read(self, path: str, *, version: int | None = None, as_of: AsOf | None = None) -> bytes:
        """The content of a version in memory, verified (small files: it holds the whole file)."""
        return self.connection.get_bytes(normalize_path(path), version=version, as_of_ms=parse_as_of(as_of))

    # ---- change feed ------------------------------------------------------------------------------------

    def watch(self, prefix: str = "", *, since: str = "") -> Generator[Event, None, None]:
        """Changes as they happen (blocks for the next one). ``since``: "" only new changes, "0"
        from the beginning, or an event's ``cursor`` to resume after it. Closing the iterator (or
        leaving a ``for`` loop) ends the call."""
        normalize_prefix(prefix)  # a clear error at the call, before any traffic
        return self._follow(prefix, since)

    def _follow(self, prefix: str, since: str) -> Generator[Event, None, None]:
        events = self.connection.watch(prefix, since)
        try:
            for message in events:
                yield Event.from_message(message)
        finally:
            events.close()  # cancels the call

    def changes(self, since: str = "", *, limit: int = 0, prefix: str = "") -> Changes:
        """The changes after cursor ``since`` ("" from the beginning), without waiting; pass
        ``changes.cursor`` as ``since`` next time."""
        normalize_prefix(prefix)
        events, cursor = self.connection.changes(since, limit, prefix)
        return Changes([Event.from_message(e) for e in events], cursor)

    # ---- the server ---------------------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """Who the server says you are, its chunking parameters and limits, and store statistics (fresh)."""
        return ServerInfo.from_message(self.connection.info())


def _as_stream(local: object) -> BinaryIO | None:
    """``local`` as a readable binary stream when it is one or is bytes; None for a path."""
    if isinstance(local, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(local))
    if hasattr(local, "read"):
        return local  # type: ignore[return-value]
    if not isinstance(local, str | os.PathLike):
        raise UsageError(f"put: expected a path, a binary stream or bytes, got {type(local).__name__}")
    return None


def _stdout() -> object:
    """The binary standard output of the moment (``stratus get REMOTE -`` writes there)."""
    import sys

    return getattr(sys.stdout, "buffer", None)
