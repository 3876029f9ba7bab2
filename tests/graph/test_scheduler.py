"""Running graphs: results against serial ones, order, failures, retries (_graph/scheduler)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import pytest

import actorq
import actorq.testing


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def burn(n, seed=0):
    """Some CPU work with a deterministic result."""
    acc = seed
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def fail(msg):
    raise ValueError(msg)


def test_diamond_wide_and_deep_match_serial(system):
    g = actorq.Graph()
    top = g.task(inc, 1)
    left, right = g.task(add, top, 10), g.task(add, top, 100)
    bottom = g.task(add, left, right)
    wide = [g.task(burn, 2000, i) for i in range(200)]
    total = g.task(add, *wide)
    deep = top
    for _ in range(100):
        deep = g.task(inc, deep)
    result = system.run(g, workers=2)
    assert result.ok
    assert result[bottom] == (2 + 10) + (2 + 100)
    assert result[total] == sum(burn(2000, i) for i in range(200))
    assert result[deep] == 102
    stats = result.stats
    assert stats.attempts == len(g)
    assert stats.batches < len(g)  # tiny tasks shared messages
    assert len(stats.tasks) == len(g)
    path = stats.critical_path
    assert all(a in b.deps for a, b in itertools.pairwise(path))  # a chain
    assert stats.critical_path_seconds >= max(t.duration for t in stats.tasks.values())
    assert 0 < stats.utilisation <= 1


def test_nested_node_arguments_and_kwargs(system):
    g = actorq.Graph()
    a, b = g.task(inc, 1), g.task(inc, 2)
    n = g.task(dict, x=[a, (b, {"inner": a})], y=b)
    assert system.run(g)[n] == {"x": [2, (3, {"inner": 2})], "y": 3}


def test_priorities_are_respected_when_workers_are_scarce(system):
    g = actorq.Graph()
    nodes = [g.task(burn, 20_000, i, priority=i % 7) for i in range(40)]
    result = system.run(g, workers=1)
    by_start = sorted(nodes, key=lambda n: result.stats.tasks[n].start)
    prios = [n.priority for n in by_start]
    assert prios == sorted(prios, reverse=True)


def test_failure_fails_dependents_and_independent_branches_finish(system):
    g = actorq.Graph()
    bad = g.task(fail, "boom", key="bad")
    child = g.task(inc, bad, key="child")
    grandchild = g.task(add, child, 1, key="grandchild")
    good = g.task(inc, 1, key="good")
    good2 = g.task(inc, good, key="good2")
    result = system.run(g, workers=2)
    assert not result.ok
    assert set(result.failed) == {bad, child, grandchild}
    with pytest.raises(ValueError, match="boom") as info:
        result[bad]
    assert isinstance(info.value.__cause__, actorq.RemoteTraceback)
    with pytest.raises(actorq.GraphError, match="'grandchild' did not run: it depends on 'bad'"):
        result[grandchild]
    assert result[good2] == 3


def flaky(path, fails):
    """Fail the first *fails* calls (counted in a file), then succeed."""
    with open(path, "a+") as f:
        f.seek(0)
        n = len(f.read())
        f.write("x")
    if n < fails:
        raise RuntimeError(f"flaky attempt {n + 1}")
    return n


def test_retries_with_backoff_then_success_and_attempts_counted(system, tmp_path):
    g = actorq.Graph()
    ok = g.task(flaky, str(tmp_path / "a"), 2, retries=2)
    no = g.task(flaky, str(tmp_path / "b"), 5, retries=1)
    result = system.run(g)
    assert result[ok] == 2
    assert result.stats.tasks[ok].attempts == 3
    with pytest.raises(RuntimeError, match="flaky attempt 2"):
        result[no]
    assert result.stats.tasks[no].attempts == 2
    assert result.stats.retries == 3


def test_fail_fast_stops_at_the_first_failure(system):
    g = actorq.Graph()
    first = g.task(fail, "first", priority=10)
    rest = [g.task(burn, 50_000, i) for i in range(30)]
    chain = g.task(add, *rest)
    result = system.run(g, workers=1, fail_fast=True)
    assert isinstance(result.failed[first], ValueError)
    assert chain in result.failed
    err = result.failed[chain]
    assert isinstance(err, actorq.GraphError)
    assert "fail_fast" in str(err)
    assert len(result.stats.tasks) < len(g)  # most tasks never started


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def test_timed_out_task_is_killed_and_retried_then_fails(system):
    g = actorq.Graph()
    slow = g.task(sleepy, 60, timeout=0.5, retries=1, key="slow")
    fast = [g.task(inc, i) for i in range(20)]
    result = system.run(g, workers=2)
    with pytest.raises(actorq.CallTimeout, match=r"'slow' ran past its timeout of 0\.5s"):
        result[slow]
    assert result.stats.tasks[slow].attempts == 2
    assert result.stats.timeouts == 1
    assert [result[n] for n in fast] == list(range(1, 21))


def test_sigkill_of_random_workers_during_a_500_task_graph(system):
    g = actorq.Graph()
    nodes = [g.task(burn, 30_000, i) for i in range(500)]
    total = g.task(add, *nodes)
    killed = []

    def killer():
        import random

        rng = random.Random(7)
        for _ in range(3):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                workers = [a for name, a in system.metrics()["actors"].items()
                           if name.startswith("TaskWorker") and a["state"] == "running"
                           and a.get("pid")]
                if len(workers) >= 2:
                    break
                time.sleep(0.01)
            victim = rng.choice(workers)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
                killed.append(victim["pid"])
            except ProcessLookupError:
                pass
            time.sleep(0.15)

    import threading

    t = threading.Thread(target=killer)
    t.start()
    result = system.run(g, workers=2)
    t.join(30)
    assert result.ok, result.failed
    assert result[total] == sum(burn(30_000, i) for i in range(500))
    assert killed
    stats = result.stats
    assert stats.crashes >= 1
    assert stats.attempts == len(g) + stats.crashes  # every extra attempt is counted
    assert sum(s.attempts for s in stats.tasks.values()) == stats.attempts


class Doubler(actorq.Actor):
    def double(self, x):
        return 2 * x


def test_actor_call_nodes(system):
    ref = system.spawn(Doubler)
    g = actorq.Graph()
    a = g.task(inc, 20)
    b = g.call(ref, "double", a)
    c = g.task(inc, b)
    assert system.run(g)[c] == 43


def test_run_async(system):
    g = actorq.Graph()
    n = g.task(add, g.task(inc, 1), 5)

    async def main():
        return await system.run_async(g)

    assert asyncio.run(main())[n] == 7


def test_bad_input_is_refused_before_anything_runs(system, tmp_path):
    g = actorq.Graph()
    marker = tmp_path / "ran"
    g.task(flaky, str(marker), 0)
    before = set(system.metrics()["actors"])
    with pytest.raises(actorq.GraphError, match="workers must be a positive int"):
        system.run(g, workers=0)
    with pytest.raises(actorq.GraphError, match=r"needs an actorq\.Graph"):
        system.run([1, 2])
    with pytest.raises(actorq.GraphError, match="cannot be written"):
        system.run(g, journal=str(tmp_path / "missing" / "run.db"))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(actorq.GraphError, match="not an actorq journal, or it is corrupt"):
        system.run(g, journal=str(corrupt))
    assert not marker.exists()
    assert set(system.metrics()["actors"]) == before  # no worker was started


def test_progress_line_on_request(system, capfd):
    g = actorq.Graph()
    for i in range(50):
        g.task(inc, i)
    system.run(g, progress=True)
    err = capfd.readouterr().err
    assert "50/50" in err
    assert "done 50" in err
    assert "failed 0" in err


def test_no_progress_when_not_a_tty(system, capfd):
    g = actorq.Graph()
    g.task(inc, 1)
    system.run(g)
    assert capfd.readouterr().err == ""


def test_functions_are_shipped_once_per_worker_and_tiny_tasks_batched(system):
    g = actorq.Graph()
    for i in range(3000):
        g.task(inc, i)
        g.task(add, i, 1)
    result = system.run(g, workers=2)
    assert result.ok
    assert result.stats.extra["code_shipments"] <= 2 * 2  # two functions, two workers
    assert result.stats.batches < len(g) / 20


def wait_a_little(i):
    time.sleep(0.012)  # the task's wall time, not its work: 12 ms, almost no CPU
    return i


def test_batches_are_sized_by_the_work_not_by_the_wall_time(system):
    """A task whose wall time is stretched (here by waiting; on a loaded machine by
    waiting for a core) is sized by its CPU time, or a STRETCH-th of its wall time:
    12 ms tasks that wait share batches; sized by wall time they went one by one."""
    g = actorq.Graph()
    nodes = [g.task(wait_a_little, i) for i in range(32)]
    result = system.run(g, workers=2)
    assert [result[n] for n in nodes] == list(range(32))
    assert result.stats.batches < len(g)  # they shared messages
    assert result.stats.attempts == len(g)


def test_a_later_run_sizes_its_first_batches_by_the_durations_measured_before(system):
    """Durations carry over between runs on the system's workers: a repeated graph's
    first batches share tasks. Three tasks on one worker: two batches (two tasks, then
    one, in its two credit slots); unmeasured, they went one each (three batches)."""
    first = actorq.Graph()
    for i in range(50):
        first.task(inc, i)
    assert system.run(first, workers=1).ok
    again = actorq.Graph()
    nodes = [again.task(inc, i) for i in range(3)]
    result = system.run(again, workers=1)
    assert [result[n] for n in nodes] == [1, 2, 3]
    assert result.stats.batches == 2


def test_workers_scale_up_for_a_wide_stage_and_down_as_the_queue_drains(system):
    g = actorq.Graph()
    wide = [g.task(burn, 20_000, i) for i in range(40)]
    chain = g.task(add, *wide)
    for _ in range(12):  # a serial tail of 3 s: one worker is enough, the other retires
        chain = g.task(_sleep_then, 0.25, chain)
    again = [g.task(burn, 20_000, i).after(chain) for i in range(40)]  # wide again
    end = g.task(add, *again)
    result = system.run(g, workers=2)
    assert result.ok
    assert result[end] == sum(burn(20_000, i) for i in range(40))
    stats = result.stats
    assert stats.workers == 2, stats
    assert stats.extra["workers_retired"] >= 1, stats
    # members that left are gone from the pool; none is left behind unused
    actorq.testing.wait_until(
        lambda: system.metrics()["pools"]["graph-workers"]["size"] <= 2, timeout=30)


def _sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def test_two_runs_at_once_each_get_workers(system):
    def build(k):
        g = actorq.Graph()
        return g, g.task(add, *[g.task(burn, 5000, i + k) for i in range(20)])

    (g1, n1), (g2, n2) = build(0), build(100)

    async def main():
        return await asyncio.gather(system.run_async(g1, workers=1),
                                    system.run_async(g2, workers=1))

    r1, r2 = asyncio.run(main())
    assert r1[n1] == sum(burn(5000, i) for i in range(20))
    assert r2[n2] == sum(burn(5000, i + 100) for i in range(20))


def test_the_workers_are_a_system_pool_kept_warm_between_runs(system):
    def build():
        g = actorq.Graph()
        return g, g.task(add, *[g.task(burn, 2000, i) for i in range(40)])

    g1, n1 = build()
    first = system.run(g1, workers=1)
    pools = system.metrics()["pools"]
    assert "graph-workers" in pools, pools
    stats = pools["graph-workers"]
    assert stats["calls"] == first.stats.batches  # every batch went through the pool
    assert stats["succeeded"] == first.stats.batches
    members = {m["actor_id"] for m in stats["members"]}
    assert {s.worker for s in first.stats.tasks.values()} <= members
    g2, n2 = build()
    second = system.run(g2, workers=1)
    assert second[n2] == first[n1]
    assert second.stats.extra["code_shipments"] == 0  # warm: the functions are cached
    assert {s.worker for s in second.stats.tasks.values()} <= members


def test_closing_the_system_ends_the_graph_workers_resizer_thread():
    # The shared pool's resizer thread waits for new sizes; the system's close ends it
    # (it used to wait forever, holding the pool and the closed system in memory).
    import threading
    import weakref

    before = set(threading.enumerate())
    s = actorq.ActorSystem()
    try:
        g = actorq.Graph()
        total = g.task(add, *[g.task(burn, 2000, i) for i in range(20)])
        assert s.run(g, workers=2)[total] == sum(burn(2000, i) for i in range(20))
        resizers = [t for t in set(threading.enumerate()) - before
                    if t.name == "actorq-graph-resize"]
        assert resizers  # two workers asked for: the pool grew through it
    finally:
        s.close()
    for t in resizers:
        t.join(10)
        assert not t.is_alive()
    ref = weakref.ref(s)
    del s, g, total
    import gc
    gc.collect()
    assert ref() is None  # nothing of the graph's pool keeps the closed system alive


FAST = actorq.Backoff(initial=0.001, maximum=0.01)


def test_retry_policies_per_task_and_per_run(system, tmp_path):
    g = actorq.Graph()
    policy = actorq.Retry(max_attempts=3, backoff=FAST, retry_on=(RuntimeError,), budget=None)
    ok = g.task(flaky, str(tmp_path / "a"), 2, retry=policy)  # RuntimeError is listed
    permanent = g.task(flaky, str(tmp_path / "b"), 1,
                       retry=actorq.Retry(max_attempts=5, backoff=FAST, budget=None))
    by_run = g.task(flaky, str(tmp_path / "c"), 1)  # no policy of its own: the run's
    own = g.task(flaky, str(tmp_path / "d"), 3, retries=1)  # retries= wins over the run's
    no_budget = actorq.Retry(max_attempts=5, backoff=FAST, retry_on=(RuntimeError,),
                             budget=actorq.RetryBudget(ratio=0.0, min_per_second=0.0))
    refused = g.task(flaky, str(tmp_path / "e"), 1, retry=no_budget)
    run_policy = actorq.Retry(max_attempts=2, backoff=FAST, retry_on=(RuntimeError,),
                              budget=None)
    result = system.run(g, retry=run_policy)
    assert result[ok] == 2
    assert result.stats.tasks[ok].attempts == 3
    # a Retry retries crashes, timeouts and its retry_on types only: not this RuntimeError
    with pytest.raises(RuntimeError, match="flaky attempt 1"):
        result[permanent]
    assert result.stats.tasks[permanent].attempts == 1
    assert result[by_run] == 1
    assert result.stats.tasks[by_run].attempts == 2
    with pytest.raises(RuntimeError, match="flaky attempt 2"):
        result[own]
    assert result.stats.tasks[own].attempts == 2
    with pytest.raises(RuntimeError, match="flaky attempt 1"):  # its budget refused
        result[refused]
    assert result.stats.tasks[refused].attempts == 1
    assert result.stats.retries == 2 + 1 + 1


def test_bad_retry_options_are_refused(system):
    g = actorq.Graph()
    with pytest.raises(actorq.GraphError, match="retries= or retry=, not both"):
        g.task(inc, 1, retries=2, retry=actorq.Retry())
    with pytest.raises(actorq.GraphError, match=r"retry must be an actorq\.Retry"):
        g.task(inc, 1, retry=3)
    g.task(inc, 1)
    with pytest.raises(actorq.GraphError, match=r"retry must be an actorq\.Retry"):
        system.run(g, retry="always")


def test_run_async_awaits_without_a_thread_and_cancelling_stops_the_run(system, tmp_path):
    import threading

    g = actorq.Graph()
    n = g.task(add, g.task(inc, 1), 5)
    slow = actorq.Graph()
    marker = tmp_path / "started"
    first = slow.task(_touch_then_sleep, str(marker), 60)
    slow.task(inc, first)

    async def main():
        assert (await system.run_async(g))[n] == 7
        # the run took no thread of the default executor (asyncio.to_thread would)
        assert not [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
        task = asyncio.ensure_future(system.run_async(slow, workers=1))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: actorq.testing.wait_until(marker.exists, timeout=30))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    again = system.run(g, workers=1)  # the pool was let go: a new run gets it at once
    assert again[n] == 7


def _touch_then_sleep(path, seconds):
    open(path, "w").close()
    time.sleep(seconds)
    return seconds


UNGUARDED_GRAPH = '''
import actorq


def inc(x):
    return x + 1


with actorq.ActorSystem(start_method="forkserver") as system:  # no __main__ guard
    g = actorq.Graph()
    g.task(inc, 1)
    try:
        system.run(g)
    except actorq.ActorqError as exc:
        print("error:", type(exc).__name__, exc)
'''


def test_a_graph_in_an_unguarded_main_script_says_why_no_worker_starts(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(UNGUARDED_GRAPH))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error: ActorCrashed" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "__main__" in proc.stdout


INTERRUPTED = '''
import os
import signal
import sys
import threading
import time

import actorq
import actorq.testing


def touch_then_sleep(path, seconds):
    # the marker appears with its content (a rename): a run interrupted as soon as it
    # exists may kill this worker at once, and an open()ed marker would stay empty
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return seconds


def inc(x):
    return x + 1


def pid():
    return os.getpid()


if __name__ == "__main__":
    marker = sys.argv[1]
    with actorq.ActorSystem(workers=1) as system:
        g = actorq.Graph()
        g.task(inc, g.task(touch_then_sleep, marker, 60))

        def interrupt():
            actorq.testing.wait_until(lambda: os.path.exists(marker), timeout=60)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        started = time.monotonic()
        try:
            system.run(g)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - started:.1f}s")
        again = actorq.Graph()
        n = again.task(pid)
        with open(marker) as f:
            print("pids:", f.read(), system.run(again)[n])
'''


def test_ctrl_c_in_run_stops_the_run_and_the_next_run_gets_a_free_worker(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(INTERRUPTED))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "started")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interrupted after" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    # the sleeping worker was killed and replaced: the next run's task ran in a new process
    line = next(x for x in proc.stdout.splitlines() if x.startswith("pids:"))
    old, new = line.split()[1:]
    assert old != new


def _slow(x):
    time.sleep(0.2)
    return x


def test_closing_the_system_under_a_run_ends_the_run(tmp_path):
    import threading

    for use_async in (False, True):
        system = actorq.ActorSystem(workers=2)
        try:
            g = actorq.Graph()
            first = g.task(_touch_then_sleep, str(tmp_path / f"go{use_async}"), 0.2)
            for i in range(40):
                g.task(_slow, i).after(first)

            def close_when_started(marker=tmp_path / f"go{use_async}", system=system):
                actorq.testing.wait_until(marker.exists, timeout=60)
                system.close()

            closer = threading.Thread(target=close_when_started)
            closer.start()
            run = (lambda g=g, system=system: asyncio.run(system.run_async(g))) if use_async \
                else (lambda g=g, system=system: system.run(g))
            with pytest.raises(actorq.ActorStopped):
                run()
            closer.join(60)
        finally:
            system.close()


def test_a_batch_is_rounded_to_its_target_not_cut_at_it():
    """Tasks of a few ms share a batch of about TARGET_BATCH_SECONDS: it may pass the
    target by up to half a task, so that a slightly longer measurement (a loaded
    machine) does not halve the batches (before: 12 ms cut, 6.1 ms tasks went alone)."""
    from actorq._graph.scheduler import CREDIT, TARGET_BATCH_SECONDS, batch_fits

    def size(est):
        total, n = est, 1
        while batch_fits(total, est):
            total, n = total + est, n + 1
        return n

    assert pytest.approx(0.02) == TARGET_BATCH_SECONDS
    assert size(0.005) == size(0.0051) == 4  # 5 ms tasks in fours, a little over too
    assert size(0.0061) == 3
    assert size(0.0105) == 2  # over half the target: still two
    assert size(0.0135) == 1  # two would be 27 ms: alone
    assert size(1e-5) > 1000  # tiny tasks by the thousand (MAX_BATCH caps them)
    assert CREDIT == 2  # one batch running and one queued per worker


def test_a_tasks_wait_for_a_core_does_not_count_as_its_work():
    """On a loaded machine a CPU-bound task's wall time is stretched by waiting for a
    core: its batch size goes by its CPU time (and a STRETCH-th of its wall time less
    that wait), not a STRETCH-th of the whole wall time (which halved the batches)."""
    from actorq._graph.state import STRETCH, RunState

    g = actorq.Graph()
    g.task(inc, 1)
    state = RunState(g, keep=None, journal=None, fail_fast=False, threshold=1 << 16,
                     prefix="t")
    state._prepare()
    wall, cpu = 0.04, 0.005  # 35 ms of the 40 waiting for a core
    state._measure(b"loaded", wall, cpu, active=0.0055)
    assert state.est_cpu[b"loaded"] == cpu
    state._measure(b"unknown", wall, cpu)  # no wait known: a quarter of the wall time
    assert state.est_cpu[b"unknown"] == wall / STRETCH
    state._measure(b"sleeps", wall, 0.001, active=wall)  # it waited itself (sleep, I/O)
    assert state.est_cpu[b"sleeps"] == wall / STRETCH
