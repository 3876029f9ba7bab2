"""Where the layered DAG's wall time goes: per run, against two bare processes.

    python benchmarks/graph_dag.py [REPEATS]           # interleaved with the bare processes
    valgrind --tool=callgrind python benchmarks/graph_dag.py --runs N

The first form runs the benchmark's DAG (400 tasks x 5 ms of CPU, two dependencies
each, ``actorq bench graph``'s part 2) and the bare-process reference alternately (every
other repeat the bare processes first) and prints, per repeat: both wall times and
their ratio, the CPU of the user's process (getrusage), the batches sent, and each
worker's idle gaps between two of its tasks (from ``stats.tasks``), split into gaps
where the next task had already been sent (the worker had it queued) and *starved*
ones, where it was sent only after the previous task ended (the worker waited for the
scheduler). Then the medians and the load average. Instruction counts of the user's
process are repeatable where times are not: run ``--runs 0`` and ``--runs 2`` under
callgrind (with the interpreter's real binary, not a pyenv shim) and divide the
difference of the totals by 800.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import resource
import statistics
import sys
import time
from typing import Any

import actorq
from actorq._graph import scheduler as _scheduler
from actorq.bench.suites.graph import calibrate, layered_graph, noop, spin_many

LAYERS, WIDTH = 20, 20
_sent: dict[int, float] = {}


def _record_sends() -> None:
    """Note when each task was sent (a private hook, for this probe only)."""
    send = _scheduler.Scheduler._send

    def _send(self: Any, worker: Any, tids: list[int]) -> bool:
        now = time.monotonic()
        for t in tids:
            _sent[t] = now
        return send(self, worker, tids)

    _scheduler.Scheduler._send = _send  # type: ignore[method-assign]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _gaps(result: actorq.GraphResult) -> tuple[list[float], list[float]]:
    per: dict[int, list[tuple[float, float, int]]] = {}
    for node, ts in result.stats.tasks.items():
        per.setdefault(ts.worker, []).append((ts.start, ts.end, node.index))
    queued, starved = [], []
    for tasks in per.values():
        tasks.sort()
        for (_, end, _), (start, _, nxt) in itertools.pairwise(tasks):
            (starved if _sent.get(nxt, 0.0) > end else queued).append(start - end)
    return queued, starved


def _bare(pool: Any, n_spin: int) -> float:
    t0 = time.perf_counter()
    pool.starmap(spin_many, [(n_spin, LAYERS * WIDTH // 2)] * 2, chunksize=1)
    return time.perf_counter() - t0


def _q(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    xs = sorted(xs)
    return (f"n={len(xs)} p50={xs[len(xs) // 2] * 1e3:.2f} "
            f"p90={xs[int(len(xs) * 0.9)] * 1e3:.2f} sum={sum(xs) * 1e3:.0f} ms")


def main(argv: list[str]) -> None:
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else None
    n_spin = calibrate(0.005)
    if runs is not None:  # under callgrind: no bare processes, no printing per task
        with actorq.ActorSystem() as system:
            system.run(layered_graph(n_spin, LAYERS, WIDTH), workers=2)  # warm
            for _ in range(runs):
                system.run(layered_graph(n_spin, LAYERS, WIDTH), workers=2)
        return
    repeats = int(argv[0]) if argv else 5
    _record_sends()
    ctx = multiprocessing.get_context("fork")
    rows = []
    with ctx.Pool(2) as pool, actorq.ActorSystem() as system:
        pool.map(noop, range(4))
        for rep in range(repeats + 1):
            _sent.clear()
            graph = layered_graph(n_spin, LAYERS, WIDTH)
            if rep % 2:  # every other repeat the bare processes go first
                bare = _bare(pool, n_spin)
            c0, t0 = _cpu(), time.perf_counter()
            result = system.run(graph, workers=2)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            if not rep % 2:
                bare = _bare(pool, n_spin)
            if not rep:
                continue  # warm-up
            queued, starved = _gaps(result)
            rows.append((bare / wall, cpu))
            print(f"actorq {wall:.3f} s, bare {bare:.3f} s, speed ratio {bare / wall:.3f}; "
                  f"user process CPU {cpu * 1e3:.0f} ms; batches {result.stats.batches}; "
                  f"gaps queued {_q(queued)}; starved {_q(starved)}", flush=True)
    ratios = sorted(r for r, _ in rows)
    print(f"speed ratio median {statistics.median(ratios):.3f} "
          f"({ratios[0]:.3f} .. {ratios[-1]:.3f}); user CPU per task "
          f"{statistics.median(c for _, c in rows) / (LAYERS * WIDTH) * 1e6:.0f} µs; "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
