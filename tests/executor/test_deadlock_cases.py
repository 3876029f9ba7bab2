"""Every case of CPython's Lib/test/test_concurrent_futures/test_deadlock.py, on
``actorq.Executor`` (our own tests, after the behaviours it checks): a task whose
arguments or result fail, exit or crash the process while they are pickled or
unpickled, or whose function exits or crashes its worker. ``ProcessPoolExecutor``
resolves each future (often with ``BrokenProcessPool``, and is then unusable); here
each future is resolved with an error naming the task, only that task fails, the
others of its batch run exactly once (counted by side effects in a file), and the
executor goes on."""

from __future__ import annotations

import faulthandler
import os
import pickle
import re
import sys

import numpy as np
import pytest

import actorq
from actorq._executor import ledger
from tests.executor.helpers import queue_behind_blockers, run_counted, run_counts


def crash():
    """A segfault, as CPython's tests make one."""
    faulthandler.disable()
    faulthandler._sigsegv()


def exit_process():
    os._exit(3)


def exit_via_sys():
    sys.exit(1)


def raise_error(cls):
    raise cls("raised in the task")


def crash_with_data(_data):
    crash()


def return_instance(cls):
    return cls()


def counted_instance(cls, runs):
    run_counted(-1, runs)
    return cls()


class CrashAtPickle:
    def __reduce__(self):
        crash()


class CrashAtUnpickle:
    def __reduce__(self):
        return crash, ()


class ExitProcessAtUnpickle:
    def __reduce__(self):
        return exit_process, ()


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(4)


class ExitAtUnpickle:
    def __reduce__(self):
        return exit_via_sys, ()


def refuse():
    raise pickle.UnpicklingError("refused to unpickle")


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("Error in pickle")


class ErrorAtUnpickle:
    def __reduce__(self):
        return refuse, ()


# (name in test_deadlock.py, fn, args, what the future raises here, its message)
CASES = [
    ("error_at_task_pickle", id, (ErrorAtPickle(),), pickle.PicklingError,
     "Error in pickle"),
    ("exit_at_task_unpickle", id, (ExitAtUnpickle(),), actorq.DecodeError,
     r"argument 0 \(ExitAtUnpickle\) of id\(\) could not be unpickled.*SystemExit"),
    ("error_at_task_unpickle", id, (ErrorAtUnpickle(),), actorq.DecodeError,
     r"argument 0 \(ErrorAtUnpickle\) of id\(\) could not be unpickled.*refused"),
    ("crash_at_task_unpickle", id, (CrashAtUnpickle(),), actorq.DecodeError,
     r"argument 0 \(CrashAtUnpickle\) of id\(\) killed worker processes \d+ and \d+ while "
     "it was unpickled"),
    ("crash_during_func_exec_on_worker", crash, (), actorq.ActorCrashed, "SIGSEGV"),
    ("exit_during_func_exec_on_worker", exit_via_sys, (), SystemExit, None),
    ("error_during_func_exec_on_worker", raise_error, (RuntimeError,), RuntimeError,
     "raised in the task"),
    ("crash_during_result_pickle_on_worker", return_instance, (CrashAtPickle,),
     actorq.EncodeError, r"return value of return_instance\(\) killed worker process"),
    ("exit_during_result_pickle_on_worker", return_instance, (ExitAtPickle,), SystemExit,
     None),
    ("error_during_result_pickle_on_worker", return_instance, (ErrorAtPickle,),
     actorq.EncodeError, r"return value of return_instance\(\) could not be pickled"),
    ("error_during_result_unpickle_in_result_handler", return_instance, (ErrorAtUnpickle,),
     actorq.DecodeError, "return value.*could not be unpickled.*refused"),
    ("exit_during_result_unpickle_in_result_handler", return_instance, (ExitAtUnpickle,),
     actorq.DecodeError, "return value.*could not be unpickled.*SystemExit"),
]


@pytest.mark.parametrize(("case", "fn", "args", "error", "match"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_deadlock_case_resolves_its_future_and_the_executor_goes_on(
        case, fn, args, error, match):
    with actorq.Executor(2) as ex:
        with pytest.raises(error, match=match):
            ex.submit(fn, *args).result(timeout=120)
        assert ex.submit(abs, -1).result(timeout=60) == 1  # never broken
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_crash_big_data_resolves_every_future():
    data = "a" * (1 << 20)
    with actorq.Executor(2, retry=None) as ex:
        with pytest.raises(actorq.ActorCrashed):
            list(ex.map(crash_with_data, [data] * 10))
        assert ex.submit(len, data).result(timeout=60) == 1 << 20


# -- a crash at unpickling in a batch: only its task fails ---------------------------------


def killed_pids(error):
    """The two workers an argument's unpickling killed, as its error names them."""
    found = re.search(r"killed worker processes (\d+) and (\d+)", str(error))
    assert found is not None, str(error)
    return int(found[1]), int(found[2])


@pytest.mark.parametrize("retry", ["default", None])
@pytest.mark.parametrize("bad", [CrashAtUnpickle, ExitProcessAtUnpickle])
def test_an_argument_whose_unpickling_kills_the_worker_fails_only_its_task(
        tmp_path, retry, bad):
    """The worker dies while it rebuilds task 5's argument, in the middle of a batch.
    With the pool's retry, the retry finds the step in the batch's ledger slot and
    rebuilds the argument once more (the first death may have been the OOM killer's),
    which kills a second worker: the next attempt fails task 5 without rebuilding it
    again. Without retries, the executor reads the slot itself, sends task 5 again
    alone (with that step as its suspect) and the tasks not run yet again, batched.
    Either way: task 5 fails with ``DecodeError`` naming its argument, its function and
    both workers, every other task runs once, and two workers died for it."""
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    options = {} if retry == "default" else {"retry": None}
    with actorq.Executor(2, **options) as ex:
        ex.submit(int).result(timeout=60)
        blockers, futures = queue_behind_blockers(ex, gate, lambda: [
            ex.submit(run_counted, i, runs, bad() if i == 5 else None) for i in range(40)])
        for i, f in enumerate(futures):
            if i == 5:
                with pytest.raises(actorq.DecodeError, match=(
                        rf"argument 2 \({bad.__name__}\) of run_counted\(\) killed worker "
                        r"processes (\d+) and (\d+) while it was unpickled there.*not run")
                                   ) as info:
                    f.result(timeout=120)
                assert info.value.kind == "message"
                first, second = killed_pids(info.value)
                assert first != second
            else:
                assert f.result(timeout=120) == i
        for b in blockers:
            b.result(timeout=60)
        assert run_counts(runs) == {i: 1 for i in range(40) if i != 5}  # none twice
        crashes = sum(n for m in ex.pool.statistics().members
                      for kind, n in m.failures.items() if kind.startswith("crash"))
        assert crashes == 2  # killed twice to be blamed, and not sent again after
        assert ex.submit(abs, -7).result(timeout=60) == 7


def test_a_single_task_whose_argument_kills_the_worker_on_unpickle_fails_at_once():
    """CPython's test_crash_at_task_unpickle: ``ProcessPoolExecutor`` raises
    ``BrokenProcessPool`` and is unusable; here the future fails with ``DecodeError``
    naming the two workers it killed (the second attempt tells it from an outside kill)
    and the executor (its workers' replacements) goes on."""
    with actorq.Executor(2) as ex:
        pids = {ex.submit(os.getpid).result(timeout=60) for _ in range(4)}
        with pytest.raises(actorq.DecodeError,
                           match=r"killed worker processes \d+ and \d+") as info:
            ex.submit(id, CrashAtUnpickle()).result(timeout=120)
        assert isinstance(info.value, actorq.ActorqError)
        dead = set(killed_pids(info.value))
        assert len(dead) == 2
        assert dead & pids  # the first one killed was a worker of before, named
        assert [ex.submit(abs, -i).result(timeout=60) for i in range(6)] == list(range(6))
        assert not dead & {ex.submit(os.getpid).result(timeout=60) for _ in range(6)}


def test_a_result_whose_pickling_kills_two_workers_fails_alone(tmp_path):
    """CPython's test_crash_during_result_pickle_on_worker: the task ran, pickling its
    result killed the worker; the retry finds the step in the ledger, a suspect (an
    outside kill?), and runs the task again; its result kills a second worker, and the
    next one fails the task with ``EncodeError`` naming both (in a batch and alone)."""
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    with actorq.Executor(2) as ex:
        ex.submit(int).result(timeout=60)
        blockers, futures = queue_behind_blockers(ex, gate, lambda: [
            ex.submit(counted_instance, CrashAtPickle, runs) if i == 7 else
            ex.submit(run_counted, i, runs) for i in range(40)])
        for i, f in enumerate(futures):
            if i == 7:
                with pytest.raises(actorq.EncodeError, match=r"return value of "
                                   r"counted_instance\(\) killed worker processes \d+ "
                                   r"and \d+ while it was pickled"):
                    f.result(timeout=120)
            else:
                assert f.result(timeout=120) == i
        for b in blockers:
            b.result(timeout=60)
        assert run_counts(runs) == {**{i: 1 for i in range(40) if i != 7}, -1: 2}
        alone = str(tmp_path / "alone")
        with pytest.raises(actorq.EncodeError, match="killed worker processes"):
            ex.submit(counted_instance, CrashAtPickle, alone).result(timeout=120)
        assert run_counts(alone) == {-1: 2}  # ran twice, then blamed


# -- a non-callable, and arguments that travel pickled --------------------------------------


def test_a_non_callable_fails_its_future_as_in_the_stdlib():
    """``ProcessPoolExecutor.submit(5)`` returns; its future raises ``TypeError("'int'
    object is not callable")``. The same here, without sending anything."""
    with actorq.Executor(1) as ex:
        calls = ex.pool.statistics().calls
        future = ex.submit(5)
        with pytest.raises(TypeError, match=r"^'int' object is not callable"):
            future.result(timeout=60)
        with pytest.raises(TypeError, match="'str' object is not callable"):
            list(ex.map("not a function", [1, 2]))
        with pytest.raises(TypeError, match="'NoneType' object is not callable"):
            list(ex.map(None, [1, 2, 3], chunksize=2))
        assert ex.pool.statistics().calls == calls  # nothing was sent
        assert ex.submit(abs, -2).result(timeout=60) == 2


def checksum(array, *, scale=1):
    return float(array.sum()) * scale


def test_arguments_that_travel_pickled_keep_large_buffers_out_of_band():
    """An array argument is pickled at submit with its buffer left out: the message
    carries it through shared memory, as any array; values and kwargs arrive whole."""
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    with actorq.ActorSystem() as system, actorq.Executor(1, system=system) as ex:
        before = system.metrics()["system"]["oob_bytes_sent"]
        total = ex.submit(checksum, array, scale=2).result(timeout=60)
        assert total == 2 * float(array.sum())
        assert system.metrics()["system"]["oob_bytes_sent"] - before >= array.nbytes
        big = {"key": bytearray(b"x" * (3 << 20))}
        assert ex.submit(len, big["key"]).result(timeout=60) == 3 << 20
        assert ex.submit(sorted, {3: "c", 1: "a"}).result(timeout=60) == [1, 3]
        assert list(ex.map(len, [[1, 2], {"a": 1}, "abc"], chunksize=2)) == [2, 1, 3]


# -- the ledger's step word -----------------------------------------------------------------


def test_the_step_a_worker_died_in_is_read_back_until_its_task_has_an_outcome():
    path = ledger.create(2)
    try:
        first = ledger.open_map(path)
        rec = ledger.BatchRecord(first, 1, batch=9)
        rec.record(0, (True, "zero", ""))
        rec.pid = 1111 << 32  # (as worker 1111 would write it)
        rec.step(ledger.DECODING, 1, ordinal=3)  # the worker dies here
        first.close()
        again = ledger.open_map(path)
        seen = ledger.crash_step(again, 1, {0: (True, "zero", "")}, batch=9)
        assert seen == ledger.Step(ledger.DECODING, 1, 3, 1111)
        assert not seen.blamed  # a first death while unpickling: a suspect only
        assert ledger.crash_step(again, 1, {}, batch=8) is None  # another batch
        retry = ledger.BatchRecord(again, 1, batch=9)  # takes the suspect, unpickles again
        assert retry.crashed is None
        retry.step(ledger.DECODING, 1, ordinal=3)  # and dies in the same step
        second = ledger.BatchRecord(again, 1, batch=9)
        assert second.crashed == ledger.Step(ledger.DECODING, 1, 3, os.getpid(), 1111)
        assert second.crashed.blamed
        retry.record(1, (False, ValueError("its error"), ""))
        assert ledger.BatchRecord(again, 1, batch=9).crashed is None  # it has one now
        retry.step(ledger.DECODING, 2)
        retry.clear_step()  # decoded: the task runs; a death now is the run's
        assert ledger.BatchRecord(again, 1, batch=9).crashed is None
        retry.step(ledger.DECODING, 2, ordinal=ledger.MAX_ORDINAL + 5)
        assert ledger.crash_step(again, 1, {}, batch=9).ordinal == ledger.MAX_ORDINAL
        fresh = ledger.BatchRecord(again, 1, batch=10)  # the slot's next batch
        assert fresh.crashed is None
        assert ledger.read_slot(again, path, 1, 9) == {}  # batch 9's records are gone
        again.close()
    finally:
        ledger.remove(path)
