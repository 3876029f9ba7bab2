"""The task worker's side (_graph/worker.py): its clock of the time spent waiting for a core."""

from __future__ import annotations

import threading

from actorq._graph import worker
from actorq._graph.worker import RunQueueClock


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
