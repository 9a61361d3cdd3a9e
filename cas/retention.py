"""Retention policies: which versions of a path a ``forget`` keeps, and why. Pure: no I/O.

The rules are restic's ``forget`` policy (``ApplyPolicy``), applied to the versions of one path
the way restic applies them to the snapshots of one group:

* The versions are sorted newest first (stable for equal times).
* ``keep-last N`` keeps the N newest. ``keep-hourly/daily/weekly/monthly/yearly N`` walk the
  versions newest first and keep each version whose time bucket (UTC hour, day, ISO week, month,
  year) differs from that of the previously kept one of the same rule, until N are kept: the
  newest version of each of the N newest buckets that have one. ``-1`` means no limit.
* A rule that still has counts left when it reaches the oldest version keeps that one too
  (restic >= 0.16: it maximises the history kept).
* ``keep-within DURATION`` (``1y2m3d4h``: years, months, days, hours) keeps every version
  strictly newer than the newest version's time minus the duration. The newest version is the
  newest one not later than ``now``; the durations count calendar months and years as Go's
  ``AddDate`` does (March 31 minus one month is March 3 or 2).
* A version kept by any rule is kept; its reasons list every rule that kept it.
* An empty policy keeps everything ("policy is empty"); callers refuse one before that.

On top of restic, per path (:func:`plan_path`):

* The head is always kept (reason ``head``): a live file never loses its current content, and a
  deleted path keeps its delete marker.
* Delete markers are not versions of content: the policy counts only content versions. A delete
  marker that is not the head is kept exactly when the content version just before it is kept
  (reason ``ends kept version N``), so a listing as of a time when the file was deleted never
  shows a kept older version instead; a marker after a forgotten version has nothing to end and
  goes with it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cas.errors import InvalidPolicyError

UNLIMITED = -1
_UTC = dt.UTC
_DURATION_PART = re.compile(r"(-?)(\d+)([ymdh])")
_COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Duration:
    """A restic duration: whole years, months, days and hours (``1y2m3d4h``)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``6y5m234d37h`` (any subset, any order; a unit given twice: the last wins, as in
        restic). InvalidPolicyError for anything else, or for a negative part."""
        s = text.strip()
        if not s:
            return cls()
        values: dict[str, int] = {}
        pos = 0
        while pos < len(s):
            m = _DURATION_PART.match(s, pos)
            if m is None:
                raise InvalidPolicyError(
                    f"invalid duration {text!r}: use numbers with units y, m, d, h, such as 1y2m3d4h")
            if m.group(1):
                raise InvalidPolicyError(f"invalid duration {text!r}: durations cannot be negative")
            values[m.group(3)] = int(m.group(2))
            pos = m.end()
        return cls(values.get("y", 0), values.get("m", 0), values.get("d", 0), values.get("h", 0))

    def is_zero(self) -> bool:
        """True when every part is zero (no ``keep-within``)."""
        return not (self.years or self.months or self.days or self.hours)

    def before(self, t: dt.datetime) -> dt.datetime | None:
        """``t`` minus this duration, calendar-wise like Go's ``AddDate``; None when that lies
        before year 1 (every real time is after it)."""
        year = t.year - self.years
        month0 = t.month - 1 - self.months
        year += month0 // 12
        try:
            first = t.replace(year=year, month=month0 % 12 + 1, day=1)
            return first + dt.timedelta(days=t.day - 1 - self.days, hours=-self.hours)
        except (ValueError, OverflowError):
            return None

    def __str__(self) -> str:
        parts = ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h"))
        return "".join(f"{n}{unit}" for n, unit in parts if n)


@dataclass(frozen=True)
class RetentionPolicy:
    """How many versions to keep per rule (0: rule off, ``UNLIMITED``: no limit) and ``within``."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = field(default_factory=Duration)

    def __post_init__(self) -> None:
        for name in _COUNT_RULES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < UNLIMITED:
                raise InvalidPolicyError(
                    f"keep-{name} must be a whole number >= 0, or -1 / 'unlimited' for no limit; got {value!r}")
        if not isinstance(self.within, Duration):
            raise InvalidPolicyError("keep-within must be a Duration")

    def is_empty(self) -> bool:
        """True when no rule is set (restic then keeps everything)."""
        return all(getattr(self, n) == 0 for n in _COUNT_RULES) and self.within.is_zero()

    def describe(self) -> str:
        """A sentence like restic's: ``keep 3 last, 7 daily versions and all within 1y of the newest``."""
        counts = [f"{'all' if getattr(self, n) == UNLIMITED else getattr(self, n)} {n}"
                  for n in _COUNT_RULES if getattr(self, n)]
        text = f"{', '.join(counts)} versions" if counts else ""
        if not self.within.is_zero():
            text += (" and " if text else "") + f"all within {self.within} of the newest"
        return "keep " + (text or "everything (empty policy)")

    def to_dict(self) -> dict[str, int | str]:
        """The rules as JSON-ready fields (``keep_within`` as its restic text)."""
        out: dict[str, int | str] = {f"keep_{n}": getattr(self, n) for n in _COUNT_RULES}
        out["keep_within"] = str(self.within)
        return out


def parse_count(text: str | int, rule: str) -> int:
    """A ``--keep-RULE`` value: a whole number, or ``unlimited`` (-1, as restic takes it)."""
    if isinstance(text, int):
        return text
    word = text.strip().lower()
    if word == "unlimited":
        return UNLIMITED
    try:
        value = int(word)
    except ValueError:
        raise InvalidPolicyError(f"--keep-{rule}: expected a number or 'unlimited', got {text!r}") from None
    if value < UNLIMITED:
        raise InvalidPolicyError(f"--keep-{rule}: negative values other than -1 are not allowed")
    return value


@dataclass(frozen=True)
class Candidate:
    """A version as the planner sees it: its number, its time and whether it is a delete marker."""

    version: int
    created_ms: int
    deleted: bool = False


@dataclass(frozen=True)
class Verdict:
    """What a forget does with one version: keep it (with every reason) or remove it."""

    version: int
    created_ms: int
    deleted: bool
    keep: bool
    reasons: tuple[str, ...] = ()


def _hour(t: dt.datetime, _: int) -> int:
    return t.year * 1_000_000 + t.month * 10_000 + t.day * 100 + t.hour


def _day(t: dt.datetime, _: int) -> int:
    return t.year * 10_000 + t.month * 100 + t.day


def _week(t: dt.datetime, _: int) -> int:
    iso = t.isocalendar()
    return iso.year * 100 + iso.week


def _month(t: dt.datetime, _: int) -> int:
    return t.year * 100 + t.month


def _year(t: dt.datetime, _: int) -> int:
    return t.year


def _each(_: dt.datetime, nr: int) -> int:
    return nr


_BUCKETS: tuple[tuple[str, Callable[[dt.datetime, int], int]], ...] = (
    ("last", _each), ("hourly", _hour), ("daily", _day), ("weekly", _week), ("monthly", _month), ("yearly", _year),
)


def to_time(ms: int) -> dt.datetime:
    """A version time (Unix milliseconds) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(ms / 1000, _UTC)


def apply_policy(times_ms: Sequence[int], policy: RetentionPolicy, now_ms: int) -> list[tuple[bool, list[str]]]:
    """restic's ``ApplyPolicy`` over version times sorted newest first: (keep, reasons) for each.

    ``now_ms`` only bounds which version counts as the newest for ``keep-within`` (a time later
    than now is skipped, as restic skips snapshots from the future).
    """
    if policy.is_empty():
        return [(True, ["policy is empty"]) for _ in times_ms]
    if not times_ms:
        return []
    times = [to_time(ms) for ms in times_ms]
    remaining = [getattr(policy, name) for name, _ in _BUCKETS]
    last_bucket = [None] * len(_BUCKETS)
    threshold = _within_threshold(times_ms, policy.within, now_ms)
    out: list[tuple[bool, list[str]]] = []
    for nr, t in enumerate(times):
        reasons: list[str] = []
        if not policy.within.is_zero() and (threshold is None or t > threshold):
            reasons.append(f"within {policy.within}")
        for i, (name, bucket) in enumerate(_BUCKETS):
            if remaining[i] == 0:
                continue
            value = bucket(t, nr)
            if value != last_bucket[i] or nr == len(times) - 1:
                last_bucket[i] = value
                if remaining[i] > 0:
                    remaining[i] -= 1
                reasons.append(f"{name} version")
        out.append((bool(reasons), reasons))
    return out


def _within_threshold(times_ms: Sequence[int], within: Duration, now_ms: int) -> dt.datetime | None:
    """The time a version must be strictly newer than to be kept by ``keep-within`` (None: all are)."""
    if within.is_zero():
        return None
    past = [ms for ms in times_ms if ms < now_ms]
    if not past:
        return None
    return within.before(to_time(max(past)))


def plan_path(versions: Sequence[Candidate], policy: RetentionPolicy, now_ms: int) -> list[Verdict]:
    """The verdict for every version of one path, newest first (module docstring: head, markers).

    The head is the highest version number given. Pure and deterministic: the same versions,
    policy and ``now_ms`` always give the same plan.
    """
    ordered = sorted(versions, key=lambda c: (c.created_ms, c.version), reverse=True)
    if not ordered:
        return []
    head = max(c.version for c in ordered)
    content = [c for c in ordered if not c.deleted]
    decided = dict(zip((c.version for c in content),
                       apply_policy([c.created_ms for c in content], policy, now_ms), strict=True))
    out: list[Verdict] = []
    for c in ordered:
        reasons = list(decided[c.version][1]) if not c.deleted else []
        if c.deleted and c.version != head:
            before = _content_before(content, c)
            if before is not None and decided[before.version][0]:
                reasons.append(f"ends kept version {before.version}")
        if c.version == head:
            reasons.insert(0, "head")
        out.append(Verdict(c.version, c.created_ms, c.deleted, bool(reasons), tuple(reasons)))
    return out


def _content_before(content: Sequence[Candidate], marker: Candidate) -> Candidate | None:
    """The newest content version older than ``marker`` (``content`` is newest first)."""
    return next((c for c in content if c.version < marker.version), None)
