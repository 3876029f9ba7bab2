"""Retry decisions and the retry budget (pure; clocks and randomness injected)."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

import actorq


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_transient_by_default_are_crashes_and_timeouts_only():
    r = actorq.Retry(max_attempts=3, budget=None)
    assert r.is_transient(actorq.ActorCrashed("x"))
    assert r.is_transient(actorq.CallTimeout("t"))
    assert not r.is_transient(ValueError("v"))
    assert actorq.Retry(retry_on=(ValueError,)).is_transient(ValueError("v"))


def test_permanent_errors_and_the_last_attempt_give_up():
    r = actorq.Retry(max_attempts=3, budget=None)
    assert r.decide(ValueError("v"), 1, now=0.0, deadline=None) is None
    assert r.decide(actorq.ActorCrashed("x"), 2, now=0.0, deadline=None) is not None
    assert r.decide(actorq.ActorCrashed("x"), 3, now=0.0, deadline=None) is None


def test_a_retry_that_cannot_finish_before_the_deadline_is_not_started():
    r = actorq.Retry(max_attempts=5, budget=None,
                     backoff=actorq.Backoff(initial=1.0, maximum=1.0, jitter="none"))
    exc = actorq.CallTimeout("t")
    assert r.decide(exc, 1, now=10.0, deadline=12.0, expected=0.5) == 1.0
    assert r.decide(exc, 1, now=10.0, deadline=11.4, expected=0.5) is None


def test_budget_allows_a_share_of_calls_over_the_window():
    clock = FakeClock()
    budget = actorq.RetryBudget(ratio=0.1, window=10.0, min_per_second=0.0, clock=clock)
    for _ in range(100):
        budget.record_call()
    spent = sum(budget.try_spend() for _ in range(50))
    assert spent == 10
    assert budget.refused == 40
    clock.now = 10.5  # the window moved past every call and retry
    assert not budget.try_spend()
    for _ in range(10):
        budget.record_call()
    assert budget.try_spend()


def test_budget_floor_lets_a_quiet_pool_retry():
    budget = actorq.RetryBudget(ratio=0.1, window=2.0, min_per_second=1.0, clock=FakeClock())
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_decide_consults_the_budget_last():
    budget = actorq.RetryBudget(ratio=0.0, window=1.0, min_per_second=0.0)
    r = actorq.Retry(max_attempts=3, budget=budget)
    assert r.decide(ValueError("permanent"), 1, now=0, deadline=None, budget=budget) is None
    assert budget.refused == 0  # a permanent error spends nothing
    assert r.decide(actorq.ActorCrashed("x"), 1, now=0, deadline=None, budget=budget) is None
    assert budget.refused == 1


@given(attempt=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_retry_delays_stay_within_the_backoff_cap(attempt, seed):
    b = actorq.Backoff(initial=0.01, maximum=2.0, rng=random.Random(seed))
    r = actorq.Retry(max_attempts=100, backoff=b, budget=None)
    d = r.decide(actorq.ActorCrashed("x"), attempt, now=0.0, deadline=None)
    assert d is not None
    assert 0.0 <= d <= b.cap(attempt - 1)


def test_jitter_is_not_synchronised_across_callers():
    # many callers that failed at the same moment must not retry at the same moment
    callers = [actorq.Retry(backoff=actorq.Backoff(initial=0.1, maximum=1.0), budget=None)
               for _ in range(200)]
    delays = [r.decide(actorq.ActorCrashed("x"), 2, now=0.0, deadline=None) for r in callers]
    assert all(d is not None and 0.0 <= d <= 0.2 for d in delays)
    assert len({round(d, 4) for d in delays}) > 150  # spread, not lock-step
    assert statistics.pstdev(delays) > 0.04  # uniform on [0, 0.2]: sd ~ 0.058


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"max_attempts": 2.5}])
def test_bad_retry_settings(kwargs):
    with pytest.raises(ValueError, match="max_attempts"):
        actorq.Retry(**kwargs)


def test_bad_retry_types():
    with pytest.raises(TypeError, match="retry_on"):
        actorq.Retry(retry_on=("ValueError",))
    with pytest.raises(TypeError, match="backoff"):
        actorq.Retry(backoff=0.1)
    with pytest.raises(ValueError, match="ratio"):
        actorq.RetryBudget(ratio=-1)
