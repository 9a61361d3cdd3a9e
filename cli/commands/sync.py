"""``stratus sync``: keep a folder and a remote prefix in step, both ways (once, or live with --watch)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import errors
from cli.grouping import DEFAULT_JOBS
from cli.output import Output, human_bytes
from cli.runtime import Runtime
from cli.timeparse import format_ms

if TYPE_CHECKING:
    from cli.sync import SyncAction, SyncReport
    from cli.syncstatus import SyncStatus

SYNC_EPILOG = """[bold]Examples[/bold]

  stratus sync ~/notes notes/              [dim]# one two-way reconciliation[/dim]
  stratus sync --watch ~/notes notes/      [dim]# keep them in step (Ctrl-C stops)[/dim]
  stratus --json sync --watch ~/notes notes/   [dim]# one JSON line per action[/dim]
  stratus sync status ~/notes              [dim]# pending, conflicts, failures[/dim]

Changed on both sides: the remote version keeps the name, the local one
becomes NAME.sync-conflict-YYYYMMDD-HHMMSS-CLIENT.EXT and is uploaded too.
Ignore rules: LOCAL_DIR/.stratusignore (the patterns of put --exclude).
"""


def sync(
    ctx: typer.Context,
    local: Annotated[str, typer.Argument(metavar="LOCAL_DIR", help="The folder (or `status`, then LOCAL_DIR).")],
    remote: Annotated[str, typer.Argument(metavar="REMOTE_PREFIX", help="The remote folder.")],
    watch: Annotated[bool, typer.Option("--watch", help="Keep running: follow local and remote changes.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Transfers in flight at once.")
                    ] = DEFAULT_JOBS,
    rescan: Annotated[float, typer.Option("--rescan", min=1.0, metavar="SECONDS",
                                          help="With --watch: full rescan period.")] = 600.0,
) -> None:
    """Two-way sync of a folder and a remote prefix; `stratus sync status LOCAL_DIR` shows its state."""
    rt = Runtime.of(ctx)
    if local == "status":
        show_status(rt.out, Path(remote))
        return
    from cli.sync import SyncOptions

    options = SyncOptions(jobs=jobs, rescan_seconds=rescan)
    progress = (lambda a: log_action(rt.out, a)) if watch else None
    with rt.library.sync_engine(local, remote, options=options, progress=progress) as engine:
        if watch:
            _watch(rt.out, engine, local, remote)
            return
        report = engine.run_once()
    render_report(rt.out, report)
    if report.first_error is not None:
        raise typer.Exit(errors.exit_code(report.first_error))


def _watch(out: Output, engine: object, local: str, remote: str) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if not out.json:
        out.note(f"[dim]syncing {local} <-> {remote} (Ctrl-C or SIGTERM stops)[/dim]")
    engine.watch(stop)  # type: ignore[attr-defined]


def log_action(out: Output, action: SyncAction) -> None:
    """One line per action: JSON under --json, else time, action, path and what happened."""
    if out.json:
        out.json_line(action.to_dict())
        return
    when = format_ms(action.time_ms)
    moved = action.bytes_sent or action.bytes_fetched
    size = f"  {human_bytes(moved)}" if moved else ""
    extra = f"  {action.detail}" if action.detail else ""
    if action.ok:
        out.print(f"{when}  {action.action:<13} {action.path}{extra}{size}", markup=False)
    else:
        out.print(f"{when}  {action.action:<13} {action.path}  FAILED ({action.error_kind}): {action.error}",
                  markup=False)


def render_report(out: Output, report: SyncReport) -> None:
    """The summary of one reconciliation (a JSON document under --json)."""
    kinds = ("upload", "download", "delete_local", "delete_remote", "conflict", "record")
    counts = {k: report.count(k) for k in kinds}
    if out.json:
        out.document({
            "ok": report.first_error is None, **counts, "passes": report.passes, "pending": report.pending,
            "actions": [a.to_dict() for a in report.actions],
            "error": errors.error_document(report.first_error)["error"] if report.first_error else None,
        })
        return
    for failed in report.failures[:20]:
        out.note(f"FAILED {failed.action} {failed.path}: {failed.error}")
    sent = sum(a.bytes_sent for a in report.actions)
    fetched = sum(a.bytes_fetched for a in report.actions)
    out.done(f"synced: {counts['upload']} uploaded, {counts['download']} downloaded, "
             f"{counts['delete_local']} deleted here, {counts['delete_remote']} deleted remotely, "
             f"{counts['conflict']} conflicts, {len(report.failures)} failed; "
             f"sent {human_bytes(sent)}, received {human_bytes(fetched)}")


def show_status(out: Output, root: Path) -> None:
    """``stratus sync status LOCAL_DIR``."""
    from cli.syncstatus import status

    st: SyncStatus = status(root)
    if out.json:
        out.document({
            "prefix": st.prefix, "server": st.server, "namespace": st.namespace, "cursor": st.cursor,
            "synced": st.synced, "pending": [{"path": p, "action": a} for p, a in st.pending],
            "conflicts": st.conflicts, "problems": [vars(p) for p in st.problems],
        })
        return
    out.print(f"{root} <-> {st.prefix or '/'} on {st.server} (namespace {st.namespace}): {st.synced} paths in step",
              markup=False)
    for path, action in st.pending:
        out.print(f"pending   {action:<13} {path}", markup=False)
    for path in st.conflicts:
        out.print(f"conflict  {path}", markup=False)
    for p in st.problems:
        out.print(f"{'waiting' if p.kind == 'waiting' else 'failing':<9} {p.path}: {p.message} "
                  f"(tried {p.attempts}x, next {format_ms(p.next_ms)})", markup=False)


def register(app: typer.Typer) -> None:
    """Add the sync command to the app."""
    app.command("sync", epilog=SYNC_EPILOG)(sync)
