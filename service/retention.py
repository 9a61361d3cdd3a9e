"""Forgetting versions by a retention policy: every path under a prefix, each on its own.

For each path (in path order, delete markers' paths included) the versions are read, planned
with the pure planner (cas/retention.py: restic's rules, head always kept, markers follow the
version they end) and the versions the plan drops are removed in one atomic script per path
(service/metadata/lua/forget_versions.lua), then journaled (service/repository.py).

A commit never gets lost to a forget running at the same time: the script removes nothing when
the path's head is no longer the one the plan was made for, and the path is planned again from
its new state (up to ``MAX_ATTEMPTS`` times; then that path fails with a conflict and the rest
go on). A version committed after the plan is never among the versions the plan names, and the
head is never removed. Paths are independent: one path's failure is its result, not the call's.

The RPC (``Forget``) and the server's schedule (service/retention_schedule.py) both run this.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cas.errors import CasError, VersionConflictError
from cas.retention import Candidate, RetentionPolicy, Verdict, plan_path
from service.metadata import VersionRecord
from service.repository import Repository

MAX_ATTEMPTS = 8
PAGE = 500


@dataclass
class PathForget:
    """What a forget did with one path: every version with its verdict (newest first), how many
    versions it removed (0 on a dry run), or the error that stopped it for this path."""

    path: str
    verdicts: list[tuple[VersionRecord, Verdict]]
    removed: int = 0
    error: CasError | None = None


async def forget_prefix(
    repo: Repository, ns: str, prefix: str, policy: RetentionPolicy, *, identity: str, dry_run: bool
) -> AsyncIterator[PathForget]:
    """Apply ``policy`` to every path under ``prefix`` in ``ns`` (path order), one result each.

    ``identity`` is recorded on each ``forgotten`` event. The caller checked the rights and that
    the policy is not empty.
    """
    after = ""
    while True:
        heads, after = await repo.list_files(ns, prefix, after=after, limit=PAGE, as_of_ms=0, include_deleted=True)
        for head in heads:
            try:
                yield await forget_path(repo, ns, head.path, policy, identity=identity, dry_run=dry_run)
            except CasError as exc:
                yield PathForget(head.path, [], error=exc)
        if not after:
            return


async def forget_path(
    repo: Repository, ns: str, path: str, policy: RetentionPolicy, *, identity: str, dry_run: bool
) -> PathForget:
    """Plan and (unless ``dry_run``) apply ``policy`` to one path; see the module docstring."""
    for _ in range(MAX_ATTEMPTS):
        records = await repo.versions(ns, path)
        if not records:
            return PathForget(path, [])
        by_number = {r.version: r for r in records}
        plan = plan_path([Candidate(r.version, r.created_ms, r.deleted) for r in records], policy,
                         int(time.time() * 1000))
        verdicts = [(by_number[v.version], v) for v in plan]
        doomed = sorted((r for r, v in verdicts if not v.keep), key=lambda r: r.version)  # oldest first
        if dry_run or not doomed:
            return PathForget(path, verdicts)
        try:
            removed = await repo.forget_versions(
                ns, path, head_version=records[0].version, identity=identity, versions=doomed
            )
        except VersionConflictError:
            continue  # a commit or delete came in: plan again from the new state
        return PathForget(path, verdicts, removed=len(removed))
    head = await repo.head(ns, path)
    raise VersionConflictError(path, records[0].version, head.version if head else 0)
