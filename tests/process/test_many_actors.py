"""Many actors in one system (issue 15): 200 of them start, all answer, none leaks.

The timing of a thousand is a benchmark (benchmarks/bench_scale.py), not a test: here
only what must hold at any speed. Every actor answers with its own process id, so 200
answers from 200 distinct live processes show that no start was lost, doubled or
answered by the wrong process; after ``close`` every one of them is gone and no
segment of the run is left (the autouse leak guard checks the suite-wide view too).
"""

from __future__ import annotations

import os

import psutil
import pytest

import actorq
from actorq._core.protocol import C_WATCH_MS
from actorq._transport.channel import C_PARKED
from actorq._transport.shm import list_segments
from actorq.testing import wait_until

N = 200
BOUND = 300.0  # seconds: generous, for a loaded 2-core machine; never a timing assert


class Whoami(actorq.Actor):
    def __init__(self, tag: int) -> None:
        self.tag = tag

    def who(self) -> tuple[int, int]:
        return self.tag, os.getpid()


@pytest.mark.timeout(BOUND)  # 200 process starts: the suite's 60 s is for one or two
def test_two_hundred_actors_all_answer_and_leave_nothing() -> None:
    with actorq.ActorSystem(call_timeout=BOUND) as system:
        run_id = system._runtime.run_id
        refs = [system.spawn(Whoami, i) for i in range(N)]
        for ref in refs:
            system.wait_ready(ref, timeout=BOUND)
        answers = [r.result(timeout=BOUND) for r in [ref.who() for ref in refs]]
        assert [tag for tag, _ in answers] == list(range(N))
        pids = {pid for _, pid in answers}
        assert len(pids) == N
        assert pids == {system.pid_of(ref) for ref in refs}
        assert len(system.metrics()["actors"]) == N
        assert all(psutil.pid_exists(pid) for pid in pids)
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=60)
    assert not [s for s in list_segments() if s.startswith(run_id)]


def test_a_burst_of_starts_closed_midway_leaves_no_process() -> None:
    # A burst launches processes ahead of the starter thread (forkserver); closing the
    # system while some are launched but not yet booted must stop those too.
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with actorq.ActorSystem() as system:
        run_id = system._runtime.run_id
        refs = [system.spawn(Whoami, i) for i in range(30)]
        assert refs[0].who().result(timeout=BOUND)[0] == 0
    wait_until(lambda: not [p for p in me.children(recursive=True)
                            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE],
               timeout=60, message="every process of the burst stopped")
    assert not [s for s in list_segments() if s.startswith(run_id)]


@pytest.mark.timeout(BOUND)
def test_idle_actors_stop_their_watchdogs_and_a_lost_wake_up_is_still_found() -> None:
    # The idle cost must not grow with the actor count (issue 15): once idle, no timer
    # of its own wakes an actor; the system's sweep reads every actor's rings instead,
    # asks nobody while nothing is stranded, and finds a lost wake-up on any one of them
    # (which alone counts it); every actor answers throughout.
    n = 40
    with actorq.ActorSystem(call_timeout=BOUND, park_timeout=0.01) as system:
        refs = [system.spawn(Whoami, i) for i in range(n)]
        assert [r.result(timeout=BOUND)[0] for r in [ref.who() for ref in refs]] == list(
            range(n))
        cells = [system._runtime._cells[ref.actor_id] for ref in refs]

        def all_stopped() -> bool:
            return all(c.ctl.slots[C_WATCH_MS] == 0 and c.ctl.slots[C_PARKED] & 1
                       for c in cells)

        wait_until(all_stopped, timeout=BOUND, message="every idle actor's watchdog stopped")
        sweep = system._runtime._idle
        asked, passes = sweep.asked, sweep.passes
        wait_until(lambda: sweep.passes >= passes + 2, timeout=BOUND,
                   message="two passes of the idle sweep")
        assert sweep.asked == asked  # nothing stranded: nobody asked, nobody woken
        assert all_stopped()
        victim = n // 2
        chan = system._runtime.hub.outbound[refs[victim].actor_id]
        chan.last_rung = cells[victim].ctl.slots[C_PARKED]  # its doorbell "got lost"
        assert refs[victim].who().result(timeout=BOUND)[0] == victim
        assert sweep.asked == asked + 1
        lost = {ref.name: m["lost_wakeups"] for ref in refs
                for m in [system.metrics()["actors"][ref.name]]}
        assert lost == {ref.name: int(i == victim) for i, ref in enumerate(refs)}
        assert [r.result(timeout=BOUND)[0] for r in [ref.who() for ref in refs]] == list(
            range(n))
