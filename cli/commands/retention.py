"""Retention: ``forget``, which removes old versions by restic's forget rules (README "Retention")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import errors
from cli.output import human_bytes
from cli.runtime import Runtime
from cli.timeparse import format_ms, iso_ms

if TYPE_CHECKING:
    from cli.results import ForgetPath, ForgetReport, VersionVerdict

FORGET_EPILOG = (
    "Examples: stratus forget backups/ --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run ;  "
    "stratus --json forget db/ --keep-within 1y2m3d4h --keep-last 3.  Each path is handled on its own; "
    "its head always stays. Counts take 'unlimited'. Times are bucketed in UTC."
)


_UNITS = {"hourly": "hours", "daily": "days", "weekly": "ISO weeks", "monthly": "months", "yearly": "years"}


def _count(rule: str) -> Any:  # noqa: ANN401 - a typer Option
    what = "the N newest versions" if rule == "last" else f"the newest version of each of the N newest {_UNITS[rule]}"
    return typer.Option(f"--keep-{rule}", metavar="N", help=f"Keep {what} ('unlimited': no limit).")


def forget(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help="Every path under it (\"\" = the namespace).")],
    keep_last: Annotated[str, _count("last")] = "0",
    keep_hourly: Annotated[str, _count("hourly")] = "0",
    keep_daily: Annotated[str, _count("daily")] = "0",
    keep_weekly: Annotated[str, _count("weekly")] = "0",
    keep_monthly: Annotated[str, _count("monthly")] = "0",
    keep_yearly: Annotated[str, _count("yearly")] = "0",
    keep_within: Annotated[str, typer.Option(
        "--keep-within", metavar="DURATION",
        help="Keep every version newer than the path's newest version minus DURATION (1y2m3d4h).")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Remove nothing; show what would go and why.")
                       ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (as stratus --json).")
                           ] = False,
) -> None:
    """Remove old versions of every file under PREFIX by a retention policy (restic's forget rules)."""
    rt = Runtime.of(ctx)
    rt.out.json = rt.out.json or json_output
    report = rt.library.forget(prefix, keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
                               keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
                               keep_within=keep_within, dry_run=dry_run)
    code = errors.exit_code(report.first_error) if report.first_error is not None else 0
    if rt.out.json:
        rt.out.document(forget_document(report))
    else:
        _render(rt, report)
    if code:
        raise typer.Exit(code)


def forget_document(report: ForgetReport) -> dict[str, Any]:
    """The JSON document of ``forget --json``: per path the versions kept (with reasons) and removed."""
    return {
        "ok": report.first_error is None, "prefix": report.prefix, "dry_run": report.dry_run,
        "policy": {**report.policy.to_dict(), "description": report.policy.describe()},
        "paths": [_path_document(p) for p in report.paths],
        "summary": {"paths": len(report.paths), "kept": report.kept, "removed": report.removed,
                    "would_remove": report.would_remove, "failed": len(report.failures)},
    }


def _version_document(v: VersionVerdict) -> dict[str, Any]:
    doc = {"version": v.version.version, "created": iso_ms(v.version.created_ms), "created_ms": v.version.created_ms,
           "size": v.version.size, "deleted": v.version.deleted}
    if v.keep:
        doc["reasons"] = list(v.reasons)
    return doc


def _path_document(p: ForgetPath) -> dict[str, Any]:
    return {
        "path": p.path, "keep": [_version_document(v) for v in p.kept],
        "remove": [_version_document(v) for v in p.dropped], "removed": p.removed,
        "error": errors.describe(p.error) if p.error is not None else None,
        "exit_code": errors.exit_code(p.error) if p.error is not None else 0,
    }


def _render(rt: Runtime, report: ForgetReport) -> None:
    go = "would remove" if report.dry_run else "remove"
    rows = []
    for p in report.paths:
        for v in p.versions:
            what = "delete marker" if v.version.deleted else human_bytes(v.version.size)
            rows.append([p.path, str(v.version.version), format_ms(v.version.created_ms), what,
                         "keep" if v.keep else go, ", ".join(v.reasons)])
    if rows and (report.dry_run or not rt.out.quiet):
        rt.out.table(["path", "ver", "stored", "size", "action", "reasons"], rows, right=["ver"])
    for p in report.failures:
        rt.out.stderr.print(f"stratus: error: {p.path}: {errors.describe(p.error)}", markup=False)  # type: ignore[arg-type]
    if report.dry_run:
        rt.out.done(f"dry run ({report.policy.describe()}): would remove {report.would_remove} versions, "
                    f"keep {report.kept}, in {len(report.paths)} paths; nothing was removed")
    else:
        rt.out.done(f"{report.policy.describe()}: removed {report.removed} versions, kept {report.kept}, "
                    f"in {len(report.paths)} paths")


def register(app: typer.Typer) -> None:
    """Add the retention commands to the app."""
    app.command("forget", epilog=FORGET_EPILOG)(forget)
