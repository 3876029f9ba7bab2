"""Task fusion (_graph/fusion.py): a batch carries the dependents its tasks make ready.

One worker, and the functions' durations known from a first run (as the pool keeps
them between runs), so that the batch of ``a`` carries ``b`` and ``c`` (a chain): the
counts say so (``stats.extra["fused"]``, one batch), and files count the real calls.
"""

from __future__ import annotations

import os
import signal

import pytest

import actorq


def step(path, mode, *deps):
    """Append a line to *path* per call; fail or kill this worker on the first call
    (*mode* ``fail_once`` / ``fail`` / ``kill_once``); return 1 + the inputs' sum."""
    with open(path, "a+") as f:
        f.seek(0)
        calls = len(f.read())
        f.write("x")
    if mode == "fail" or (mode == "fail_once" and not calls):
        msg = f"step failed (call {calls + 1})"
        raise RuntimeError(msg)
    if mode == "kill_once" and not calls:
        os.kill(os.getpid(), signal.SIGKILL)
    return 1 + sum(deps)


def calls(path) -> int:
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def chain(tmp_path, mode, **options):
    g = actorq.Graph()
    a = g.task(step, str(tmp_path / "a"), mode, **options)
    b = g.task(step, str(tmp_path / "b"), "ok", a)
    c = g.task(step, str(tmp_path / "c"), "ok", b)
    return g, (a, b, c)


@pytest.fixture
def warm(system, tmp_path):
    """The system, its one-worker graph pool knowing how long ``step`` takes."""
    g, _ = chain(tmp_path / "warm", "ok")
    (tmp_path / "warm").mkdir()
    assert system.run(g, workers=1).ok
    return system


def test_a_chain_goes_in_one_batch_and_each_task_runs_once(warm, tmp_path):
    g, (a, b, c) = chain(tmp_path, "ok")
    result = warm.run(g, workers=1)
    assert [result[n] for n in (a, b, c)] == [1, 2, 3]
    assert result.stats.extra["fused"] == 2
    assert result.stats.batches == 1
    assert [calls(tmp_path / k) for k in "abc"] == [1, 1, 1]
    assert [result.stats.tasks[n].attempts for n in (a, b, c)] == [1, 1, 1]


def test_a_failed_input_skips_its_fused_dependents_and_they_run_after_its_retry(
        warm, tmp_path):
    g, (a, b, c) = chain(tmp_path, "fail_once", retries=1)
    result = warm.run(g, workers=1)
    assert [result[n] for n in (a, b, c)] == [1, 2, 3]
    assert [calls(tmp_path / k) for k in "abc"] == [2, 1, 1]  # b, c not run with a's failure
    assert [result.stats.tasks[n].attempts for n in (a, b, c)] == [2, 1, 1]
    assert result.stats.retries == 1
    assert result.stats.extra["fused"] == 4  # b and c went with a both times


def test_an_input_failed_for_good_fails_its_fused_dependents_unrun(warm, tmp_path):
    g, (a, b, c) = chain(tmp_path, "fail")
    result = warm.run(g, workers=1)
    assert not result.ok
    with pytest.raises(RuntimeError, match="step failed"):
        result[a]
    for node in (b, c):
        with pytest.raises(actorq.GraphError, match="which failed"):
            result[node]
        assert node not in result.stats.tasks  # never started: no attempt counted
    assert [calls(tmp_path / k) for k in "abc"] == [1, 0, 0]


def test_a_fused_batch_whose_worker_is_killed_is_run_again_attempts_counted(
        warm, tmp_path):
    g, (a, b, c) = chain(tmp_path, "kill_once")
    result = warm.run(g, workers=1)
    assert [result[n] for n in (a, b, c)] == [1, 2, 3]
    assert [calls(tmp_path / k) for k in "abc"] == [2, 1, 1]
    # the lost batch used one attempt of each of its tasks, as any lost batch does
    assert [result.stats.tasks[n].attempts for n in (a, b, c)] == [2, 2, 2]
    assert result.stats.crashes == 3


def test_a_large_result_reaches_its_fused_dependent_in_the_worker_and_is_freed(system):
    np = pytest.importorskip("numpy")

    def build():
        g = actorq.Graph()
        big = g.task(np.ones, 1 << 20)  # 8 MiB: a shared-memory segment, not a copy
        return g, g.task(np.sum, big)

    g, total = build()
    assert system.run(g, workers=1)[total] == 1 << 20  # the durations known after it
    g, total = build()
    result = system.run(g, workers=1)
    assert result[total] == 1 << 20
    assert result.stats.extra["fused"] == 1
    assert result.stats.shared_bytes_peak >= 8 << 20  # it was large, and freed (leak guard)


def test_a_task_that_must_follow_one_of_the_batch_is_not_fused(warm, tmp_path):
    g, (a, b, c) = chain(tmp_path, "ok")
    after = g.task(step, str(tmp_path / "d"), "ok").after(a)  # ordering only
    result = warm.run(g, workers=1)
    assert [result[n] for n in (a, b, c, after)] == [1, 2, 3, 1]
    assert result.stats.tasks[after].start >= result.stats.tasks[a].end
    assert result.stats.extra["fused"] == 2  # b and c, not the one that only follows a


def test_independent_tasks_are_not_looked_at_for_fusion(warm, tmp_path):
    g = actorq.Graph()
    nodes = [g.task(step, str(tmp_path / f"i{k}"), "ok") for k in range(20)]
    result = warm.run(g, workers=1)
    assert [result[n] for n in nodes] == [1] * 20
    assert result.stats.extra["fused"] == 0
