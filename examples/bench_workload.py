"""Measure your own workload with actorq.bench, side by side with a peer.

    python examples/bench_workload.py
    cd examples && actorq bench bench_workload:SquaresActorq bench_workload:SquaresPool

``squares_actorq`` spreads work over two actors; ``squares_pool`` does the same work
with ``multiprocessing.Pool``, the way its documentation shows. Each returns the amount
of work it did; the harness runs them in turn, repeat by repeat, in a child process
(bounded by a timeout), and reports each one's rate and the ratio between them. They
are named as ``module:name`` so that the child imports them (and the pool's ``square``)
by name.
"""

import multiprocessing

import actorq
from actorq.bench import run_workload

N = 2_000


class Squarer(actorq.Actor):
    def square(self, x):
        return x * x


class SquaresActorq:
    """A class workload: its actors are started once (setup), not in every repeat."""

    unit = "calls/s"

    def setup(self, system):
        self.refs = [system.spawn(Squarer) for _ in range(2)]

    def run(self, system):
        replies = [self.refs[i % 2].square(i) for i in range(N)]
        assert sum(r.result(timeout=30) for r in replies) == sum(i * i for i in range(N))
        return N

    def teardown(self, system):
        for ref in self.refs:
            system.stop(ref)


def square(x):
    return x * x


class SquaresPool:
    """The peer: the same work through multiprocessing.Pool (it ignores the system)."""

    unit = "calls/s"

    def setup(self, system):
        self.pool = multiprocessing.get_context("forkserver").Pool(2)

    def run(self, system):
        results = [self.pool.apply_async(square, (i,)) for i in range(N)]
        assert sum(r.get(30) for r in results) == sum(i * i for i in range(N))
        return N

    def teardown(self, system):
        self.pool.close()
        self.pool.join()


if __name__ == "__main__":
    report = run_workload("bench_workload:SquaresActorq", "bench_workload:SquaresPool",
                          repeats=3, warmup=1, timeout=120)
    ours, peer = report.results
    (ratio,) = report.verdicts
    print(f"{ours.name}: median {ours.median:,.0f} {ours.unit} "
          f"(p10 {ours.p10:,.0f} .. p90 {ours.p90:,.0f})")
    print(f"{peer.name}: median {peer.median:,.0f} {peer.unit}")
    print(f"ratio {ratio.value:.2f}x (spread {ratio.low:.2f} .. {ratio.high:.2f}), same run")
    assert len(ours.samples) == len(peer.samples) == 3
    print("bench_workload: all assertions passed")
