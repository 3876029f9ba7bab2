"""The task worker's side (_graph/worker.py): its clock of the time spent waiting for a core,
and the wire form of a task's arguments."""

from __future__ import annotations

import threading

import actorq
from actorq._graph import worker
from actorq._graph.graph import FLAT, Dep
from actorq._graph.worker import PICKLED, VALUE, RunQueueClock, fill_flat


def test_the_run_queue_clock_reads_this_threads_wait_and_follows_the_thread():
    clock = RunQueueClock()
    first = clock()
    assert isinstance(first, float)
    assert first >= 0.0
    assert clock() >= first  # a total so far: it never goes back
    seen: list[float] = []
    t = threading.Thread(target=lambda: seen.append(clock()))
    t.start()
    t.join(10)
    assert len(seen) == 1
    assert seen[0] >= 0.0  # read from the other thread's own file (opened again there)
    clock.close()
    clock.close()  # idempotent
    assert clock() >= 0.0  # opens again


def test_without_schedstat_the_wait_is_zero(monkeypatch):
    monkeypatch.setattr(worker, "SCHEDSTAT", "/nonexistent/schedstat")
    clock = RunQueueClock()
    assert clock() == 0.0
    assert clock() == 0.0
    clock.close()


def test_a_flat_template_is_filled_by_the_scheduler_only_with_plain_scalars():
    args = (7, Dep(1), "x", Dep(0), Dep(1))
    deps = (Dep(2), Dep(0))  # the node's dependencies: each an index into the run's values
    values = [(VALUE, None), (VALUE, "unused"), (VALUE, 1.5)]
    assert fill_flat(args, deps, values) == (7, None, "x", 1.5, None)
    # a pickled value stays for the worker to load (and fill): not sent half-filled
    values[0] = (PICKLED, b"...")
    assert fill_flat(args, deps, values) is None


def _total(*xs: float) -> float:
    return sum(xs)


def _pair(x: float) -> list[float]:
    return [x, x]


def _received(*xs: object) -> list[object]:
    return list(xs)


def test_flat_arguments_reach_the_task_filled_whatever_their_values_kind(system):
    g = actorq.Graph()
    a, b = g.task(_total, 1.0), g.task(_pair, 2.0)  # a scalar, and a list (pickled)
    plain = g.task(_total, a, 3.0, a)  # every value a scalar: filled by the scheduler
    mixed = g.task(_received, a, "s", b)  # one pickled value: filled by the worker
    assert plain.nested == FLAT
    assert mixed.nested == FLAT
    after = g.task(_total, 1.0, plain)
    result = system.run(g, workers=1)
    assert result.ok
    assert result[plain] == 5.0
    assert result[after] == 6.0
    assert result[mixed] == [1.0, "s", [2.0, 2.0]]
