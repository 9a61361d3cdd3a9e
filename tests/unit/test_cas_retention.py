"""The retention planner (cas/retention.py): restic's forget policy per path, heads and markers."""

from __future__ import annotations

import datetime as dt

import pytest

from cas.errors import InvalidPolicyError
from cas.retention import (
    UNLIMITED,
    Candidate,
    Duration,
    RetentionPolicy,
    apply_policy,
    parse_count,
    plan_path,
)

FAR_FUTURE = 10**15


def ms(text: str) -> int:
    """Unix ms of an ISO time in UTC ("2024-05-01 08:00")."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def kept(times: list[str], policy: RetentionPolicy, now: str | None = None) -> list[str]:
    """The times (given in any order) the policy keeps, newest first."""
    ordered = sorted(times, reverse=True)
    verdicts = apply_policy([ms(t) for t in ordered], policy, ms(now) if now else FAR_FUTURE)
    return [t for t, (keep, _) in zip(ordered, verdicts, strict=True) if keep]


# ---- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parts"), [
    ("1y2m3d4h", (1, 2, 3, 4)), ("6y5m234d37h", (6, 5, 234, 37)), ("2d", (0, 0, 2, 0)), ("36h", (0, 0, 0, 36)),
    ("3m1y", (1, 3, 0, 0)), (" 5d ", (0, 0, 5, 0)), ("1d2d", (0, 0, 2, 0)), ("", (0, 0, 0, 0)),
])
def test_duration_parses_restic_forms(text: str, parts: tuple[int, int, int, int]) -> None:
    d = Duration.parse(text)
    assert (d.years, d.months, d.days, d.hours) == parts


@pytest.mark.parametrize("text", ["1w", "5", "d", "1.5d", "-2d", "1y-1m", "2 d", "1h30min"])
def test_duration_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidPolicyError):
        Duration.parse(text)


def test_duration_text_round_trips() -> None:
    assert str(Duration.parse("4h3d2m1y")) == "1y2m3d4h"
    assert str(Duration.parse("0y7d")) == "7d"


@pytest.mark.parametrize(("start", "duration", "expected"), [
    ("2024-03-31 12:00", "1m", "2024-03-02 12:00"),  # Feb 31 in a leap year normalises to March 2
    ("2023-03-31 12:00", "1m", "2023-03-03 12:00"),
    ("2024-01-15 00:00", "1m", "2023-12-15 00:00"),  # across a year boundary
    ("2024-02-29 06:00", "1y", "2023-03-01 06:00"),
    ("2024-05-10 03:00", "1y2m3d4h", "2023-03-06 23:00"),
    ("2024-01-01 02:00", "3h", "2023-12-31 23:00"),
    ("2024-01-01 00:00", "13m", "2022-12-01 00:00"),
])
def test_duration_before_counts_calendar_like_go_adddate(start: str, duration: str, expected: str) -> None:
    got = Duration.parse(duration).before(dt.datetime.fromtimestamp(ms(start) / 1000, dt.UTC))
    assert got == dt.datetime.fromtimestamp(ms(expected) / 1000, dt.UTC)


def test_duration_before_year_one_is_none() -> None:
    assert Duration(years=5000).before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) is None


# ---- counts and policies ------------------------------------------------------------------------------


def test_counts_take_numbers_and_unlimited() -> None:
    assert parse_count("7", "daily") == 7
    assert parse_count("unlimited", "daily") == UNLIMITED
    assert parse_count("-1", "daily") == UNLIMITED
    for bad in ("-2", "x", "1.5"):
        with pytest.raises(InvalidPolicyError):
            parse_count(bad, "daily")
    with pytest.raises(InvalidPolicyError):
        RetentionPolicy(daily=-3)


def test_policy_description_and_emptiness() -> None:
    assert RetentionPolicy().is_empty()
    p = RetentionPolicy(last=3, daily=UNLIMITED, within=Duration.parse("1y"))
    assert not p.is_empty()
    assert p.describe() == "keep 3 last, all daily versions and all within 1y of the newest"
    assert p.to_dict()["keep_within"] == "1y"


def test_empty_policy_keeps_everything() -> None:
    assert apply_policy([3, 2, 1], RetentionPolicy(), FAR_FUTURE) == [(True, ["policy is empty"])] * 3


# ---- restic's rules ----------------------------------------------------------------------------------

MAY = ["2024-05-01 08:00", "2024-05-02 08:00", "2024-05-02 11:00", "2024-05-04 09:00", "2024-05-05 10:00"]


def test_keep_daily_is_the_newest_per_day() -> None:
    # restic's forum example: a1 (May 1), a2 and a3 (May 2), a4 (May 4), a5 (May 5)
    assert kept(MAY, RetentionPolicy(daily=4)) == ["2024-05-05 10:00", "2024-05-04 09:00", "2024-05-02 11:00",
                                                   "2024-05-01 08:00"]


def test_keep_daily_with_counts_left_keeps_the_oldest_too() -> None:
    # 3 days exist, 5 are allowed: the oldest of the last day is kept as well (restic >= 0.16)
    times = ["2024-05-02 08:00", "2024-05-02 11:00", "2024-05-03 09:00", "2024-05-04 10:00"]
    assert kept(times, RetentionPolicy(daily=5)) == ["2024-05-04 10:00", "2024-05-03 09:00", "2024-05-02 11:00",
                                                     "2024-05-02 08:00"]


def test_keep_daily_without_counts_left_drops_the_oldest() -> None:
    times = ["2024-05-02 08:00", "2024-05-02 11:00", "2024-05-03 09:00"]
    assert kept(times, RetentionPolicy(daily=2)) == ["2024-05-03 09:00", "2024-05-02 11:00"]


def test_keep_last() -> None:
    assert kept(MAY, RetentionPolicy(last=2)) == ["2024-05-05 10:00", "2024-05-04 09:00"]
    assert kept(MAY, RetentionPolicy(last=UNLIMITED)) == sorted(MAY, reverse=True)
    assert kept(MAY, RetentionPolicy(last=10)) == sorted(MAY, reverse=True)


def test_keep_hourly_buckets_by_utc_hour() -> None:
    times = ["2024-05-01 08:05", "2024-05-01 08:55", "2024-05-01 09:10", "2024-05-01 23:59", "2024-05-02 00:01"]
    assert kept(times, RetentionPolicy(hourly=3)) == ["2024-05-02 00:01", "2024-05-01 23:59", "2024-05-01 09:10"]


def test_keep_daily_across_a_year_boundary() -> None:
    times = ["2023-12-31 22:00", "2023-12-31 23:59", "2024-01-01 00:00", "2024-01-01 05:00"]
    assert kept(times, RetentionPolicy(daily=2)) == ["2024-01-01 05:00", "2023-12-31 23:59"]


def test_keep_weekly_uses_iso_weeks_across_years() -> None:
    # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both ISO week 2020-W53; 2021-01-04 starts 2021-W01
    times = ["2020-12-28 10:00", "2020-12-31 10:00", "2021-01-03 10:00", "2021-01-04 10:00", "2021-01-10 10:00"]
    assert kept(times, RetentionPolicy(weekly=2)) == ["2021-01-10 10:00", "2021-01-03 10:00"]
    assert kept(times, RetentionPolicy(weekly=3)) == ["2021-01-10 10:00", "2021-01-03 10:00", "2020-12-28 10:00"]


def test_keep_monthly_across_month_and_year_boundaries() -> None:
    times = ["2023-11-30 23:00", "2023-12-01 00:00", "2023-12-31 23:59", "2024-01-01 00:00", "2024-01-31 12:00",
             "2024-02-29 12:00"]
    assert kept(times, RetentionPolicy(monthly=3)) == ["2024-02-29 12:00", "2024-01-31 12:00", "2023-12-31 23:59"]


def test_keep_yearly() -> None:
    times = ["2021-06-01 00:00", "2022-01-01 00:00", "2022-12-31 23:59", "2023-07-01 00:00", "2024-01-01 00:00"]
    assert kept(times, RetentionPolicy(yearly=3)) == ["2024-01-01 00:00", "2023-07-01 00:00", "2022-12-31 23:59"]
    assert kept(times, RetentionPolicy(yearly=UNLIMITED)) == ["2024-01-01 00:00", "2023-07-01 00:00",
                                                              "2022-12-31 23:59", "2021-06-01 00:00"]


def test_keep_within_is_relative_to_the_newest_version_not_now() -> None:
    times = ["2020-01-01 00:00", "2020-01-05 00:00", "2020-01-09 00:00", "2020-01-10 00:00"]
    # years later, keep-within 5d still keeps what is within 5 days of the newest version
    assert kept(times, RetentionPolicy(within=Duration.parse("6d")), now="2024-01-01 00:00") == [
        "2020-01-10 00:00", "2020-01-09 00:00", "2020-01-05 00:00"]


def test_keep_within_is_strictly_newer_than_the_bound() -> None:
    times = ["2024-01-01 00:00", "2024-01-02 00:00"]
    assert kept(times, RetentionPolicy(within=Duration.parse("1d"))) == ["2024-01-02 00:00"]
    assert kept(times, RetentionPolicy(within=Duration.parse("25h"))) == times[::-1]


def test_keep_within_long_duration() -> None:
    times = ["2022-02-01 00:00", "2023-03-06 22:00", "2023-03-07 00:00", "2024-05-10 03:00"]
    assert kept(times, RetentionPolicy(within=Duration.parse("1y2m3d4h"))) == [
        "2024-05-10 03:00", "2023-03-07 00:00"]


def test_keep_within_ignores_versions_from_the_future() -> None:
    times = ["2024-01-01 00:00", "2024-01-05 00:00", "2030-01-01 00:00"]
    got = kept(times, RetentionPolicy(within=Duration.parse("2d")), now="2024-01-06 00:00")
    # the newest version not later than now (Jan 5) is the reference; the future one is newer still
    assert got == ["2030-01-01 00:00", "2024-01-05 00:00"]


def test_keep_within_with_every_version_in_the_future_keeps_all() -> None:
    times = ["2030-01-01 00:00", "2030-01-05 00:00"]
    assert kept(times, RetentionPolicy(within=Duration.parse("1d")), now="2024-01-06 00:00") == times[::-1]


def test_rules_combine_and_reasons_list_each_rule() -> None:
    times = ["2024-01-01 10:00", "2024-01-02 10:00", "2024-01-02 12:00", "2024-02-01 10:00", "2024-02-01 11:00"]
    ordered = sorted(times, reverse=True)
    policy = RetentionPolicy(last=1, daily=2, monthly=2, within=Duration.parse("2h"))
    verdicts = apply_policy([ms(t) for t in ordered], policy, FAR_FUTURE)
    assert verdicts == [
        (True, ["within 2h", "last version", "daily version", "monthly version"]),  # Feb 1 11:00
        (True, ["within 2h"]),                                                    # Feb 1 10:00
        (True, ["daily version", "monthly version"]),                              # Jan 2 12:00
        (False, []),                                                               # Jan 2 10:00
        (False, []),                                                               # Jan 1 10:00 (no counts left)
    ]


def test_restic_documentation_example_daily_weekly_monthly() -> None:
    # one version a day at 09:00 for 120 days; keep 7 daily, 4 weekly, 6 monthly
    start = dt.datetime(2024, 1, 1, 9, tzinfo=dt.UTC)
    times = [(start + dt.timedelta(days=i)).strftime("%Y-%m-%d %H:%M") for i in range(120)]
    got = kept(times, RetentionPolicy(daily=7, weekly=4, monthly=6))
    newest = start + dt.timedelta(days=119)  # 2024-04-29, a Monday
    days = [(newest - dt.timedelta(days=i)).strftime("%Y-%m-%d %H:%M") for i in range(7)]
    # weekly: Apr 29 (W18) and Apr 28 (W17) are daily ones already; then the Sundays of W16 and W15
    sundays = ["2024-04-21 09:00", "2024-04-14 09:00"]
    month_ends = ["2024-03-31 09:00", "2024-02-29 09:00", "2024-01-31 09:00", "2024-01-01 09:00"]
    # the monthly rule still has counts left at the oldest version, so that one is kept too
    assert got == days + sundays + month_ends


def test_stable_order_for_equal_times() -> None:
    verdicts = plan_path([Candidate(1, 1000), Candidate(2, 1000), Candidate(3, 1000)], RetentionPolicy(last=2),
                         FAR_FUTURE)
    assert [(v.version, v.keep) for v in verdicts] == [(3, True), (2, True), (1, False)]


# ---- per path: head and delete markers ------------------------------------------------------------------


def _plan(spec: list[tuple[int, str, bool]], policy: RetentionPolicy) -> dict[int, tuple[bool, tuple[str, ...]]]:
    verdicts = plan_path([Candidate(v, ms(t), d) for v, t, d in spec], policy, FAR_FUTURE)
    assert [v.version for v in verdicts] == sorted((v for v, _, _ in spec), reverse=True)
    return {v.version: (v.keep, v.reasons) for v in verdicts}


def test_head_is_always_kept_with_its_reason() -> None:
    got = _plan([(1, "2024-01-01 00:00", False), (2, "2024-01-02 00:00", False)], RetentionPolicy(last=1))
    assert got == {2: (True, ("head", "last version")), 1: (False, ())}


def test_head_delete_marker_is_kept_and_not_counted() -> None:
    spec = [(1, "2024-01-01 00:00", False), (2, "2024-01-02 00:00", False), (3, "2024-01-03 00:00", True)]
    got = _plan(spec, RetentionPolicy(last=1))
    # keep-last 1 counts content versions only: version 2 is the last content, the marker is the head
    assert got == {3: (True, ("head",)), 2: (True, ("last version",)), 1: (False, ())}


def test_marker_goes_with_the_version_it_ends() -> None:
    spec = [
        (1, "2024-01-01 00:00", False), (2, "2024-01-01 01:00", True),   # v1 kept (daily), v2 ends it
        (3, "2024-01-02 00:00", False), (4, "2024-01-02 01:00", True),   # v3 dropped (v5 is Jan 2's): v4 goes too
        (5, "2024-01-02 02:00", False), (6, "2024-01-03 00:00", False),
    ]
    got = _plan(spec, RetentionPolicy(last=1, daily=3))
    assert got[6] == (True, ("head", "last version", "daily version"))
    assert got[5] == (True, ("daily version",))
    assert got[4] == (False, ())
    assert got[3] == (False, ())
    assert got[2] == (True, ("ends kept version 1",))
    assert got[1] == (True, ("daily version",))


def test_leading_marker_without_older_content_goes() -> None:
    # version 1 can only be a marker after a forget removed what preceded it; nothing to end
    got = _plan([(1, "2024-01-01 00:00", True), (2, "2024-01-02 00:00", False)], RetentionPolicy(last=1))
    assert got == {2: (True, ("head", "last version")), 1: (False, ())}


def test_path_with_only_a_marker_keeps_it() -> None:
    assert _plan([(4, "2024-01-01 00:00", True)], RetentionPolicy(last=1)) == {4: (True, ("head",))}


def test_plan_of_holes_in_numbering() -> None:
    # versions 1-3 were forgotten earlier: the plan works on what is left
    spec = [(4, "2024-01-04 00:00", False), (7, "2024-01-07 00:00", False), (9, "2024-01-09 00:00", False)]
    assert _plan(spec, RetentionPolicy(last=2)) == {9: (True, ("head", "last version")),
                                                   7: (True, ("last version",)), 4: (False, ())}


def test_plan_is_idempotent() -> None:
    start = ms("2024-01-01 00:00")
    spec = [Candidate(i + 1, start + i * 3_600_000 * 7) for i in range(200)]
    policy = RetentionPolicy(hourly=5, daily=10, weekly=4, monthly=UNLIMITED)
    first = [v for v in plan_path(spec, policy, FAR_FUTURE) if v.keep]
    again = plan_path([Candidate(v.version, v.created_ms, v.deleted) for v in first], policy, FAR_FUTURE)
    assert all(v.keep for v in again)


def test_empty_path() -> None:
    assert plan_path([], RetentionPolicy(last=1), FAR_FUTURE) == []
