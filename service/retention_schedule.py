"""The server's own retention: the ``retention`` rules of its config, applied every
``retention_interval_s`` (service/retention.py does the work, exactly as the ``Forget`` call).

One task per server. A round applies each rule in turn (first round one interval after start);
rounds never overlap, and a failing rule (say, the metadata store is briefly down) is logged and
audited and the next rule still runs; the next round tries again. Each rule's outcome is one log
line and one audit entry (method ``RetentionSchedule``, identity ``retention-schedule``, the
namespace and prefix, paths seen, versions removed, paths that failed). The ``forgotten``
change-feed events name the identity ``retention-schedule``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.audit import AuditLog
from service.config import RetentionRule
from service.repository import Repository
from service.retention import forget_prefix

log = logging.getLogger("stratus.retention")
IDENTITY = "retention-schedule"


class RetentionSchedule:
    """Applies retention rules on a timer until stopped."""

    def __init__(self, repo: Repository, rules: tuple[RetentionRule, ...], interval_s: float, audit: AuditLog) -> None:
        self.repo = repo
        self.rules = rules
        self.interval_s = interval_s
        self.audit = audit
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the timer (no-op without rules)."""
        if self.rules and self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop the timer; a round in progress is cut between two paths (each path's removal and its
        journal record are shielded together, so a cut round leaves nothing half done)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.run_once()

    async def run_once(self) -> None:
        """Apply every rule once (never raises: each rule's failure is logged and audited)."""
        for rule in self.rules:
            await self._apply(rule)
        self.rounds += 1

    async def _apply(self, rule: RetentionRule) -> None:
        started = time.perf_counter()
        paths = removed = failed = 0
        status, error = "OK", None
        try:
            async for outcome in forget_prefix(self.repo, rule.namespace, rule.prefix, rule.policy,
                                               identity=IDENTITY, dry_run=False):
                paths += 1
                removed += outcome.removed
                if outcome.error is not None:
                    failed += 1
                    log.warning("retention %s:%s: %s", rule.namespace, outcome.path, outcome.error)
        except Exception as exc:  # noqa: BLE001 - one rule's failure must not stop the schedule
            status, error = "ERROR", f"{type(exc).__name__}: {exc}"
            log.error("retention %s:%r (%s) failed: %s", rule.namespace, rule.prefix, rule.policy.describe(), error)
        log.info("retention %s:%r (%s): %d paths, %d versions removed, %d paths failed", rule.namespace,
                 rule.prefix, rule.policy.describe(), paths, removed, failed)
        self.audit.record(
            method="RetentionSchedule", status=status, identity=IDENTITY, path=rule.prefix,
            duration_ms=(time.perf_counter() - started) * 1000, namespace=rule.namespace,
            policy=rule.policy.describe(), paths=paths, removed=removed, failed=failed, error=error,
        )
