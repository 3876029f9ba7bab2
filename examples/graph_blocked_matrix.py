"""Blocked matrix work with numpy as a job graph: arrays passed between tasks.

C = A @ B for n x n matrices cut into b x b blocks. Tasks make the blocks of A and B
(seeded), multiply pairs of blocks and add the products up; every block travels from
task to task through shared memory, by handle (the scheduler never copies it). The
result is checked against ``A @ B`` computed here in one call, and the graph's wall
time against the same blocked product done in this one process. Each process uses one
BLAS thread, so that the comparison is about processes, not about BLAS threads.

    python examples/graph_blocked_matrix.py               # 1536 x 1536, 4 x 4 blocks
    python examples/graph_blocked_matrix.py --n 3072 --blocks 6
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported (also in the workers)

import argparse  # noqa: E402 - after the BLAS settings above
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import actorq  # noqa: E402


def block(seed: int, size: int) -> np.ndarray:
    """A size x size block of random numbers (deterministic in *seed*)."""
    return np.random.default_rng(seed).standard_normal((size, size))


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


def add(*parts: np.ndarray) -> np.ndarray:
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def build(blocks: int, size: int) -> tuple[actorq.Graph, list[list[actorq.Node]]]:
    g = actorq.Graph()
    a = [[g.task(block, i * blocks + k, size) for k in range(blocks)] for i in range(blocks)]
    b = [[g.task(block, 10_000 + k * blocks + j, size) for j in range(blocks)]
         for k in range(blocks)]
    c = [[g.task(add, *[g.task(matmul, a[i][k], b[k][j]) for k in range(blocks)])
          for j in range(blocks)] for i in range(blocks)]
    return g, c


def main(argv: list[str] | None = None) -> int:
    quick = bool(os.environ.get("ACTORQ_EXAMPLES_QUICK"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=384 if quick else 1536)
    parser.add_argument("--blocks", type=int, default=3 if quick else 4)
    args = parser.parse_args(argv)
    if args.n % args.blocks:
        parser.error("--n must be a multiple of --blocks")
    size, nb = args.n // args.blocks, args.blocks
    g, c = build(nb, size)
    print(f"C = A @ B, {args.n} x {args.n} in {nb} x {nb} blocks of {size}: {len(g)} tasks "
          f"on {os.cpu_count()} cores")

    start = time.perf_counter()
    with actorq.ActorSystem() as system:
        result = system.run(g)
        got = np.block([[result[c[i][j]] for j in range(nb)] for i in range(nb)])
    parallel = time.perf_counter() - start
    stats = result.stats
    print(f"done: peak {stats.shared_bytes_peak / 2**20:.1f} MiB of blocks in shared memory, "
          f"{stats.inband_bytes} bytes of results through the scheduler")

    start = time.perf_counter()
    a = [[block(i * nb + k, size) for k in range(nb)] for i in range(nb)]
    b = [[block(10_000 + k * nb + j, size) for j in range(nb)] for k in range(nb)]
    serial = [[add(*[matmul(a[i][k], b[k][j]) for k in range(nb)]) for j in range(nb)]
              for i in range(nb)]
    one = time.perf_counter() - start
    want = np.block(a) @ np.block(b)
    if not (np.allclose(got, want) and np.allclose(np.block(serial), want)):
        print("CHECK FAILED: the blocked product differs from A @ B")
        return 1
    print(f"check: OK (matches A @ B; max |difference| {np.abs(got - want).max():.2e})")
    print(f"wall time: job graph {parallel:.2f} s (start-up included), one process {one:.2f} s:"
          f" {one / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
