"""``mp_context`` and ``max_tasks_per_child`` as ``ProcessPoolExecutor`` has them, after the
behaviours of CPython's Lib/test/test_concurrent_futures/test_process_pool.py (our own
tests; runs are counted by side effects in files)."""

from __future__ import annotations

import gc
import multiprocessing
import os

import pytest

import actorq
from actorq.testing import wait_until
from tests.executor.helpers import run_counted, wait_for_file

FLAG = "as imported"


def read_flag():
    return FLAG


def mul(x, y):
    return x * y


_initialised = None


def init_worker(value):
    global _initialised
    _initialised = value


def read_initialised():
    return _initialised


# -- max_tasks_per_child ----------------------------------------------------------------


def test_max_tasks_per_child_replaces_the_worker_after_that_many_tasks():
    with actorq.Executor(1, max_tasks_per_child=3) as ex:
        first = ex.submit(os.getpid).result(timeout=60)
        assert ex.submit(os.getpid).result(timeout=60) == first
        assert ex.submit(os.getpid).result(timeout=60) == first
        second = ex.submit(os.getpid).result(timeout=60)  # a fresh process
        assert second != first
        assert ex.pool.size == 1


@pytest.mark.parametrize(("workers", "limit", "tasks"), [(1, 2, 6), (2, 2, 8)])
def test_a_backlog_past_the_task_limit_is_all_done(workers, limit, tasks):
    with actorq.Executor(workers, max_tasks_per_child=limit) as ex:
        futures = [ex.submit(mul, i, 2) for i in range(tasks)]
        assert [f.result(timeout=120) for f in futures] == [i * 2 for i in range(tasks)]


def test_recycling_loses_and_duplicates_nothing_and_keeps_the_limit(tmp_path):
    runs = str(tmp_path / "runs")
    with actorq.Executor(2, max_tasks_per_child=3) as ex:
        futures = [ex.submit(run_counted, i, runs) for i in range(30)]
        futures += list(map(ex.submit, [run_counted] * 10, range(30, 40), [runs] * 10))
        assert [f.result(timeout=120) for f in futures] == list(range(40))
        chunked = list(ex.map(mul, range(50), range(50), chunksize=7))
        assert chunked == [i * i for i in range(50)]
    with open(runs) as f:
        lines = [line.split() for line in f]
    assert sorted(int(i) for i, _ in lines) == list(range(40))  # each ran exactly once
    per_pid: dict[str, int] = {}
    for _i, pid in lines:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert max(per_pid.values()) <= 3  # no process ran more than its limit
    assert len(per_pid) >= 40 // 3


def test_an_initializer_runs_again_in_each_fresh_worker():
    with actorq.Executor(1, initializer=init_worker, initargs=("ready",),
                         max_tasks_per_child=2) as ex:
        got = [ex.submit(read_initialised).result(timeout=60) for _ in range(5)]
    assert got == ["ready"] * 5


@pytest.mark.parametrize(("value", "error", "match"), [
    ("3", TypeError, "max_tasks_per_child must be an integer"),
    (2.0, TypeError, "max_tasks_per_child must be an integer"),
    (True, TypeError, "max_tasks_per_child must be an integer"),
    (0, ValueError, "max_tasks_per_child must be >= 1"),
    (-1, ValueError, "max_tasks_per_child must be >= 1"),
])
def test_bad_max_tasks_per_child_is_refused_before_anything_starts(value, error, match):
    with pytest.raises(error, match=match):
        actorq.Executor(1, max_tasks_per_child=value)


# -- mp_context ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_mp_context_chooses_how_workers_start(method):
    globals()["FLAG"] = "set by the parent"
    try:
        ctx = multiprocessing.get_context(method)
        with actorq.Executor(1, mp_context=ctx) as ex:
            assert ex.mp_context.get_start_method() == method
            seen = ex.submit(read_flag).result(timeout=60)
    finally:
        globals()["FLAG"] = "as imported"
    # a forked worker inherits the parent's memory; the others import the module afresh
    assert seen == ("set by the parent" if method == "fork" else "as imported")


def test_the_stdlib_positional_signature_works():
    ctx = multiprocessing.get_context("spawn")
    with actorq.Executor(2, ctx, init_worker, ("positional",)) as ex:
        assert set(ex.map(lambda _: read_initialised(), range(6))) == {"positional"}


def test_mp_context_must_be_a_context():
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        actorq.Executor(1, mp_context="spawn")


def test_mp_context_other_than_the_given_systems_is_refused(system):
    other = "spawn" if system.config.start_method != "spawn" else "fork"
    with pytest.raises(ValueError, match=f"start method '{other}'"):
        actorq.Executor(1, mp_context=multiprocessing.get_context(other), system=system)
    same = multiprocessing.get_context(system.config.start_method)
    with actorq.Executor(1, mp_context=same, system=system) as ex:
        assert ex.submit(mul, 6, 7).result(timeout=60) == 42


# -- references -------------------------------------------------------------------------


class Tracked:
    """Creates its file when it is freed (in whichever process holds it)."""

    def __init__(self, path):
        self.path = path

    def __del__(self):
        open(self.path, "w").close()


def slow_identity(i, gate):
    wait_for_file(gate)
    return i


def test_a_tasks_arguments_are_freed_in_the_worker_after_it(tmp_path):
    """CPython's test_ressources_gced_in_workers: the worker keeps no argument alive."""
    freed = str(tmp_path / "freed")
    with actorq.Executor(1) as ex:
        assert ex.submit(id, Tracked(freed)).result(timeout=60)
        wait_until(lambda: os.path.exists(freed), timeout=30)  # in the worker's process


def test_an_executor_dropped_unshut_finishes_its_work_then_releases_everything(tmp_path):
    """CPython's stranded-worker tests (gh-152967): the executor object is dropped with
    work in flight and queued, without shutdown; every future still resolves, and then
    its workers, ledger file and private system go (the leak guard checks them too)."""
    gate = str(tmp_path / "gate")
    ex = actorq.Executor(1)
    futures = [ex.submit(slow_identity, i, gate) for i in range(6)]  # 2 sent, 4 queued
    system, path = ex._system, ex._ledger
    del ex
    gc.collect()
    open(gate, "w").close()
    assert [f.result(timeout=60) for f in futures] == list(range(6))
    del futures

    def released():
        gc.collect()
        return "closed" in repr(system) and not os.path.exists(path)

    wait_until(released, timeout=60)
