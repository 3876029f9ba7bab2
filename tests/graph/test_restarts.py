"""Lost graph workers: restarted at once; the tasks' re-runs carry their own backoff."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import time
from pathlib import Path

import pytest

import actorq
from actorq._graph.pool import RESTART_BACKOFF

SLOW = actorq.Backoff(initial=60.0, maximum=60.0, jitter="none")


def die_once(flag, x):
    """SIGKILL our own worker the first time (the flag file says whether it happened)."""
    if not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def always_die(log):
    with open(log, "a") as f:
        f.write(f"{time.monotonic()!r}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_restart_policy_is_at_once_then_backs_off_for_a_crash_loop():
    assert RESTART_BACKOFF.delay(0) == 0.0  # the first restart within the window
    for attempt in range(1, 12):  # the next ones: the Backoff, from its start
        assert 0.0 <= RESTART_BACKOFF.delay(attempt) <= RESTART_BACKOFF.cap(attempt - 1)
    assert RESTART_BACKOFF.cap(10) == 1.0


def test_a_sigkilled_worker_is_restarted_at_once_whatever_the_runs_backoff(system, tmp_path,
                                                                            caplog):
    """The run's Retry has a backoff of a minute: neither the worker's restart nor the
    task's first re-run after losing its worker waits for it."""
    g = actorq.Graph()
    victim = g.task(die_once, str(tmp_path / "flag"), 21)
    others = [g.task(die_once, str(tmp_path / "never"), i) for i in range(4)]
    (tmp_path / "never").touch()
    caplog.set_level(logging.WARNING, logger="actorq._supervision.supervisor")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(system.run, g, workers=2,
                        retry=actorq.Retry(max_attempts=3, backoff=SLOW))
        result = fut.result(timeout=45)  # a minute's backoff anywhere would not fit
    assert result.ok, result.failed
    assert result[victim] == 42
    assert [result[n] for n in others] == [0, 2, 4, 6]
    assert result.stats.crashes == 1
    assert result.stats.tasks[victim].attempts == 2
    restarts = [r.getMessage() for r in caplog.records
                if "'graph-workers'" in r.getMessage() and "restarting" in r.getMessage()]
    assert restarts  # the pool's supervisor restarted the killed worker ...
    assert restarts[0].endswith("in 0.000s")  # ... at once (a warm spare when ready)


def test_a_task_that_keeps_killing_its_worker_waits_its_backoff_between_losses(system,
                                                                               tmp_path):
    log = tmp_path / "attempts"
    backoff = actorq.Backoff(initial=0.2, maximum=0.2, jitter="none")
    g = actorq.Graph()
    bad = g.task(always_die, str(log), retry=actorq.Retry(max_attempts=2, backoff=backoff))
    fine = g.task(die_once, str(tmp_path / "never"), 5)
    (tmp_path / "never").touch()
    result = system.run(g, workers=2)
    with pytest.raises(actorq.ActorCrashed, match=r"lost its worker 4 times"):
        result[bad]
    assert result[fine] == 10
    assert result.stats.tasks[bad].attempts == 4  # at least CRASH_ATTEMPTS + 1
    assert result.stats.crashes == 3  # every re-run counted
    starts = [float(x) for x in Path(log).read_text().split()]
    assert len(starts) == 4
    # the first re-run went at once; the later ones waited the task's backoff (a
    # lower bound the scheduler's timer guarantees; the clock is the system's)
    assert starts[2] - starts[1] >= 0.2
    assert starts[3] - starts[2] >= 0.2


class Echo(actorq.Actor):
    def echo(self, x):
        return x


def test_pool_restart_backoff_must_be_a_backoff(system):
    with pytest.raises(TypeError, match=r"restart_backoff must be an actorq\.Backoff"):
        system.pool(Echo, size=1, restart_backoff=0.5)
