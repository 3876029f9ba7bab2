"""Large results stay in shared memory and reach dependents by handle; scale of the scheduler."""

from __future__ import annotations

import tracemalloc

import numpy as np
import psutil
import pytest

import actorq
from actorq._shared import SHM_DIR


def make(seed, mib=8):
    rng = np.random.default_rng(seed)
    return rng.random(mib * 1024 * 1024 // 8)


def plus(a, b):
    return a + b


def checksum(a):
    return float(a.sum()), bool(a.flags.writeable)


def segments(system):
    import os

    return [n for n in os.listdir(SHM_DIR) if n.startswith(system.run_id + "g")]


def test_large_arrays_do_not_pass_through_the_scheduler(system):
    g = actorq.Graph()
    xs = [g.task(make, i) for i in range(4)]
    pairs = [g.task(plus, xs[0], xs[1]), g.task(plus, xs[2], xs[3])]
    sums = [g.task(checksum, p) for p in pairs]
    before = system.metrics()["system"]
    tracemalloc.start()
    try:
        result = system.run(g, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = system.metrics()["system"]
    expected = [float((make(0) + make(1)).sum()), float((make(2) + make(3)).sum())]
    assert [result[s][0] for s in sums] == pytest.approx(expected)
    assert [result[s][1] for s in sums] == [False, False]  # read-only views of shared memory
    stats = result.stats
    assert stats.shared_bytes_peak >= 3 * 8 * 1024 * 1024  # 6 arrays of 8 MiB went by handle
    assert stats.inband_bytes < 64 * 1024
    # the scheduler's process moved none of the 48 MiB: no out-of-band traffic, no copy
    assert after["oob_bytes_sent"] - before["oob_bytes_sent"] == 0
    assert after["oob_bytes_received"] - before["oob_bytes_received"] == 0
    assert peak < 4 * 1024 * 1024
    assert segments(system) == []  # every intermediate was freed


class Holder(actorq.Actor):
    def size(self, a):
        return a.nbytes


def test_the_traffic_counter_sees_an_array_sent_through_the_process(system):
    """The control for the test above: a plain call does move the bytes."""
    ref = system.spawn(Holder)
    before = system.metrics()["system"]["oob_bytes_sent"]
    assert ref.size(make(0)).result(timeout=20) == 8 * 1024 * 1024
    assert system.metrics()["system"]["oob_bytes_sent"] - before >= 8 * 1024 * 1024


def test_sink_results_are_mapped_for_the_user_and_intermediates_freed(system):
    g = actorq.Graph()
    a = g.task(make, 1, 1)
    b = g.task(plus, a, 1.0)
    result = system.run(g, keep=[a])
    np.testing.assert_array_equal(result[b], make(1, 1) + 1.0)
    np.testing.assert_array_equal(result[a], make(1, 1))
    g2 = actorq.Graph()
    a2 = g2.task(make, 1, 1)
    g2.task(plus, a2, 1.0)
    result2 = system.run(g2)
    with pytest.raises(actorq.GraphError, match="freed once its dependents had it; pass keep"):
        result2[a2]
    assert segments(system) == []


def ident(x):
    return x


def test_100k_node_graph_runs_with_bounded_scheduler_memory(system):
    g = actorq.Graph()
    layer = [g.task(ident, i) for i in range(50_000)]
    g2 = [g.task(plus, layer[i], layer[i + 1]) for i in range(0, 50_000, 2)]
    g3 = [g.task(plus, g2[i], g2[i + 1]) for i in range(0, 25_000, 2)]
    rest = 100_000 - len(g)
    tail = [g.task(ident, i) for i in range(rest)]
    assert len(g) == 100_000
    rss = psutil.Process().memory_info().rss
    result = system.run(g)
    grew = psutil.Process().memory_info().rss - rss
    assert result.ok
    assert result[g3[-1]] == sum(range(49_996, 50_000))
    assert result[tail[-1]] == rest - 1
    # the graph itself was built before; what the run added (arrays per node, the small
    # results kept for the user) stays small per node (measured: about 0.4 KiB)
    assert grew / len(g) < 2048, f"{grew / len(g):.0f} bytes per node"
