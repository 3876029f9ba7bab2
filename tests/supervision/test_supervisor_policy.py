"""The supervisor state machine alone: fake clock, recording ops, no processes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actorq
from actorq._supervision.policy import ActorOptions, classify_exit, should_restart
from actorq._supervision.supervisor import Supervisor


class Cell:
    def __init__(self, ident, name):
        self.id = ident
        self.name = name


class Ops:
    def __init__(self):
        self.restarts = []
        self.finished = []
        self.events = []

    def restart_group(self, cells, delay):
        self.restarts.append(([c.name for c in cells], delay))

    def finish_group(self, cells, why):
        self.finished.append(([c.name for c in cells], why))

    def supervisor_event(self, decision, supervisor, child, why):
        self.events.append(decision)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(strategy="one_for_one", max_restarts=2, within=5.0, parent=None, per_child=False,
         clock=None, ops=None):
    ops = ops or Ops()
    sup = Supervisor(ops, "s", strategy=strategy, max_restarts=max_restarts, within=within,
                     backoff=actorq.Backoff(initial=0.1, maximum=1.0, jitter="none"),
                     parent=parent, give_up_per_child=per_child, clock=clock or Clock())
    return sup, ops


def add_cells(sup, *names):
    cells = [Cell(i + 1, n) for i, n in enumerate(names)]
    sup.children.extend(cells)
    return cells


@pytest.mark.parametrize(("strategy", "crashed", "group"), [
    ("one_for_one", "b", ["b"]),
    ("one_for_all", "b", ["a", "b", "c"]),
    ("rest_for_one", "b", ["b", "c"]),
    ("rest_for_one", "a", ["a", "b", "c"]),
    ("rest_for_one", "c", ["c"]),
])
def test_strategy_picks_the_group_in_start_order(strategy, crashed, group):
    sup, ops = make(strategy)
    cells = dict(zip("abc", add_cells(sup, "a", "b", "c"), strict=True))
    sup.child_failed(cells[crashed], "boom")
    assert ops.restarts == [(group, 0.1)]


def test_backoff_grows_with_recent_restarts_and_resets_outside_the_window():
    clock = Clock()
    sup, ops = make(max_restarts=10, within=5.0, clock=clock)
    (a,) = add_cells(sup, "a")
    for t in (0.0, 0.1, 0.2):
        clock.now = t
        sup.child_failed(a, "boom")
    assert [d for _, d in ops.restarts] == pytest.approx([0.1, 0.2, 0.4])
    clock.now = 100.0  # the old restarts left the window
    sup.child_failed(a, "boom")
    assert ops.restarts[-1][1] == pytest.approx(0.1)


def test_intensity_exceeded_escalates_to_the_parent_which_restarts_the_subtree():
    clock = Clock()
    root, ops = make(max_restarts=5, per_child=True, clock=clock)
    child_sup, _ = make(max_restarts=1, parent=root, clock=clock, ops=ops)
    a, _b = add_cells(child_sup, "a", "b")
    child_sup.child_failed(a, "boom")  # 1 <= 1: restart a
    assert ops.restarts[-1][0] == ["a"]
    child_sup.child_failed(a, "boom again")  # 2 > 1: escalate
    assert "escalated" in ops.events
    assert ops.restarts[-1][0] == ["a", "b"]  # root restarts the whole subtree


def test_root_gives_up_on_one_child_only():
    clock = Clock()
    root, ops = make(max_restarts=1, per_child=True, clock=clock)
    a, b = add_cells(root, "a", "b")
    root.child_failed(a, "x")
    root.child_failed(b, "y")  # per child: b's first restart
    root.child_failed(a, "x")  # a's second: too many
    assert ops.finished
    assert ops.finished[-1][0] == ["a"]
    assert "gave up" in ops.finished[-1][1]
    assert root.children == [b]


@settings(max_examples=100, deadline=None)
@given(times=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=30),
       max_restarts=st.integers(0, 5), within=st.floats(0.5, 10))
def test_gives_up_exactly_when_more_than_max_restarts_fall_in_the_window(times, max_restarts,
                                                                         within):
    clock = Clock()
    root, ops = make(max_restarts=max_restarts, within=within, per_child=True, clock=clock)
    (a,) = add_cells(root, "a")
    history = []
    for t in sorted(times):
        if ops.finished:
            break
        clock.now = t
        history = [h for h in history if t - h <= within] + [t]
        expect_give_up = len(history) > max_restarts
        root.child_failed(a, "boom")
        assert bool(ops.finished) == expect_give_up


def test_policy_decisions():
    opts = ActorOptions()
    assert should_restart("permanent", "signal", -9, opts)
    assert not should_restart("temporary", "signal", -9, opts)
    assert should_restart("transient", "exit", 3, opts)
    assert not should_restart("transient", "exit", 0, opts)
    assert not should_restart("permanent", "start", 1, opts)
    assert should_restart("permanent", "start", 1, ActorOptions(restart_on={"start"}))
    assert classify_exit(-9, None, None) == "signal"
    assert classify_exit(-9, "hang", None) == "hang"
    assert classify_exit(1, None, "exception") == "exception"
    assert classify_exit(None, None, None) == "lost"
    with pytest.raises(ValueError, match="unknown causes"):
        ActorOptions(restart_on={"bad"})


def test_bad_supervisor_arguments():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Supervisor(Ops(), "x", strategy="all_for_none")
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor(Ops(), "x", max_restarts=-1)
    random.seed(0)
