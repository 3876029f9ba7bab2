"""CircuitBreaker: the state machine against a model, and its validation."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actorq


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Model:
    """The documented behaviour, written as plainly as possible."""

    def __init__(self, threshold: int, reset: float, probes: int) -> None:
        self.threshold, self.reset, self.max_probes = threshold, reset, probes
        self.state, self.fails, self.opened, self.inflight = "closed", 0, 0.0, 0

    def tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened + self.reset:
            self.state, self.inflight = "half_open", 0

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.state == "closed":
            return True
        if self.state == "half_open" and self.inflight < self.max_probes:
            self.inflight += 1
            return True
        return False

    def outcome(self, failed: bool, now: float) -> None:
        if self.state == "half_open":
            self.inflight = max(0, self.inflight - 1)
            if failed:
                self.state, self.opened, self.fails = "open", now, 0
            else:
                self.state, self.fails = "closed", 0
        elif self.state == "closed":
            if failed:
                self.fails += 1
                if self.fails >= self.threshold:
                    self.state, self.opened, self.fails = "open", now, 0
            else:
                self.fails = 0

    def trip(self, now: float) -> None:
        self.state, self.opened, self.fails = "open", now, 0

    def probe_now(self) -> None:
        if self.state == "open":
            self.state, self.inflight = "half_open", 0


ops = st.lists(st.one_of(
    st.tuples(st.just("allow"), st.none()),
    st.tuples(st.just("ok"), st.none()),
    st.tuples(st.just("fail"), st.sampled_from(["crash", "timeout", "value", "listed"])),
    st.tuples(st.just("sleep"), st.floats(0.0, 3.0)),
    st.tuples(st.sampled_from(["trip", "probe_now"]), st.none()),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(threshold=st.integers(1, 5), reset=st.floats(0.1, 2.0), probes=st.integers(1, 3),
       steps=ops)
def test_circuit_matches_the_model(threshold, reset, probes, steps):
    clock = FakeClock()
    cb = actorq.CircuitBreaker(threshold, reset, probes, failure_on=(KeyError,), clock=clock)
    model = Model(threshold, reset, probes)
    errors = {"crash": actorq.ActorCrashed("x"), "timeout": actorq.CallTimeout("t"),
              "value": ValueError("v"), "listed": KeyError("k")}
    for op, arg in steps:
        if op == "allow":
            assert cb.allow() == model.allow(clock.now)
        elif op == "ok":
            cb.record(None)
            model.outcome(False, clock.now)
        elif op == "fail":
            exc = errors[arg]
            cb.record(exc)
            model.outcome(arg != "value", clock.now)  # a plain ValueError is the caller's
        elif op == "trip":
            cb.trip()
            model.trip(clock.now)
        elif op == "probe_now":
            cb.probe_now()
            model.probe_now()
        else:
            clock.now += arg
        # the lock-free snapshots a pool reads per call (before ``state`` ticks: an open
        # circuit that is due is not closed either way)
        assert cb.closed == (model.state == "closed")
        assert cb.settled == (model.state == "closed" and model.fails == 0)
        model.tick(clock.now)
        assert cb.state == model.state
        if model.state == "open":
            assert cb.next_probe_at() == pytest.approx(model.opened + reset)


def test_opens_after_threshold_half_opens_then_closes_on_a_probe_success():
    clock = FakeClock()
    cb = actorq.CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)
    for _ in range(2):
        cb.record_failure()
    assert cb.state == "closed"
    cb.record_failure()
    assert cb.state == "open"
    assert not cb.allow()
    assert not cb.available()
    assert cb.next_probe_at() == 105.0
    clock.now = 105.0
    assert cb.state == "half_open"
    assert cb.allow()
    assert not cb.allow()
    cb.record_success()
    assert cb.state == "closed"
    assert cb.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


def test_a_failed_probe_reopens_and_restarts_the_timer():
    clock = FakeClock()
    cb = actorq.CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    cb.record_failure()
    clock.now += 1.0
    assert cb.allow()
    clock.now += 0.5
    cb.record_failure()
    assert cb.state == "open"
    assert cb.next_probe_at() == pytest.approx(clock.now + 1.0)


def test_a_success_resets_the_consecutive_count():
    cb = actorq.CircuitBreaker(failure_threshold=2, reset_timeout=1.0)
    for _ in range(10):
        cb.record_failure()
        cb.record_success()
    assert cb.state == "closed"


@pytest.mark.parametrize("kwargs", [
    {"failure_threshold": 0}, {"failure_threshold": 1.5}, {"reset_timeout": 0},
    {"reset_timeout": -1}, {"half_open_max_calls": 0}, {"failure_threshold": True},
])
def test_bad_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        actorq.CircuitBreaker(**kwargs)


def test_failure_on_must_be_exception_types():
    with pytest.raises(TypeError, match="failure_on"):
        actorq.CircuitBreaker(failure_on=("ValueError",))


def test_pickles_as_its_settings_with_a_fresh_state():
    cb = actorq.CircuitBreaker(failure_threshold=1, reset_timeout=3.0, failure_on=(KeyError,))
    cb.record_failure()
    copy = pickle.loads(pickle.dumps(cb))
    assert copy.state == "closed"
    assert copy.failure_threshold == 1
    assert copy.reset_timeout == 3.0
    assert copy.failure_on == (KeyError,)
    assert cb.fresh().state == "closed"


def test_cancel_gives_back_a_probe_slot():
    clock = FakeClock()
    cb = actorq.CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    cb.record_failure()
    clock.now += 1.0
    assert cb.allow()
    assert not cb.allow()
    cb.cancel()
    assert cb.state == "half_open"
    assert cb.allow()


def test_trip_opens_at_once_and_probe_now_half_opens_for_a_new_target():
    now = [0.0]
    cb = actorq.CircuitBreaker(failure_threshold=5, reset_timeout=60.0, clock=lambda: now[0])
    cb.trip()
    assert cb.state == "open"
    assert not cb.allow()
    cb.probe_now()
    assert cb.state == "half_open"
    assert cb.allow()
    assert not cb.allow()
    cb.record_success()
    assert cb.state == "closed"
    assert cb.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}
