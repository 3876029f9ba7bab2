"""Backoff: exponential caps, full jitter within them, validation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import actorq
from actorq._resilience.backoff import RestartAtOnce


def test_caps_grow_exponentially_and_stop_at_maximum():
    b = actorq.Backoff(initial=0.01, maximum=1.0, multiplier=2.0)
    assert [b.cap(n) for n in range(8)] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0]
    assert b.cap(10_000) == 1.0


@given(attempt=st.integers(0, 5000), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_the_cap(attempt, seed):
    b = actorq.Backoff(initial=0.05, maximum=3.0, rng=random.Random(seed))
    d = b.delay(attempt)
    assert 0.0 <= d <= b.cap(attempt)


def test_full_jitter_spreads_delays():
    b = actorq.Backoff(initial=1.0, maximum=1.0, rng=random.Random(7))
    draws = [b.delay(3) for _ in range(2000)]
    # uniform on [0, 1]: mean near 0.5, both halves well populated
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert min(draws) < 0.05
    assert max(draws) > 0.95


def test_no_jitter_is_the_cap():
    b = actorq.Backoff(initial=0.1, maximum=0.5, jitter="none")
    assert [b.delay(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.5]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"initial": -1}, "must be >= 0"),
    ({"multiplier": 0.5}, "multiplier"),
    ({"jitter": "some"}, "jitter"),
])
def test_bad_backoff_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        actorq.Backoff(**kwargs)


@given(attempt=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_restart_at_once_waits_nothing_first_then_the_backoff_from_its_start(attempt, seed):
    b = RestartAtOnce(initial=0.05, maximum=3.0, rng=random.Random(seed))
    assert b.delay(0) == 0.0
    assert 0.0 <= b.delay(attempt) <= b.cap(attempt - 1)
