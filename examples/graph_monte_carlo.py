"""A Monte Carlo estimate of pi as a job graph: sampling tasks, then a reduction tree.

Each sampling task throws points at the unit square with its own seed and counts those
inside the quarter circle; pairs of counts are added up a tree (log2(tasks) levels) to
one total. The same seeds are then run one after the other in this process: the counts
must be identical (the estimate is deterministic), and the two wall times are compared.

    python examples/graph_monte_carlo.py                  # 64 tasks x 400,000 points
    python examples/graph_monte_carlo.py --tasks 128 --points 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import actorq


def sample(seed: int, points: int) -> int:
    """Count the points of *points* random ones that fall inside the quarter circle."""
    rng = random.Random(seed)
    rand = rng.random
    inside = 0
    for _ in range(points):
        x, y = rand(), rand()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def add(a: int, b: int) -> int:
    """One step of the reduction tree."""
    return a + b


def build(tasks: int, points: int) -> tuple[actorq.Graph, actorq.Node]:
    g = actorq.Graph()
    level = [g.task(sample, seed, points) for seed in range(tasks)]
    while len(level) > 1:
        level = [g.task(add, level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return g, level[0]


def main(argv: list[str] | None = None) -> int:
    quick = bool(os.environ.get("ACTORQ_EXAMPLES_QUICK"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16 if quick else 64)
    parser.add_argument("--points", type=int, default=20_000 if quick else 400_000)
    args = parser.parse_args(argv)
    g, total = build(args.tasks, args.points)
    n = args.tasks * args.points
    print(f"estimating pi with {n:,} points: {args.tasks} sampling tasks and a reduction "
          f"tree ({len(g)} tasks in all) on {os.cpu_count()} cores")

    start = time.perf_counter()
    with actorq.ActorSystem() as system:
        result = system.run(g)
    parallel = time.perf_counter() - start
    inside = result[total]
    print(f"pi ~ {4 * inside / n:.6f} ({inside:,} of {n:,} points inside; "
          f"critical path {len(result.stats.critical_path)} tasks, "
          f"utilisation {result.stats.utilisation:.0%})")

    start = time.perf_counter()
    serial = sum(sample(seed, args.points) for seed in range(args.tasks))
    one = time.perf_counter() - start
    if serial != inside:
        print(f"CHECK FAILED: one process counted {serial:,}, the graph {inside:,}")
        return 1
    print(f"check: OK (the same {serial:,} points as one process)")
    print(f"wall time: job graph {parallel:.2f} s (start-up included), one process {one:.2f} s:"
          f" {one / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
