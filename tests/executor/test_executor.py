"""actorq.Executor against the behaviours CPython's own executor tests check
(Lib/test/test_concurrent_futures: executor, shutdown, wait, as_completed, init), and
where it must do better than ProcessPoolExecutor: a worker killed mid-task."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import actorq
from tests.executor.helpers import queue_behind_blockers

ROOT = Path(__file__).resolve().parents[2]


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


class Thing:
    def method(self):
        return 1


def make_thing(_):
    return Thing()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def held_until_removed(path):
    """A task that runs until *path* is gone (the ``gate`` fixture removes it), so that
    it is still running while a test looks, however slow the machine, and ends at once
    after (the executor's shutdown waits for it). A 60 s cap keeps a lost gate finite."""
    end = time.monotonic() + 60
    while os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.005)
    return path


def fail(message):
    raise ValueError(message)


def kill_self_once(marker):
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return os.getpid()
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return -1


_initialised = None


def init_worker(value):
    global _initialised
    _initialised = value


def read_initialised():
    return _initialised


@pytest.fixture
def ex():
    with actorq.Executor(2) as executor:
        yield executor


@pytest.fixture
def gate(tmp_path):
    """A path that ``held_until_removed`` tasks wait on; removed at teardown (before
    ``ex``'s, when a test asks for ``ex`` first)."""
    path = tmp_path / "gate"
    path.write_text("held")
    yield str(path)
    path.unlink(missing_ok=True)


# -- executor.py --------------------------------------------------------------------------


def test_submit(ex):
    assert ex.submit(pow, 2, 8).result(timeout=30) == 256


def test_submit_keyword(ex):
    assert ex.submit(mul, 2, y=8).result(timeout=30) == 16
    assert ex.submit(capture, 1, self=2, fn=3).result(timeout=30) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        ex.submit(arg=1)


def test_map(ex):
    assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10), chunksize=3)) == list(
        map(pow, range(10), range(10)))
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(pow, range(3), range(3), chunksize=0)


def test_map_exception(ex):
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def wait_for_file(path, value=None):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_map_timeout(ex, tmp_path):
    gate = str(tmp_path / "gate")
    ex.submit(int).result(timeout=30)  # the workers are up
    results = []

    def consume():
        for r in ex.map(wait_for_file, [str(tmp_path), str(tmp_path), gate], timeout=10):
            results.append(r)  # noqa: PERF402

    with pytest.raises(TimeoutError):
        consume()
    Path(gate).touch()  # let the third task end
    assert results == [None, None]


def test_shutdown_race_after_map(ex):
    ex.map(str, [2] * 3)
    ex.shutdown()


def test_no_stale_references(ex):
    thing = Thing()
    collected = threading.Event()
    _ref = weakref.ref(thing, lambda _obj: collected.set())
    ex.submit(thing.method)  # the future is dropped on purpose
    del thing
    assert collected.wait(timeout=30), "the executor kept the object alive"


def test_max_workers_must_be_positive():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            actorq.Executor(max_workers=number)


def test_map_keeps_no_reference_to_results(ex):
    for obj in ex.map(make_thing, range(10)):
        wr = weakref.ref(obj)
        del obj
        assert wr() is None


def test_remote_exceptions_keep_their_type_and_traceback(ex):
    with pytest.raises(ValueError, match="boom") as info:
        ex.submit(fail, "boom").result(timeout=30)
    assert "in fail" in str(info.value.__cause__)
    assert info.value.args == ("boom",)
    assert "in fail" in info.value.__cause__.tb  # the stdlib's _RemoteTraceback name


def test_lambdas_and_closures_run(ex):
    k = 5
    assert ex.submit(lambda x: x + k, 1).result(timeout=30) == 6
    assert list(ex.map(lambda x: x * k, range(4), chunksize=2)) == [0, 5, 10, 15]


# -- test_shutdown.py -----------------------------------------------------------------------


def test_run_after_shutdown(ex):
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 5)


def test_context_manager_shutdown():
    with actorq.Executor(2) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        e.submit(abs, 1)


def test_shutdown_waits_for_every_task(ex):
    fs = [ex.submit(sleep_then, 0.01, i) for i in range(50)]
    ex.shutdown()
    assert [f.result(timeout=0) for f in fs] == list(range(50))


def test_cancel_futures(ex):
    fs = [ex.submit(sleep_then, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    assert others
    for f in others:
        assert f.done()
        assert f.exception() is None


def test_shutdown_after_a_quick_cancel_does_not_hang():
    e = actorq.Executor(1)
    e.submit(int).result(timeout=30)
    e.submit(int).cancel()
    done = threading.Event()
    threading.Thread(target=lambda: (e.shutdown(wait=True), done.set()), daemon=True).start()
    assert done.wait(30)


def test_shutdown_no_wait_still_finishes_the_work():
    e = actorq.Executor(2)
    res = e.map(abs, range(-5, 5))
    e.shutdown(wait=False)
    assert list(res) == [abs(v) for v in range(-5, 5)]
    pool = e.pool
    actorq.testing.wait_until(lambda: pool._core._host.system.metrics()["system"]["closed"],
                              timeout=30)


SCRIPT_PRELUDE = """if 1:
    import sys, time
    import actorq
    def sleep_and_print(t, msg):
        time.sleep(t)
        print(msg)
        sys.stdout.flush()
"""


def run_script(body):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT_PRELUDE + body], capture_output=True,
                          env=env, timeout=120, check=False)


def test_work_submitted_is_done_at_interpreter_exit():
    out = run_script("""
    if __name__ == "__main__":
        t = actorq.Executor(2)
        t.submit(sleep_and_print, 1.0, "apple")
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"apple"
    assert b"Error" not in out.stderr


def test_shutdown_no_wait_at_exit_does_not_hang():
    out = run_script("""
    if __name__ == "__main__":
        t = actorq.Executor(2)
        t.submit(sleep_and_print, 1.0, "apple")
        t.shutdown(wait=False)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"apple"


def test_submit_from_an_exit_hook_is_refused():
    out = run_script("""
    import atexit
    @atexit.register
    def run_last():
        try:
            t.submit(id, None)
        except RuntimeError:
            print("runtime-error")
            raise
    if __name__ == "__main__":
        t = actorq.Executor(2)
        t.submit(id, 42).result(timeout=30)
""")
    assert b"RuntimeError: cannot schedule new futures" in out.stderr
    assert out.stdout.strip() == b"runtime-error"


# -- test_wait.py / test_as_completed.py -----------------------------------------------------


def test_wait_first_completed(ex, gate):
    slow = ex.submit(held_until_removed, gate)
    quick = ex.submit(mul, 2, 3)
    done, not_done = cf.wait([slow, quick], timeout=20, return_when=cf.FIRST_COMPLETED)
    assert done == {quick}
    assert not_done == {slow}
    slow.cancel()


def test_wait_first_exception(ex, gate):
    ok = ex.submit(mul, 2, 3)
    bad = ex.submit(fail, "x")
    slow = ex.submit(held_until_removed, gate)
    done, not_done = cf.wait([ok, bad, slow], timeout=20, return_when=cf.FIRST_EXCEPTION)
    assert bad in done
    assert slow in not_done
    slow.cancel()


def test_wait_all_completed_and_timeout(ex, gate):
    fs = [ex.submit(mul, i, i) for i in range(10)]
    done, not_done = cf.wait(fs, timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == set(fs)
    assert not not_done
    slow = ex.submit(held_until_removed, gate)
    done, not_done = cf.wait([slow], timeout=0.1)
    assert not_done == {slow}
    slow.cancel()


def test_as_completed(ex, gate):
    fs = [ex.submit(mul, i, 2) for i in range(10)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == [2 * i for i in range(10)]
    assert len(list(cf.as_completed(fs + fs, timeout=30))) == 10  # duplicates once
    slow = ex.submit(held_until_removed, gate)
    with pytest.raises(TimeoutError):
        list(cf.as_completed([slow], timeout=0))
    slow.cancel()


def test_run_in_executor(ex):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, mul, i, 3) for i in range(5)))

    assert asyncio.run(main()) == [0, 3, 6, 9, 12]


# -- test_init.py ---------------------------------------------------------------------------


def test_initializer_runs_in_each_worker():
    with actorq.Executor(2, initializer=init_worker, initargs=("ready",)) as e:
        assert set(e.map(lambda _: read_initialised(), range(8))) == {"ready"}


def test_initializer_must_be_callable():
    with pytest.raises(TypeError, match="initializer"):
        actorq.Executor(1, initializer="nope")


# -- better than ProcessPoolExecutor ---------------------------------------------------------


def test_a_worker_killed_mid_task_never_breaks_the_executor(ex, tmp_path):
    marker = str(tmp_path / "killed")
    f = ex.submit(kill_self_once, marker)
    assert f.result(timeout=60) > 0  # retried on a worker, after the first one was killed
    assert list(ex.map(mul, range(5), range(5))) == [0, 1, 4, 9, 16]  # not broken
    assert ex.pool.statistics().retries == 1


def test_on_a_given_system(system):
    with actorq.Executor(2, system=system) as e:
        assert e.submit(mul, 3, 4).result(timeout=30) == 12
        name = e.pool.name
        assert name in system.metrics()["pools"]
    assert system.metrics()["system"]["closed"] is False  # the caller's system: still open


def test_unknown_options_are_refused_before_anything_starts():
    with pytest.raises(TypeError, match="unknown options"):
        actorq.Executor(2, max_nbytes=10)


def test_arguments_are_taken_as_they_are_at_submit(ex, tmp_path):
    """Tasks queued behind others (not sent yet) see their arguments as they were at
    ``submit``, whatever the caller changes after: a small list of numbers (plain data,
    copied), a dict and a bytearray (pickled at submit), as arguments and keywords.
    ``ProcessPoolExecutor`` pickles them later, on its feeder thread: a change made
    meanwhile may or may not be seen there. Documented in docs/executor.md."""
    numbers, table, raw = [1, 2], {"k": [1]}, bytearray(b"ab")
    blockers, futures = queue_behind_blockers(ex, str(tmp_path / "gate"), lambda: [
        ex.submit(capture, numbers, table, raw, also=numbers, more=table),
        ex.submit(capture, numbers, also=numbers)])  # plain data only
    numbers.append(3)
    table["k"].append(2)
    raw += b"c"
    assert futures[0].result(timeout=60) == (
        ([1, 2], {"k": [1]}, bytearray(b"ab")), {"also": [1, 2], "more": {"k": [1]}})
    assert futures[1].result(timeout=60) == (([1, 2],), {"also": [1, 2]})
    for b in blockers:
        b.result(timeout=60)
