"""Browsing and housekeeping: ``ls``, ``log``, ``stat``, ``rm``, ``diff``, ``watch``, ``info``."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from cas.paths import normalize_path
from cli.lazy import lazy
from cli.output import event_dict, human_bytes, signer_name, version_dict, version_row
from cli.runtime import Runtime
from cli.timeparse import format_ms, parse_time_ms

if TYPE_CHECKING:
    from cli.commands.textdiff import render_text_diff, text_diff
else:  # diff --text only
    render_text_diff = lazy("cli.commands.textdiff", "render_text_diff")
    text_diff = lazy("cli.commands.textdiff", "text_diff")

AsOfOption = Annotated[str | None, typer.Option(
    "--as-of", metavar="TIME", help="As it was at TIME: ISO 8601 or an age (90m, 2h, 3d).")]


def ls(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="List paths starting with this.")] = "",
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Files per page.")] = None,
    page_token: Annotated[str, typer.Option("--page-token", metavar="T", help="Continue after a page.")] = "",
    all_pages: Annotated[bool, typer.Option("--all", help="Walk every page.")] = False,
    as_of: AsOfOption = None,
    deleted: Annotated[bool, typer.Option("--deleted", help="Also list paths whose head is a delete marker.")] = False,
) -> None:
    """List files (one page; --all for every page)."""
    rt = Runtime.of(ctx)
    as_of_ms = parse_time_ms(as_of) if as_of else None  # a clear error before connecting
    if all_pages:
        files = list(rt.library.ls(prefix, as_of=as_of_ms, include_deleted=deleted, page_size=limit or 0))
        token = ""
    else:
        page = rt.library.ls_page(prefix, limit=limit or 0, page_token=page_token, as_of=as_of_ms,
                                  include_deleted=deleted)
        files, token = page.files, page.next_page_token
    if rt.out.json:
        rt.out.document({"prefix": prefix, "files": [version_dict(f) for f in files],
                         "next_page_token": token or None})
        return
    if not files:
        rt.out.note(f"no files under {prefix!r}" if prefix else "no files")
        return
    rows = [version_row(f) + (["deleted"] if f.deleted else [""]) for f in files]
    rt.out.table(["path", "ver", "size", "modified", "by", ""], rows, right=["ver", "size"])
    if token:
        rt.out.print(f"[dim]more: stratus ls {prefix} --page-token {token}[/dim]")
        rt.out.print(f"next page token: {token}", markup=False)


def log(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="REMOTE")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Newest N versions (0: all).")] = 0,
) -> None:
    """Version history of a file, newest first."""
    rt = Runtime.of(ctx)
    path = normalize_path(remote)
    versions = rt.library.log(path, limit=limit)
    if rt.out.json:
        rt.out.document({"path": path, "versions": [version_dict(v) for v in versions]})
        return
    rows = []
    for v in versions:
        if v.deleted:
            rows.append([str(v.version), format_ms(v.created_ms), "-", v.identity, "-", "-", "deleted"])
            continue
        shared = max(v.chunk_count - v.new_chunks, 0)
        flags = "signed" if v.signed else ""
        rows.append([str(v.version), format_ms(v.created_ms), human_bytes(v.size), v.identity or "-",
                     f"{v.new_chunks} new / {shared} shared", human_bytes(v.new_bytes), flags])
    rt.out.table(["ver", "stored", "size", "by", "chunks", "new bytes", ""], rows, title=path,
                 right=["ver", "size", "new bytes"])


def stat(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="REMOTE")],
    version: Annotated[int | None, typer.Option("--version", min=1, metavar="N")] = None,
    as_of: AsOfOption = None,
) -> None:
    """Metadata of a file version (the head by default)."""
    rt = Runtime.of(ctx)
    when = parse_time_ms(as_of) if as_of else None  # a clear error before connecting
    info = rt.library.stat(remote, version=version, as_of=when)
    if rt.out.json:
        rt.out.document(version_dict(info))
        return
    rt.out.pairs([
        ("path", info.path), ("version", info.version), ("size", f"{human_bytes(info.size)} ({info.size} bytes)"),
        ("stored", format_ms(info.created_ms)), ("by", info.identity),
        ("mode", f"{info.mode:04o}" if info.mode else None), ("modified", format_ms(info.mtime_ns // 1_000_000)),
        ("chunks", f"{info.chunk_count} ({info.new_chunks} new in this version, {human_bytes(info.new_bytes)})"),
        ("file digest", f"blake3:{info.file_digest}"), ("manifest", info.manifest_digest),
        ("signed by", signer_name(info.signer_public_key) or "not signed"),
    ])


def rm(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="REMOTE")],
    if_version: Annotated[int | None, typer.Option(
        "--if-version", min=1, metavar="N", help="Delete only if the head is version N.")] = None,
) -> None:
    """Delete a file: writes a delete marker; earlier versions stay readable."""
    rt = Runtime.of(ctx)
    tomb = rt.library.rm(remote, if_version=if_version)
    if rt.out.json:
        rt.out.document(version_dict(tomb))
        return
    rt.out.done(f"deleted {tomb.path} (delete marker is version {tomb.version}; "
                 f"`stratus get --version {tomb.version - 1} {tomb.path} FILE` still restores the last content)")


def diff(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="REMOTE")],
    from_version: Annotated[int | None, typer.Argument(
        metavar="[FROM]", help="Older version (default: the one before TO).")] = None,
    to_version: Annotated[int | None, typer.Argument(metavar="[TO]", help="Newer version (default: head).")] = None,
    text: Annotated[bool, typer.Option("--text", help="Show a unified diff of the contents (text files).")] = False,
    max_bytes: Annotated[int, typer.Option(
        "--max-bytes", min=1, help="--text: largest version downloaded into memory.")] = 4 * 1024 * 1024,
    ranges: Annotated[int, typer.Option("--ranges", min=0, help="Changed ranges to show (0: all).")] = 20,
) -> None:
    """What changed between two versions: byte ranges, new and shared chunks."""
    rt = Runtime.of(ctx)
    path = normalize_path(remote)
    resp = rt.library.diff(path, from_version or 0, to_version or 0)
    base = resp.base
    unified = text_diff(rt.client, path, base, resp.to, max_bytes) if text else None
    if rt.out.json:
        rt.out.document({
            "path": path, "from": version_dict(base) if base else None, "to": version_dict(resp.to),
            "changed": [{"offset": r.offset, "length": r.length} for r in resp.changed],
            "changed_bytes": sum(r.length for r in resp.changed),
            "new_chunks": resp.new_chunks, "new_bytes": resp.new_bytes,
            "shared_chunks": resp.shared_chunks, "shared_bytes": resp.shared_bytes,
            "unified_diff": unified,
        })
        return
    frm = f"version {base.version}" if base else "nothing"
    total = sum(r.length for r in resp.changed)
    rt.out.print(f"{path}: {frm} -> version {resp.to.version}")
    rt.out.print(f"changed: {len(resp.changed)} range(s), {human_bytes(total)} of {human_bytes(resp.to.size)}")
    rt.out.print(f"chunks: {resp.new_chunks} new ({human_bytes(resp.new_bytes)}), "
                 f"{resp.shared_chunks} shared ({human_bytes(resp.shared_bytes)})")
    shown = list(resp.changed) if ranges == 0 else list(resp.changed)[:ranges]
    if shown:
        rt.out.table(["offset", "length", "end"], [[r.offset, r.length, r.offset + r.length] for r in shown],
                     right=["offset", "length", "end"])
    if len(shown) < len(resp.changed):
        rt.out.print(f"[dim]... {len(resp.changed) - len(shown)} more ranges (--ranges 0 shows all)[/dim]")
    if unified is not None:
        render_text_diff(rt.out, unified)


def watch(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="Only paths starting with this.")] = "",
    since: Annotated[str, typer.Option(
        "--since", metavar="CURSOR", help="Resume after this cursor (0: from the beginning).")] = "",
    count: Annotated[int, typer.Option("--count", min=0, help="Stop after N events (0: run until Ctrl-C).")] = 0,
) -> None:
    """Print changes as they happen, each with the cursor to resume from."""
    rt = Runtime.of(ctx)
    events = rt.library.watch(prefix, since=since)
    # Ctrl-C stops it even when the process was started with SIGINT ignored (as a shell does for
    # commands it runs in the background), which would otherwise leave it running forever.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not rt.out.json:
        rt.out.note(f"[dim]watching {prefix or 'everything'} (Ctrl-C to stop; resume with --since CURSOR)[/dim]")
    seen = 0
    try:
        for event in events:
            if rt.out.json:
                rt.out.json_line(event_dict(event))
            else:
                size = "" if event.kind == "delete" else human_bytes(event.size)
                rt.out.print(f"{format_ms(event.time_ms)}  {event.kind:<6} {event.path}  v{event.version}  "
                             f"{size}  {event.identity}  cursor={event.cursor}", markup=False)
            seen += 1
            if count and seen >= count:
                return
    except KeyboardInterrupt:
        return
    finally:
        events.close()  # ends the server stream


def info(ctx: typer.Context) -> None:
    """Server parameters and store statistics (logical vs stored bytes, dedup and compression)."""
    rt = Runtime.of(ctx)
    i = rt.library.info()
    s = i.stats
    # Server-wide disk figures are for the admin role only, and only once the server has counted its
    # store (the first ServerInfo after a start begins that count); otherwise they come as zeros.
    disk_known = bool(s.stored_bytes or s.store_chunk_count or not s.unique_bytes)
    stored = s.stored_bytes if disk_known else None
    ratio_dedup = s.logical_bytes / s.unique_bytes if s.unique_bytes else None
    ratio_total = s.logical_bytes / s.stored_bytes if disk_known and s.stored_bytes else None
    if rt.out.json:
        rt.out.document({
            "server": rt.settings.server, "server_version": i.server_version, "identity": i.identity,
            "namespace": i.namespace,
            "chunking": {"min_size": i.chunk_min_size, "avg_size": i.chunk_avg_size,
                         "max_size": i.chunk_max_size},
            "compression": i.compression, "compression_level": i.compression_level,
            "max_message_bytes": i.max_message_bytes, "max_batch_bytes": i.max_batch_bytes,
            "max_page_size": i.max_page_size, "max_manifest_chunks": i.max_manifest_chunks,
            "stats": {
                "file_count": s.file_count, "version_count": s.version_count, "logical_bytes": s.logical_bytes,
                "chunk_count": s.chunk_count, "unique_bytes": s.unique_bytes, "stored_bytes": stored,
                "store_chunk_count": s.store_chunk_count if disk_known else None, "dedup_ratio": ratio_dedup,
                "dedup_compression_ratio": ratio_total,
                "reclaimable_bytes": s.reclaimable_bytes, "reclaimed_bytes": s.reclaimed_bytes,
            },
        })
        return
    rt.out.pairs([
        ("server", f"{rt.settings.server} (version {i.server_version})"),
        ("you are", f"{i.identity} in namespace {i.namespace}"),
        ("chunking", f"FastCDC min {human_bytes(i.chunk_min_size)}, avg {human_bytes(i.chunk_avg_size)}, "
                     f"max {human_bytes(i.chunk_max_size)}"),
        ("compression", f"{i.compression} level {i.compression_level}"),
        ("limits", f"message {human_bytes(i.max_message_bytes)}, batch {human_bytes(i.max_batch_bytes)}, "
                   f"page {i.max_page_size}"),
    ], title="server")
    rt.out.pairs([
        ("files", f"{s.file_count} ({s.version_count} versions)"),
        ("logical bytes", f"{human_bytes(s.logical_bytes)} (every version, full size)"),
        ("unique chunks", f"{s.chunk_count} ({human_bytes(s.unique_bytes)} uncompressed)"),
        ("stored bytes", f"{human_bytes(s.stored_bytes)} on disk ({s.store_chunk_count} chunks, whole store)"
                         if disk_known else "admin role only (see --access-file of stratus serve); "
                                            "after a restart, still being counted for a moment"),
        ("dedup ratio", f"{ratio_dedup:.2f}x" if ratio_dedup else None),
        ("dedup+compression", f"{ratio_total:.2f}x" if ratio_total else None),
        ("garbage", f"{human_bytes(s.reclaimable_bytes)} reclaimable, {human_bytes(s.reclaimed_bytes)} reclaimed "
                    "so far (stratus admin gc)" if s.reclaimable_bytes or s.reclaimed_bytes else None),
    ], title="store")


def register(app: typer.Typer) -> None:
    """Add the browsing commands to the app."""
    examples = {
        "ls": "stratus ls backups/\n  stratus --json ls --all backups/ | jq '.files[].path'\n"
              "  stratus ls --limit 50 --page-token T\n  stratus ls --as-of 3d backups/",
        "log": "stratus log backups/big.db\n  stratus --json log -n 5 backups/big.db",
        "stat": "stratus stat backups/big.db\n  stratus stat --version 2 backups/big.db",
        "rm": "stratus rm backups/old.db\n  stratus rm --if-version 4 backups/old.db",
        "diff": "stratus diff backups/big.db          [dim]# head vs the version before[/dim]\n"
                "  stratus diff backups/big.db 2 5\n  stratus diff --text notes.md 3",
        "watch": "stratus watch backups/\n  stratus --json watch --since 0 | jq .path\n"
                 "  stratus watch --since 1714567890123-0   [dim]# resume after a cursor[/dim]",
        "info": "stratus info\n  stratus --json info | jq .stats.dedup_compression_ratio",
    }
    for fn in (ls, log, stat, rm, diff, watch, info):
        app.command(fn.__name__, epilog=f"[bold]Examples[/bold]\n\n  {examples[fn.__name__]}\n")(fn)
