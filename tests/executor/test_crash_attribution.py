"""Whose fault is a worker's death while it unpickles a task's data (``ledger``'s steps).

A worker killed from outside (the OOM killer, a ``SIGKILL``) exactly while it rebuilds
an argument is not taken for an argument that kills workers: the argument is rebuilt
again on another worker, and the task runs once. An argument, or a function whose
module's import, kills a second worker in the same step is blamed: its task fails
with ``DecodeError`` naming it (and for a function, every task of it fails, without
killing more workers), and the executor goes on. Real processes, real kills; runs are
counted by their side effects in files.
"""

from __future__ import annotations

import os
import signal

import pytest

import actorq
from actorq._executor import ledger
from actorq.testing import wait_until
from tests.executor.helpers import record_run, run_counted, run_counts, wait_for_file


def killing_function():
    """``never_runs``, of a module whose import ends a worker: imported here, not at the
    top of this module, which the workers import (for ``rebuild_or_block``)."""
    from tests.executor.import_kills_workers import never_runs

    return never_runs


def crashes(ex):
    """Worker deaths the pool has seen."""
    return sum(n for m in ex.pool.statistics().members
               for kind, n in m.failures.items() if kind.startswith("crash"))


def rebuild_or_block(announce, killed, never):
    """Unpickling a ``BlockAtUnpickle``: the first worker announces its pid and waits
    (for a gate that never opens) to be killed by the test; later ones rebuild it."""
    if not os.path.exists(killed):
        with open(announce + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(announce + ".tmp", announce)  # whole, or not there
        wait_for_file(never, limit=120)
        raise AssertionError("not killed: the test did not see this worker")
    return "rebuilt"


class BlockAtUnpickle:
    def __init__(self, announce, killed, never):
        self.paths = (announce, killed, never)

    def __reduce__(self):
        return rebuild_or_block, self.paths


@pytest.mark.parametrize("retry", ["default", None])
def test_a_worker_killed_from_outside_while_it_unpickles_an_argument_is_retried(
        tmp_path, retry):
    """The first worker is SIGKILLed by the test exactly while it rebuilds the task's
    argument: the task is not failed as if the argument had killed it. The pool's retry
    (or, without retries, the executor, since the task had not run) rebuilds it on
    another worker, and the task runs once."""
    announce, killed, never, runs = (str(tmp_path / n)
                                     for n in ("announce", "killed", "never", "runs"))
    options = {} if retry == "default" else {"retry": None}
    with actorq.Executor(2, **options) as ex:
        ex.submit(abs, 0).result(timeout=60)
        future = ex.submit(run_counted, 7, runs, BlockAtUnpickle(announce, killed, never))
        wait_until(lambda: os.path.exists(announce), timeout=120)
        with open(announce) as f:
            victim = int(f.read())
        open(killed, "w").close()  # before the kill: the retry rebuilds the argument
        os.kill(victim, signal.SIGKILL)
        assert future.result(timeout=120) == "rebuilt"
        assert run_counts(runs) == {7: 1}
        assert victim != os.getpid()
        assert crashes(ex) == 1  # only the outside kill: the worker that rebuilt it lives
        assert ex.submit(abs, -5).result(timeout=60) == 5


class BlockAtPickle:
    """A result whose pickling, in the first worker, announces its pid and waits to be
    killed by the test; later ones pickle it (as the string "pickled")."""

    def __init__(self, announce, killed, never):
        self.paths = (announce, killed, never)

    def __reduce__(self):
        announce, killed, never = self.paths
        if not os.path.exists(killed):
            with open(announce + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(announce + ".tmp", announce)
            wait_for_file(never, limit=120)
            raise AssertionError("not killed: the test did not see this worker")
        return str, ("pickled",)


def counted_blocker(i, runs, announce, killed, never):
    record_run(i, runs)
    return BlockAtPickle(announce, killed, never)


@pytest.mark.parametrize("retry", ["default", None])
def test_a_worker_killed_from_outside_while_it_pickles_a_result_is_not_blamed_on_it(
        tmp_path, retry):
    """The first worker is SIGKILLed by the test exactly while it pickles the task's
    result: that is no proof that the result kills workers (one death is a suspect).
    With the pool's retry the task runs again, as after a death while it ran, and its
    result comes back; without retries it fails as such a death does (``ActorCrashed``),
    not with ``EncodeError``."""
    announce, killed, never, runs = (str(tmp_path / n)
                                     for n in ("announce", "killed", "never", "runs"))
    options = {} if retry == "default" else {"retry": None}
    with actorq.Executor(2, **options) as ex:
        ex.submit(abs, 0).result(timeout=60)
        future = ex.submit(counted_blocker, 7, runs, announce, killed, never)
        wait_until(lambda: os.path.exists(announce), timeout=120)
        with open(announce) as f:
            victim = int(f.read())
        open(killed, "w").close()  # before the kill: the retry pickles the result
        os.kill(victim, signal.SIGKILL)
        if retry == "default":
            assert future.result(timeout=120) == "pickled"
            assert run_counts(runs) == {7: 2}  # at-least-once: it ran again
        else:
            with pytest.raises(actorq.ActorCrashed, match="SIGKILL"):
                future.result(timeout=120)
            assert run_counts(runs) == {7: 1}
        assert crashes(ex) == 1  # only the outside kill
        assert ex.submit(abs, -5).result(timeout=60) == 5


def test_a_function_whose_module_import_kills_workers_fails_its_tasks_soon():
    """Importing the function's module ends every worker that tries. Each of its tasks
    fails with ``DecodeError`` naming the function and the module, after a bounded
    number of worker deaths (twice for the first task, to tell it from an outside
    kill; the messages already in flight may each cost two), not after the supervisor's
    ``max_restarts``; later tasks of it fail without being sent, and the executor
    serves every other function."""
    error = (r"function never_runs\(\) of module 'tests.executor.import_kills_workers' "
             r"killed worker processes \d+ and \d+ while it was unpickled there")
    never_runs = killing_function()
    with actorq.Executor(2) as ex:
        ex.submit(abs, 0).result(timeout=60)
        futures = [ex.submit(never_runs, i) for i in range(20)]
        for f in futures:
            with pytest.raises(actorq.DecodeError, match=error):
                f.result(timeout=120)
        deaths = crashes(ex)
        # fewer deaths than tasks: its tasks were not each sent to die (seen: 8, two per
        # message in flight, 4 slots); before, the first task's death looped until the
        # supervisor's max_restarts
        assert 2 <= deaths < len(futures)
        assert ex.submit(abs, -3).result(timeout=60) == 3
        assert list(ex.map(abs, [-1, -2, -3], chunksize=2)) == [1, 2, 3]
        with pytest.raises(actorq.DecodeError, match=error):
            ex.submit(never_runs, 99).result(timeout=60)
        assert list(ex.map(abs, [-4])) == [4]
        assert crashes(ex) == deaths  # the later task was not sent


@pytest.mark.parametrize("retry", ["default", None])
def test_a_batch_of_a_function_whose_import_kills_fails_together(tmp_path, retry):
    """Tasks of the killing function and of a good one, queued behind blockers so that
    they go out in batches: every task of the bad function fails, every good one runs
    once, and the executor goes on."""
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    never_runs = killing_function()
    options = {} if retry == "default" else {"retry": None}
    with actorq.Executor(2, **options) as ex:
        ex.submit(abs, 0).result(timeout=60)
        blockers = [ex.submit(wait_for_file, gate) for _ in range(4)]
        futures = [ex.submit(never_runs, i) if i % 3 == 1 else ex.submit(run_counted, i, runs)
                   for i in range(30)]
        open(gate, "w").close()
        for i, f in enumerate(futures):
            if i % 3 == 1:
                with pytest.raises(actorq.DecodeError, match=r"function never_runs\(\)"):
                    f.result(timeout=120)
            else:
                assert f.result(timeout=120) == i
        for b in blockers:
            b.result(timeout=60)
        assert run_counts(runs) == {i: 1 for i in range(30) if i % 3 != 1}
        assert 2 <= crashes(ex) < 2 * 10  # fewer than two per task of it (seen: 8)
        assert ex.submit(abs, -6).result(timeout=60) == 6


def test_a_second_death_in_another_step_does_not_blame_the_first():
    """The suspect is one step (task, part): a death in another one, or in the same
    one by the same process, is not the second death that blames it."""
    path = ledger.create(1)
    try:
        m = ledger.open_map(path)
        rec = ledger.BatchRecord(m, 0, batch=3)
        rec.pid = 2222 << 32
        rec.step(ledger.LOADING, 4)
        ledger.BatchRecord(m, 0, batch=3)  # the retry: a suspect now
        rec.pid = 3333 << 32
        rec.step(ledger.LOADING, 5)  # another task
        other = ledger.crash_step(m, 0, {}, batch=3)
        assert other == ledger.Step(ledger.LOADING, 5, 0, 3333)
        assert not other.blamed
        ledger.set_suspect(m, 0, ledger.step_word(ledger.DECODING, 0, 1, 4444))
        rec.pid = 4444 << 32
        rec.step(ledger.DECODING, 0, 1)  # the suspect's own process: not a second death
        assert not ledger.crash_step(m, 0, {}, batch=3).blamed
        rec.pid = 5555 << 32
        rec.step(ledger.DECODING, 0, 1)  # sent again alone, and another worker died
        assert ledger.crash_step(m, 0, {}, batch=3).earlier == 4444
        rec.step(ledger.ENCODING, 0)  # an outcome's pickling: a suspect too, first
        assert not ledger.crash_step(m, 0, {}, batch=3).blamed
        ledger.set_suspect(m, 0, ledger.step_word(ledger.ENCODING, 0, 0, 4444))
        assert ledger.crash_step(m, 0, {}, batch=3).earlier == 4444  # then blamed
        m.close()
    finally:
        ledger.remove(path)


def test_a_function_whose_module_import_raises_fails_each_task_with_the_error():
    """The import raises instead of killing: nothing to attribute; each task fails with
    ``DecodeError`` naming the function, its module and the import's error, no worker
    dies, and the function is not remembered as bad (its module may import later)."""
    from tests.executor.import_raises_in_workers import never_runs_either

    error = (r"function never_runs_either\(\) of module "
             r"'tests.executor.import_raises_in_workers' could not be unpickled in the "
             r"worker \(pid \d+\), so the task was not run: ImportError: this library is "
             "not installed")
    with actorq.Executor(2) as ex:
        for _ in range(2):
            with pytest.raises(actorq.DecodeError, match=error) as info:
                ex.submit(never_runs_either, 1).result(timeout=60)
            assert isinstance(info.value.__cause__, actorq.RemoteTraceback)
        with pytest.raises(actorq.DecodeError, match=error):
            list(ex.map(never_runs_either, [1, 2, 3], chunksize=2))
        assert ex.submit(abs, -2).result(timeout=60) == 2
        assert crashes(ex) == 0
        assert not ex._poisoned
