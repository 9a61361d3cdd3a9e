"""Per-identity token buckets: admission, retry hints, isolation, bounded memory."""

from __future__ import annotations

import threading

import pytest

from cas.errors import RateLimitedError
from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_rate():
    clock = Clock()
    rl = RateLimiter(rate=2, burst=3, clock=clock)
    for _ in range(3):
        rl.check("alice")
    with pytest.raises(RateLimitedError) as info:
        rl.check("alice")
    assert info.value.retry_after_s == pytest.approx(0.5)
    assert "alice" in str(info.value)
    clock.now += 0.49
    with pytest.raises(RateLimitedError) as info:
        rl.check("alice")
    assert info.value.retry_after_s == pytest.approx(0.01)
    clock.now += 0.01
    rl.check("alice")  # exactly when the hint said
    clock.now += 100
    for _ in range(3):  # refill caps at burst
        rl.check("alice")
    assert rl.acquire("alice") > 0


def test_retry_hint_is_honest():
    clock = Clock()
    rl = RateLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        rl.check("x")
    for _ in range(50):
        wait = rl.acquire("x")
        assert wait > 0
        clock.now += wait
        assert rl.acquire("x") == 0.0


def test_identities_are_isolated():
    clock = Clock()
    rl = RateLimiter(rate=1, burst=1, clock=clock)
    rl.check("alice")
    with pytest.raises(RateLimitedError):
        rl.check("alice")
    rl.check("bob")


def test_refused_calls_take_nothing():
    clock = Clock()
    rl = RateLimiter(rate=1, burst=2, clock=clock)
    rl.check("a", cost=2)
    for _ in range(10):
        assert rl.acquire("a") > 0
    clock.now += 1
    rl.check("a")


def test_costs_larger_than_burst_go_into_debt():
    clock = Clock()
    rl = RateLimiter(rate=100, burst=100, clock=clock)
    rl.check("big", cost=1000)  # admitted on a full bucket
    wait = rl.acquire("big")
    assert wait == pytest.approx(9.01)  # 900 tokens of debt + 1 for this call, at 100/s
    clock.now += 9.0
    assert rl.acquire("big") > 0
    clock.now += 0.01
    rl.check("big")
    with pytest.raises(ValueError):
        rl.check("big", cost=-1)


def test_disabled_limiter_admits_everything():
    rl = RateLimiter(rate=0, burst=0)
    assert not rl.enabled
    for _ in range(10_000):
        rl.check("x", cost=1e9)
    assert len(rl) == 0
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


def test_idle_identities_are_evicted():
    clock = Clock()
    rl = RateLimiter(rate=10, burst=10, clock=clock)
    for i in range(1000):
        rl.check(f"id{i}")
    assert len(rl) == 1000
    clock.now += 1.0  # every bucket has refilled completely
    rl.check("fresh")
    assert len(rl) == 1


def test_memory_is_bounded_and_debts_survive_when_possible():
    clock = Clock()
    rl = RateLimiter(rate=1, burst=5, max_identities=100, clock=clock)
    for _ in range(5):
        rl.check("hog")
    for i in range(10_000):
        rl.check(f"id{i}")
        assert len(rl) <= 100
    # Under pressure the least recently seen bucket goes; a recently active one keeps its debt.
    rl2 = RateLimiter(rate=1, burst=5, max_identities=3, clock=clock)
    for _ in range(5):
        rl2.check("hog")
    rl2.check("a")
    assert rl2.acquire("hog") > 0  # touches hog: most recent now
    rl2.check("b")
    rl2.check("c")  # evicts "a" (oldest), not "hog"
    assert rl2.acquire("hog") > 0


def test_thread_safety_admits_exactly_the_burst():
    clock = Clock()  # frozen: no refill during the test
    rl = RateLimiter(rate=1, burst=500, clock=clock)
    admitted = []
    lock = threading.Lock()

    def worker():
        n = 0
        for _ in range(200):
            if rl.acquire("shared") == 0.0:
                n += 1
        with lock:
            admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


def test_error_message_and_attribute():
    err = RateLimitedError(1.5)
    assert err.retry_after_s == 1.5 and "1.50" in str(err)
