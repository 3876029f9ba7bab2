"""max_memory: the bytes held by large results stay under the cap, and the run never deadlocks."""

from __future__ import annotations

import os

import numpy as np
import pytest

import actorq
from actorq._graph.memory import default_max_memory
from actorq._shared import SHM_DIR

MiB = 1024 * 1024


def shm_bytes(prefix):
    """Bytes of the run's result segments in /dev/shm right now (what is really held)."""
    total = 0
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix):
            try:
                total += os.stat(os.path.join(SHM_DIR, name)).st_size
            except FileNotFoundError:
                pass
    return total


def note(log, text):
    with open(log, "a") as f:
        f.write(text + "\n")


def produce(log, prefix, seed, mib):
    note(log, f"seen {shm_bytes(prefix)}")
    return np.random.default_rng(seed).random(mib * MiB // 8)


def consume(log, prefix, a):
    note(log, f"seen {shm_bytes(prefix)}")
    return float(a.sum())


def total(*xs):
    return sum(xs)


def wide(log, prefix, n=24, mib=4, consumer_priority=0):
    g = actorq.Graph()
    sums = [g.task(consume, log, prefix, g.task(produce, log, prefix, i, mib),
                   priority=consumer_priority)
            for i in range(n)]
    return g, g.task(total, *sums)


def expected(n=24, mib=4):
    return sum(float(np.random.default_rng(i).random(mib * MiB // 8).sum()) for i in range(n))


def seen(log):
    with open(log) as f:
        return [int(line.split()[1]) for line in f if line.startswith("seen")]


def test_wide_graph_stays_under_the_cap_and_is_correct(system, tmp_path):
    prefix = system.run_id + "g"
    cap = 20 * MiB  # the 24 arrays of 4 MiB (96 MiB) do not fit at once
    log = str(tmp_path / "capped")
    g, end = wide(log, prefix)
    result = system.run(g, workers=2, max_memory=cap)
    want = expected()
    assert result[end] == pytest.approx(want)
    stats = result.stats
    assert stats.max_memory == cap
    assert 4 * MiB <= stats.shared_bytes_peak <= cap
    assert stats.extra["held_back"] > 0  # producers did wait for room
    assert max(seen(log)) <= cap  # what the tasks saw in /dev/shm, not our own count

    # the control: the same graph without the cap runs the producers first (higher rank).
    # Its consumers rank below the producers in priority too: else, until the first
    # large result, a batch may carry a producer's consumer with it (fusion.py, which
    # never lets a task jump one of higher priority), and hold less than the cap
    log = str(tmp_path / "uncapped")
    g, end = wide(log, prefix, consumer_priority=-1)
    free = system.run(g, workers=2, max_memory=1 << 40)
    assert free[end] == pytest.approx(want)
    assert free.stats.shared_bytes_peak > cap
    assert free.stats.extra["held_back"] == 0


def double(log, a):
    note(log, "start")
    out = a * 2
    note(log, "end")
    return out


def test_results_larger_than_the_cap_run_one_at_a_time_without_deadlock(system, tmp_path):
    log = str(tmp_path / "log")
    g = actorq.Graph()
    root = g.task(produce, str(tmp_path / "unused"), system.run_id + "g", 7, 2)
    ends = []
    for _chain in range(3):
        x = root
        for _step in range(3):
            x = g.task(double, log, x)
        ends.append(x)
    result = system.run(g, workers=2, max_memory=1 * MiB)  # every result is 2 MiB
    base = np.random.default_rng(7).random(2 * MiB // 8)
    for e in ends:
        np.testing.assert_array_equal(result[e], base * 8)
    assert result.stats.extra["run_alone"] == 9
    with open(log) as f:
        lines = f.read().split()
    assert lines == ["start", "end"] * 9  # never two at once: one task at a time


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1GiB", True])
def test_bad_max_memory_is_refused_before_anything_runs(system, tmp_path, bad):
    log = tmp_path / "ran"
    g = actorq.Graph()
    g.task(note, str(log), "ran")
    with pytest.raises(actorq.GraphError, match="max_memory must be a positive number"):
        system.run(g, max_memory=bad)
    assert not log.exists()


def test_default_cap_comes_from_the_machine(system):
    g = actorq.Graph()
    g.task(total, 1, 2)
    result = system.run(g)
    st = os.statvfs(SHM_DIR)
    assert 0 < result.stats.max_memory <= st.f_blocks * st.f_frsize
    assert result.stats.max_memory == pytest.approx(default_max_memory(), rel=0.2)
