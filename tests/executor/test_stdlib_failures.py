"""How tasks fail, after CPython's Lib/test/test_concurrent_futures/test_deadlock.py and
test_init.py (our own tests): where ``ProcessPoolExecutor`` breaks (``BrokenProcessPool``
for every future), actorq fails only the task concerned and keeps working."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
import sys
import threading

import pytest

import actorq
from actorq.testing import wait_until
from tests.executor.helpers import queue_behind_blockers, wait_for_file


def append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.readlines())


def exit_via_sys(code):
    sys.exit(code)


def exit_process(path):
    append(path, "ran\n")
    os._exit(3)


def crash_after_gate(gate, path):
    wait_for_file(gate)  # the test opens the gate
    append(path, "ran\n")
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_with_data(data):
    os.kill(os.getpid(), signal.SIGKILL)


def raise_unpickling():
    raise pickle.UnpicklingError("refused to unpickle")


class ErrorAtUnpickle:
    def __reduce__(self):
        return raise_unpickling, ()


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("Error in pickle")


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(4)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception does not pickle")


def exit_at_unpickle():
    sys.exit("unpickling exits")


class ExitAtUnpickle:
    def __reduce__(self):
        return exit_at_unpickle, ()


def make(cls):
    return cls()


def make_plain(name):
    return globals()[name]()  # a task of plain arguments: sent alone, as ``run``


def make_lock():
    return threading.Lock()


def raise_unpicklable():
    raise Unpicklable("bad")


def failing_init_counted(path):
    append(path, "init\n")
    raise ValueError("the initializer failed")


def init_raising_unpicklable():
    raise Unpicklable("bad init")


@pytest.fixture
def ex():
    with actorq.Executor(2) as executor:
        yield executor


def test_sys_exit_in_a_task_is_that_tasks_error_and_the_worker_lives_on(ex):
    pid = ex.submit(os.getpid).result(timeout=60)
    with pytest.raises(SystemExit) as info:
        ex.submit(exit_via_sys, 7).result(timeout=60)
    assert info.value.code == 7
    assert ex.pool.statistics().retries == 0  # not a crash
    assert pid in {ex.submit(os.getpid).result(timeout=60) for _ in range(6)}


def test_sys_exit_in_a_batched_task_fails_only_that_task(ex):
    futures = [ex.submit(exit_via_sys, 1) if i == 5 else ex.submit(abs, -i)
               for i in range(40)]
    for i, f in enumerate(futures):
        if i == 5:
            with pytest.raises(SystemExit):
                f.result(timeout=60)
        else:
            assert f.result(timeout=60) == i


def test_a_task_that_ends_its_process_is_retried_then_fails_alone(tmp_path):
    runs = str(tmp_path / "runs")
    with actorq.Executor(2, retry=actorq.Retry(max_attempts=2)) as ex:
        with pytest.raises(actorq.ActorCrashed, match="exited with code 3"):
            ex.submit(exit_process, runs).result(timeout=120)
        assert count_lines(runs) == 2  # one run per attempt, as the policy says
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32  # never broken


def test_without_retry_a_task_that_ends_its_process_runs_once(tmp_path):
    runs = str(tmp_path / "runs")
    with actorq.Executor(1, retry=None) as ex:
        with pytest.raises(actorq.ActorCrashed):
            ex.submit(exit_process, runs).result(timeout=120)
        assert count_lines(runs) == 1
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32


def test_crashes_in_map_over_big_data_raise_instead_of_hanging():
    data = "a" * (1 << 20)
    with actorq.Executor(2, retry=None) as ex:
        with pytest.raises(actorq.ActorCrashed):
            list(ex.map(crash_with_data, [data] * 10))
        assert ex.submit(len, data).result(timeout=60) == 1 << 20


def test_a_worker_crashing_after_shutdown_started_does_not_hang_it(tmp_path):
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    ex = actorq.Executor(2, retry=None)
    f = ex.submit(crash_after_gate, gate, runs)
    ex.shutdown(wait=False)
    open(gate, "w").close()
    with pytest.raises(actorq.ActorCrashed):
        f.result(timeout=120)
    ex.shutdown(wait=True)  # returns: the crash ended the last task
    assert count_lines(runs) == 1


def test_a_result_that_cannot_be_pickled_fails_only_its_task(ex):
    """CPython's test_error_during_result_pickle_on_worker: the future raises a
    ``PicklingError`` (here ``actorq.EncodeError``, also a ``TypeError``, naming the
    function); the executor goes on."""
    for args in ((make_plain, "ErrorAtPickle"), (make, ErrorAtPickle)):  # run / run_many
        with pytest.raises(pickle.PicklingError, match=rf"return value of {args[0].__name__}"
                           r"\(\) could not be pickled.*Error in pickle") as info:
            ex.submit(*args).result(timeout=60)
        assert isinstance(info.value, actorq.EncodeError)
        assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="lock"):  # pickle's own TypeError, caught as such
        ex.submit(make_lock).result(timeout=60)
    assert ex.submit(abs, -3).result(timeout=60) == 3


def test_a_result_whose_pickling_exits_fails_only_its_batched_task(ex, tmp_path):
    gate = str(tmp_path / "gate")
    blockers, futures = queue_behind_blockers(ex, gate, lambda: [
        ex.submit(make, ExitAtPickle) if i == 3 else ex.submit(abs, -i)
        for i in range(40)])  # queued: they go out as batches
    for i, f in enumerate(futures):
        if i == 3:
            with pytest.raises(SystemExit):
                f.result(timeout=60)
        else:
            assert f.result(timeout=60) == i
    for b in blockers:
        b.result(timeout=60)
    assert ex.pool.statistics().retries == 0  # no worker died


def check_unpicklable_exception_error(info):
    """As ``ProcessPoolExecutor`` (``_sendback_result``): the future raises the pickling
    error, with the remote traceback as its ``__cause__``; here that traceback shows
    the task's own exception too, and a note names it."""
    assert type(info.value) is TypeError  # what Unpicklable.__reduce__ raised
    assert str(info.value) == "this exception does not pickle"
    assert any("the task raised Unpicklable: bad, which cannot be pickled" in note
               for note in info.value.__notes__)
    cause = info.value.__cause__
    assert isinstance(cause, actorq.RemoteTraceback)
    assert "raise_unpicklable" in str(cause)  # the task's frame
    assert "Unpicklable: bad" in str(cause)
    assert "could not be pickled to be sent back" in str(cause)


def test_an_exception_that_cannot_be_pickled_comes_back_as_the_pickling_error(ex):
    with pytest.raises(TypeError, match="Unpicklable: bad") as info:  # (in its note)
        ex.submit(raise_unpicklable).result(timeout=60)
    check_unpicklable_exception_error(info)
    assert ex.submit(abs, -1).result(timeout=60) == 1


def test_an_unpicklable_exception_in_a_batch_fails_only_its_task(ex, tmp_path):
    blockers, futures = queue_behind_blockers(ex, str(tmp_path / "gate"), lambda: [
        ex.submit(raise_unpicklable) if i == 4 else ex.submit(abs, -i) for i in range(20)])
    for i, f in enumerate(futures):
        if i == 4:
            with pytest.raises(TypeError) as info:
                f.result(timeout=60)
            check_unpicklable_exception_error(info)
        else:
            assert f.result(timeout=60) == i
    for b in blockers:
        b.result(timeout=60)


def test_arguments_that_fail_to_unpickle_in_the_worker_fail_that_task(ex):
    with pytest.raises(TypeError, match=r"could not be unpickled.*refused to unpickle"):
        ex.submit(id, ErrorAtUnpickle()).result(timeout=60)
    assert ex.submit(abs, -2).result(timeout=60) == 2


def test_a_result_that_fails_to_unpickle_here_fails_that_task(ex):
    with pytest.raises(TypeError, match=r"could not be unpickled.*refused to unpickle"):
        ex.submit(make, ErrorAtUnpickle).result(timeout=60)
    assert ex.submit(abs, -2).result(timeout=60) == 2


def test_arguments_whose_unpickling_exits_fail_that_task_and_the_worker_serves_on():
    with actorq.Executor(1) as ex:
        pid = ex.submit(os.getpid).result(timeout=60)
        with pytest.raises(TypeError, match=r"argument.*could not be unpickled.*"
                           r"SystemExit: unpickling exits"):
            ex.submit(id, ExitAtUnpickle()).result(timeout=60)
        assert ex.submit(os.getpid).result(timeout=60) == pid  # the same process
        assert ex.pool.statistics().retries == 0


def test_a_result_whose_unpickling_exits_here_fails_that_task(ex):
    with pytest.raises(TypeError, match=r"return value.*could not be unpickled.*"
                       r"SystemExit: unpickling exits"):
        ex.submit(make, ExitAtUnpickle).result(timeout=60)
    assert ex.submit(abs, -2).result(timeout=60) == 2  # the system's loop goes on


def test_arguments_that_cannot_be_pickled_fail_the_future_as_in_the_stdlib(ex):
    """CPython's test_deadlock.py test_error_at_task_pickle: ``submit`` returns, the
    future raises the pickling error (its own type); here it also names the argument,
    nothing is sent and the executor goes on."""
    calls = ex.pool.statistics().calls
    future = ex.submit(id, 1, ErrorAtPickle())
    with pytest.raises(pickle.PicklingError, match="Error in pickle") as info:
        future.result(timeout=60)
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "argument 1" in note
    assert "ErrorAtPickle" in note
    assert ex.pool.statistics().calls == calls  # nothing was sent
    with pytest.raises(pickle.PicklingError):
        list(ex.map(id, [1, ErrorAtPickle(), 3]))  # the others run
    with pytest.raises(pickle.PicklingError):
        list(ex.map(id, [1, ErrorAtPickle(), 3], chunksize=2))
    assert ex.submit(abs, -1).result(timeout=60) == 1


def test_arguments_whose_pickling_exits_fail_the_future_naming_them(ex):
    future = ex.submit(id, x=ExitAtPickle())
    with pytest.raises(TypeError, match=r"keyword argument 'x'.*ExitAtPickle") as info:
        future.result(timeout=60)
    assert type(info.value.__cause__) is SystemExit
    assert ex.submit(abs, -1).result(timeout=60) == 1


def test_a_function_that_cannot_be_pickled_fails_the_future(ex):
    lock = threading.Lock()
    future = ex.submit(lambda: lock)  # cloudpickle cannot take the lock it closes over
    with pytest.raises(TypeError, match="lock") as info:
        future.result(timeout=60)
    assert "cannot send" in " ".join(info.value.__notes__)
    assert ex.submit(abs, -1).result(timeout=60) == 1


def test_a_failing_initializer_breaks_the_executor_with_its_error(tmp_path):
    """As ``ProcessPoolExecutor`` (BrokenProcessPool), after CPython's test_init.py: every
    future fails, then every submit; here with ``InitializerFailed`` (a
    ``BrokenExecutor``), naming and chaining the initializer's error, not a crash loop."""
    runs = str(tmp_path / "runs")
    ex = actorq.Executor(2, initializer=failing_init_counted, initargs=(runs,))
    try:
        futures = [ex.submit(pow, 2, i) for i in range(5)]
        for f in futures:
            with pytest.raises(actorq.InitializerFailed,
                               match="initializer raised ValueError: the initializer "
                               "failed") as info:
                f.result(timeout=60)
            assert isinstance(info.value, concurrent.futures.BrokenExecutor)
            assert isinstance(info.value, actorq.ActorqError)
            cause = info.value.__cause__
            assert type(cause) is ValueError
            assert str(cause) == "the initializer failed"
            assert "failing_init_counted" in cause.__cause__.tb_text  # the worker's
        with pytest.raises(actorq.InitializerFailed):
            ex.submit(pow, 2, 3)  # broken: refused at once, as the standard library's
        with pytest.raises(actorq.InitializerFailed):
            ex.map(abs, [1, 2])
        wait_until(lambda: count_lines(runs) >= 2, timeout=60)
    finally:
        ex.shutdown(wait=True)  # returns, and stops the workers
    assert count_lines(runs) == 2  # one start per worker: no restarts, no retries


def test_an_initializer_whose_exception_cannot_be_pickled_gives_the_pickling_error():
    """As a task's exception that does not pickle (``_sendback_result``): the executor
    breaks with the pickling error as the cause, noted with the initializer's name and
    its exception (no ``RuntimeError`` of our own); the remote traceback shows both."""
    ex = actorq.Executor(1, initializer=init_raising_unpicklable)
    try:
        with pytest.raises(actorq.InitializerFailed,
                           match=r"the initializer init_raising_unpicklable\(\) raised "
                           "Unpicklable: bad init, which cannot be pickled") as info:
            ex.submit(abs, 1).result(timeout=60)
        cause = info.value.__cause__
        assert type(cause) is TypeError  # what Unpicklable.__reduce__ raised
        assert str(cause) == "this exception does not pickle"
        assert any("the initializer init_raising_unpicklable() raised Unpicklable: bad init"
                   in note for note in cause.__notes__)
        remote = str(cause.__cause__)
        assert "init_raising_unpicklable" in remote  # the initializer's frame
        assert "could not be pickled to be sent back" in remote
    finally:
        ex.shutdown(wait=True)
