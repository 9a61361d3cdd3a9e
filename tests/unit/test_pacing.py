"""Waiting out rate limits in the upload engines: the delays the server names, within the cap."""

from __future__ import annotations

import pytest

from cas.errors import LimitExceededError, RateLimitedError
from cli.pacing import RateLimitBudget, retry_rate_limited


def _budget(max_wait_s: float) -> tuple[RateLimitBudget, list[float]]:
    slept: list[float] = []
    return RateLimitBudget(max_wait_s, sleep=slept.append), slept


def _refusing(delays: list[float], answer: str = "done"):  # noqa: ANN202 - a call that is refused len(delays) times
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(delays):
            raise RateLimitedError(delays[len(calls) - 1])
        return answer

    return call, calls


def test_refusals_are_waited_out_for_the_delays_the_server_names():
    budget, slept = _budget(10)
    call, calls = _refusing([0.5, 1.5, 2.0])
    assert retry_rate_limited(call, budget) == "done"
    assert slept == [0.5, 1.5, 2.0] and len(calls) == 4
    assert budget.waited_s == pytest.approx(4.0) and budget.left_s == pytest.approx(6.0)


def test_a_refusal_past_the_cap_is_raised_without_waiting():
    budget, slept = _budget(3)
    call, calls = _refusing([2.0, 2.0])
    with pytest.raises(RateLimitedError) as info:
        retry_rate_limited(call, budget)
    assert info.value.retry_after_s == 2.0
    assert slept == [2.0] and len(calls) == 2  # the second delay would take the total to 4 s


def test_other_errors_are_not_retried():
    budget, slept = _budget(10)
    calls = []

    def call() -> None:
        calls.append(1)
        raise LimitExceededError("too many digests", limit="max_find_digests", value=11, maximum=10)

    with pytest.raises(LimitExceededError):
        retry_rate_limited(call, budget)
    assert calls == [1] and slept == []
