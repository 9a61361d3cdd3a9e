"""``stratus put`` and ``stratus get``: delta transfers of files and trees."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cas.errors import CommitUnansweredError
from cli import errors
from cli.grouping import DEFAULT_JOBS
from cli.lazy import lazy
from cli.output import Output, human_bytes
from cli.runtime import Runtime
from cli.timeparse import format_ms

if TYPE_CHECKING:
    from cli.library import FileOutcome, GetOutcome, GetReport, ProgressEvent, UploadReport
    from cli.progress import TransferProgress
else:  # the transfer machinery loads when put or get runs (through the library)
    TransferProgress = lazy("cli.progress", "TransferProgress")

MAX_NOTES_SHOWN = 20

PUT_EPILOG = """[bold]Examples[/bold]

  stratus put big.db backups/big.db       [dim]# delta upload[/dim]
  stratus put photos backups/photos       [dim]# one remote path per file[/dim]
  stratus put -x '*.tmp' -x .git/ src backups/src
  stratus put --delete src backups/src    [dim]# also remove files gone locally[/dim]
  stratus put --if-version 3 notes.md notes.md
  stratus put --sign ~/.stratus/key notes.md notes.md
  tar c data | stratus put - backups/data.tar

A second run skips, without reading them, files whose size, mtime, ctime
and inode are unchanged since they were uploaded and whose version is
still the head. --no-cache reads every file again.
"""

GET_EPILOG = """[bold]Examples[/bold]

  stratus get backups/big.db big.db       [dim]# reuses chunks of ./big.db[/dim]
  stratus get --version 3 backups/big.db big.db
  stratus get --as-of 2h backups/photos photos
  stratus get --as-of 2024-05-01T12:00 backups/ restore
  stratus get backups/notes.md - | less   [dim]# to standard output[/dim]
  stratus get --verify-key key.pub notes.md notes.md

A folder is restored as it was at one point in time (now, or --as-of).
"""

JobsOption = Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Files in flight at once (folders).")]
NoCacheOption = Annotated[bool, typer.Option(
    "--no-cache", help="Do not trust the local state cache: read every file (the cache is refreshed).")]


def put(
    ctx: typer.Context,
    local: Annotated[str, typer.Argument(metavar="LOCAL", help="File, folder, or - for standard input.")],
    remote: Annotated[str, typer.Argument(metavar="REMOTE", help="Remote path (a prefix for a folder).")],
    if_version: Annotated[int | None, typer.Option(
        "--if-version", min=0, metavar="N",
        help="Commit only if the head is version N (0: only if the path does not exist). Single files only.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", metavar="PATTERN", help="Skip matching files/folders (repeatable; gitignore-style).")
    ] = None,
    follow_symlinks: Annotated[bool, typer.Option(
        "--follow-symlinks", help="Follow symlinks (default: skip them with a note).")] = False,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Folders: delete remote files under REMOTE that no longer exist locally.")] = False,
    sign: Annotated[Path | None, typer.Option(
        "--sign", metavar="KEYFILE", help="Sign the version with this Ed25519 private key (`stratus keys init`).")
    ] = None,
    jobs: JobsOption = DEFAULT_JOBS,
    no_cache: NoCacheOption = False,
) -> None:
    """Upload a file or a folder, sending only the chunks the server does not have."""
    rt = Runtime.of(ctx)
    is_tree = local != "-" and Path(local).is_dir()  # a symlink named here is followed
    report = rt.library.put(
        sys.stdin.buffer if local == "-" else local, remote, if_version=if_version, sign_key=sign,
        excludes=exclude or (), delete=delete, follow_symlinks=follow_symlinks, jobs=jobs, use_cache=not no_cache,
        progress=_Bar(rt.out, "put" if is_tree else f"put {remote}"),
    )
    _render_put(rt.out, report)
    code = errors.exit_code(report.first_error) if report.first_error is not None else 0
    if code:
        raise typer.Exit(code)


class _Bar:
    """The engine's progress callbacks drawn as one bar on stderr (see :mod:`cli.progress`)."""

    def __init__(self, out: Output, label: str) -> None:
        self._out = out
        self._label = label
        self._bar: TransferProgress | None = None
        self._update: Callable[[int, int | None], None] | None = None
        self._lock = threading.Lock()
        self._done = 0

    def start(self, files: int, total_bytes: int) -> None:
        """Draw a bar for ``files`` files of ``total_bytes`` bytes."""
        self._bar = TransferProgress(self._out, self._label, total_bytes, files).__enter__()
        self._update = self._bar.for_file()

    def advance(self, nbytes: int) -> None:
        """Move the bar by ``nbytes``."""
        if self._bar is None or self._update is None:
            return
        with self._lock:
            self._done += nbytes
            self._update(self._done, None)

    def file_done(self, outcome: FileOutcome) -> None:
        """Count a file."""
        if self._bar is not None:
            self._bar.file_done()

    def finish(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        self._done = 0


def get(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="REMOTE", help="Remote file, or folder (prefix) to restore.")],
    local: Annotated[str, typer.Argument(metavar="LOCAL", help="Local file or folder, or - for standard output.")],
    version: Annotated[int | None, typer.Option("--version", min=1, metavar="N", help="Version N of a file.")] = None,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", metavar="TIME", help="As it was at TIME: ISO 8601 (2024-05-01T12:00) or an age (90m, 2h, 3d).")
    ] = None,
    verify_key: Annotated[str | None, typer.Option(
        "--verify-key", metavar="PUB", help="Require a valid signature by this public key (file or hex); else exit 5.")
    ] = None,
    jobs: JobsOption = DEFAULT_JOBS,
    no_cache: NoCacheOption = False,
) -> None:
    """Download a file or restore a folder, fetching only the chunks the local copy lacks."""
    rt = Runtime.of(ctx)
    with _ProgressBar(rt.out) as bar:
        report = rt.library.get(remote, sys.stdout.buffer if local == "-" else local, version=version, as_of=as_of,
                                verify_key=verify_key, jobs=jobs, use_cache=not no_cache, progress=bar)
    if local == "-":
        rt.out.json = False  # stdout holds the file; the summary goes to stderr
        _render_get(rt.out, report, to_stderr=True)
        return
    _render_get(rt.out, report)
    if code := get_exit_code(report):
        raise typer.Exit(code)


class _ProgressBar:
    """Draws the engine's progress events as one bar on stderr (a no-op when stderr is not a terminal)."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._bar: TransferProgress | None = None
        self._update: Any = None
        self._done = 0
        self._lock = threading.Lock()

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.kind == "start":
                self.__exit__()
                self._bar = TransferProgress(self._out, event.label, event.nbytes, event.files).__enter__()
                self._update, self._done = self._bar.for_file(), 0
            elif event.kind == "bytes" and self._update is not None:
                self._done += event.nbytes
                self._update(self._done, None)
            elif event.kind == "file" and self._bar is not None:
                self._bar.file_done()


# ---- JSON of get ------------------------------------------------------------------------------------

_FILE_FIELDS = ("remote", "local", "status", "version", "size", "chunks_total", "chunks_reused", "chunks_fetched",
                "chunks_delta", "bytes_fetched")


def get_exit_code(report: GetReport) -> int:
    """0, or the exit code of the first failed file."""
    error = report.first_error
    return errors.exit_code(error) if error is not None else 0


def _version_number(o: GetOutcome) -> int | None:
    return o.version.version if o.version is not None else None


def _file_document(o: GetOutcome) -> dict[str, Any]:
    doc: dict[str, Any] = {name: getattr(o, name) for name in _FILE_FIELDS}
    doc["version"] = _version_number(o)
    doc["error"] = errors.describe(o.error) if o.error is not None else None
    doc["exit_code"] = errors.exit_code(o.error) if o.error is not None else 0
    return doc


def get_document(report: GetReport) -> dict[str, Any]:
    """The JSON document of ``get --json``."""
    return {
        "ok": get_exit_code(report) == 0, "kind": report.kind, "remote": report.remote, "local": report.local,
        "as_of_ms": report.as_of_ms or None, "stats": asdict(report.stats),
        "files": [_file_document(o) for o in report.outcomes if o.status != "skipped"], "notes": report.notes,
    }


# ---- rendering -------------------------------------------------------------------------------------


def _notes(out: Output, notes: list[str]) -> None:
    for line in notes[:MAX_NOTES_SHOWN]:
        out.note(f"[dim]note:[/dim] {line}")
    if len(notes) > MAX_NOTES_SHOWN:
        out.note(f"[dim]note: ... and {len(notes) - MAX_NOTES_SHOWN} more (all of them are in --json)[/dim]")


def _failures(out: Output, outcomes: list) -> None:
    for o in outcomes:
        if o.status == "failed":
            error = errors.describe(o.error) if isinstance(o.error, BaseException) else o.error
            out.stderr.print(f"stratus: error: {o.remote or o.local}: {error}", markup=False)


def _outcome_dict(o: FileOutcome) -> dict[str, Any]:
    """One entry of ``files`` in ``put --json``: ``version`` is the committed (or deleted) version."""
    code, kind, _ = errors.classify(o.error) if o.error is not None else (0, None, "")
    v = o.version
    return {
        "remote": o.remote, "local": o.local, "status": o.status, "version": v.version if v is not None else None,
        "size": v.size if v is not None and o.status != "deleted" else 0, "bytes_read": o.bytes_read,
        "bytes_sent": o.bytes_sent, "chunks_total": o.chunks_total, "chunks_sent": o.chunks_sent,
        "error": errors.describe(o.error) if o.error is not None else None, "error_kind": kind,
        "exit_code": code, "manifest_delta": o.manifest_delta,
        "maybe_committed": isinstance(o.error, CommitUnansweredError),  # the commit's answer was lost
    }


def put_document(report: UploadReport) -> dict[str, Any]:
    """The JSON document of ``put --json``; ``error`` names what stopped a tree early (else None)."""
    first = report.first_error
    return {
        "ok": first is None, "kind": report.kind, "local": report.local, "remote": report.remote,
        "stats": asdict(report.stats), "files": [_outcome_dict(o) for o in report.files], "notes": report.notes,
        "error": errors.error_document(report.stopped)["error"] if report.stopped is not None else None,
    }


def _put_failures(out: Output, report: UploadReport) -> None:
    """Each failed file on stderr (also under --json); files not sent after a stop are one line."""
    failures = report.failures
    shown = [o for o in failures if report.stopped is None or o.error is not report.stopped]
    for o in shown[:MAX_NOTES_SHOWN]:
        assert o.error is not None
        out.stderr.print(f"stratus: error: {o.remote or o.local}: {errors.describe(o.error)}", markup=False)
    if len(shown) > MAX_NOTES_SHOWN:
        out.stderr.print(f"stratus: ... and {len(shown) - MAX_NOTES_SHOWN} more failed files (all in --json)")
    if report.stopped is not None:
        committed = sum(o.committed for o in report.files)
        unsure = sum(isinstance(o.error, CommitUnansweredError) for o in failures)
        out.stderr.print(
            f"stratus: error: stopped: {errors.describe(report.stopped)}; committed {committed} files, "
            f"{len(failures)} failed or were not sent"
            + (f" ({unsure} of them may be committed: their commit got no answer)" if unsure else "")
            + "; run the same put again to finish (committed files are skipped)",
            markup=False,
        )


def _render_put(out: Output, report: UploadReport) -> None:
    _put_failures(out, report)  # on stderr, also under --json
    if out.json:
        out.document(put_document(report))
        return
    _notes(out, report.notes)
    s = report.stats
    if report.kind != "tree":
        _render_put_one(out, report.files[0], s.seconds)
        return
    out.done(
        f"{report.local} -> {report.remote or '/'}: {s.files_scanned} files scanned ({human_bytes(s.bytes_scanned)}), "
        f"{s.files_uploaded} uploaded, {s.files_same_content} unchanged after reading, "
        f"{s.files_skipped_unchanged} skipped unchanged, {s.files_failed} failed"
        + (f", {s.files_deleted} deleted" if s.files_deleted else "")
    )
    out.done(
        f"read {human_bytes(s.bytes_read)}, sent {human_bytes(s.bytes_sent)} "
        f"({s.chunks_sent} of {s.chunks_total} chunks) in {s.seconds:.2f} s"
        + (f"; {s.files_excluded} excluded" if s.files_excluded else "")
        + (f"; {s.symlinks_skipped} symlinks skipped" if s.symlinks_skipped else "")
    )


def _render_put_one(out: Output, o: FileOutcome, seconds: float) -> None:
    v = o.version.version if o.version is not None else None
    if o.status == "skipped":
        out.done(f"unchanged: {o.remote} is version {v} (skipped without reading {o.local})")
    elif o.status == "unchanged":
        out.done(f"unchanged: {o.remote} already holds this content as version {v}; "
                 f"read {human_bytes(o.bytes_read)}, sent nothing")
    else:
        out.done(
            f"uploaded {o.local} -> {o.remote} version {v}: read {human_bytes(o.bytes_read)}, "
            f"sent {human_bytes(o.bytes_sent)} ({o.chunks_sent} of {o.chunks_total} chunks) in {seconds:.2f} s"
        )


def _render_get(out: Output, report: GetReport, *, to_stderr: bool = False) -> None:
    _failures(out, report.outcomes)  # on stderr, also under --json
    if out.json:
        out.document(get_document(report))
        return
    say = out.note if to_stderr else out.done
    _notes(out, report.notes)
    s = report.stats
    when = f" as of {format_ms(report.as_of_ms)}" if report.as_of_ms else ""
    if report.kind != "tree":
        o = report.outcomes[0]
        if o.status in ("skipped", "up_to_date"):
            say(f"up to date: {o.local} already is {o.remote} version {_version_number(o)}")
        else:
            say(f"downloaded {o.remote} version {_version_number(o)} -> {o.local}: {human_bytes(o.size)}, "
                f"reused {o.chunks_reused} chunks, fetched {o.chunks_fetched} ({human_bytes(o.bytes_fetched)}"
                f"{f', {o.chunks_delta} as deltas' if o.chunks_delta else ''}) in {s.seconds:.2f} s")
        return
    say(
        f"{report.remote or '/'}{when} -> {report.local}: {s.files_listed} files ({human_bytes(s.bytes_total)}), "
        f"{s.files_downloaded} downloaded, {s.files_up_to_date + s.files_skipped_unchanged} already up to date, "
        f"{s.files_failed} failed; fetched {human_bytes(s.bytes_fetched)}, reused {s.chunks_reused} chunks "
        f"in {s.seconds:.2f} s"
    )


def register(app: typer.Typer) -> None:
    """Add the transfer commands to the app."""
    app.command("put", epilog=PUT_EPILOG)(put)
    app.command("get", epilog=GET_EPILOG)(get)
