"""Duty-cycle pacing of background work: the pauses it takes for the work it measured."""

from __future__ import annotations

import asyncio

import pytest

from cas.duty import DutyCycle


class FakeClock:
    """A clock only work (``advance``) and the pacer's sleeps move."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_half_duty_pauses_as_long_as_it_worked():
    clock = FakeClock()
    pacer = DutyCycle(0.5, clock=clock, sleep=clock.sleep)
    clock.advance(0.2)
    pacer.pause()
    clock.advance(0.1)
    pacer.pause()
    assert clock.slept == pytest.approx([0.2, 0.1])
    assert pacer.paused_s == pytest.approx(0.3)


def test_quarter_duty_pauses_three_times_the_work():
    clock = FakeClock()
    pacer = DutyCycle(0.25, clock=clock, sleep=clock.sleep)
    clock.advance(0.1)
    pacer.pause()
    assert abs(clock.slept[0] - 0.3) < 1e-9


def test_full_duty_never_pauses():
    clock = FakeClock()
    pacer = DutyCycle(1.0, clock=clock, sleep=clock.sleep)
    clock.advance(5)
    pacer.pause()
    assert clock.slept == [] and pacer.paused_s == 0


def test_short_pauses_carry_over_until_they_are_worth_a_sleep():
    clock = FakeClock()
    pacer = DutyCycle(0.5, min_pause_s=0.01, clock=clock, sleep=clock.sleep)
    clock.advance(0.004)
    pacer.pause()
    assert clock.slept == []
    clock.advance(0.008)
    pacer.pause()
    assert len(clock.slept) == 1 and abs(clock.slept[0] - 0.012) < 1e-9


def test_async_pause_owes_the_same_and_leaves_the_loop_free():
    clock = FakeClock()
    pacer = DutyCycle(0.5, min_pause_s=0.001, clock=clock, sleep=clock.sleep)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async def main() -> None:
        task = asyncio.create_task(other())
        clock.advance(0.002)
        await pacer.apause()
        assert ran == ["other"]  # the loop ran another task during the pause
        await task

    asyncio.run(main())
    assert abs(pacer.paused_s - 0.002) < 1e-9


def test_paced_iteration_yields_everything_and_pauses_every_n_items():
    clock = FakeClock()
    pacer = DutyCycle(0.5, min_pause_s=0.001, clock=clock, sleep=clock.sleep)

    def scan():  # noqa: ANN202 - each item costs 0.01 s of work
        for i in range(10):
            clock.advance(0.01)
            yield i

    assert list(pacer.paced(scan(), every=4)) == list(range(10))
    assert clock.slept == pytest.approx([0.04, 0.04])  # after items 4 and 8; the last 2 owe the next pause
