"""Circuit breaker and retry budget, stepping an injected clock instead of sleeping."""

from __future__ import annotations

from router.config import RetryBudgetSettings
from router.failover.budget import RetryBudget
from router.failover.circuit import State
from tests.support.breakers import breaker


def test_opens_on_failure_rate_only_after_min_calls() -> None:
    cb, _, changes = breaker(failure_rate=0.5)
    cb.record(False, 0.01)
    cb.record(False, 0.01)
    cb.record(False, 0.01)
    assert cb.state is State.CLOSED  # 3 calls < min_calls
    cb.record(True, 0.01)
    assert cb.state is State.OPEN  # 3 of 4 failed
    assert not cb.try_acquire_permission()
    assert changes == [(State.CLOSED, State.OPEN)]


def test_opens_on_slow_call_rate() -> None:
    cb, _, _ = breaker(slow_call_ms=100, slow_call_rate=0.5)
    for _ in range(4):
        cb.record(True, 0.2)
    assert cb.state is State.OPEN


def test_half_open_probes_close_it() -> None:
    cb, clock, changes = breaker()
    for _ in range(4):
        cb.record(False, 0.01)
    clock.now = 4.9
    assert not cb.try_acquire_permission()
    clock.now = 5.0
    assert (
        cb.try_acquire_permission()
        and cb.try_acquire_permission()
        and not cb.try_acquire_permission()
    )  # two probe permits
    assert cb.state is State.HALF_OPEN
    cb.record(True, 0.01)
    cb.record(True, 0.01)
    assert cb.state is State.CLOSED and cb.try_acquire_permission()
    assert changes[-2:] == [(State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED)]


def test_failed_probe_reopens_for_a_full_period() -> None:
    cb, clock, _ = breaker()
    for _ in range(4):
        cb.record(False, 0.01)
    clock.now = 6.0
    assert cb.try_acquire_permission()
    cb.record(False, 0.01)
    assert cb.state is State.OPEN
    clock.now = 10.9
    assert not cb.try_acquire_permission()
    clock.now = 11.0
    assert cb.state is State.OPEN  # reading does not move it
    assert cb.try_acquire_permission() and cb.state is State.HALF_OPEN


def test_retry_budget_limits_retries_to_the_ratio() -> None:
    budget = RetryBudget(RetryBudgetSettings(ratio=0.2, max_tokens=3))
    retries = 0
    for _ in range(1000):
        budget.on_request()
        retries += budget.try_spend()  # every request wants a retry: total failure
    assert 195 <= retries <= 203
    idle = RetryBudget(RetryBudgetSettings(ratio=0.2, max_tokens=3))
    for _ in range(100):
        idle.on_request()
    assert sum(idle.try_spend() for _ in range(10)) == 3  # the burst is capped
