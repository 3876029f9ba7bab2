"""actorq against concurrent.futures.ProcessPoolExecutor, side by side in one run.

The figures the README's "when to use actorq" section quotes: a call's round trip (a
small argument, a small result) and sending a large numpy array to another process.
Both peers run in the same process, alternating repeat by repeat, so that a busy machine
slows both alike; the report gives the median and the spread of the repeats.

    python benchmarks/bench_vs_pool.py            # 2,000 calls, a 200 MB array, 5 repeats
    python benchmarks/bench_vs_pool.py --quick    # fewer (a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import actorq


def echo(x: int) -> int:
    return x


def size_of(array: np.ndarray) -> int:
    return int(array.nbytes)


class Peer(actorq.Actor):
    def echo(self, x: int) -> int:
        return x

    def size_of(self, array: np.ndarray) -> int:
        return int(array.nbytes)


def p50_us(call: Callable[[int], object], n: int) -> float:
    """Median round trip of *n* sequential calls, in microseconds."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f} .. {max(values):,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    args = parser.parse_args()
    calls, repeats, mb = (300, 2, 20) if args.quick else (2000, 5, 200)
    array = np.random.default_rng(0).random(mb * 2**20 // 8)
    rt_actorq, rt_pool, arr_actorq, arr_pool = [], [], [], []
    with actorq.ActorSystem() as system, ProcessPoolExecutor(1) as pool:
        peer = system.spawn(Peer)
        peer.echo(0).result()
        pool.submit(echo, 0).result()
        for _ in range(repeats):
            rt_actorq.append(p50_us(lambda i: peer.echo(i).result(), calls))
            rt_pool.append(p50_us(lambda i: pool.submit(echo, i).result(), calls))
            arr_actorq.append(seconds(lambda: peer.size_of(array).result()) * 1e3)
            arr_pool.append(seconds(lambda: pool.submit(size_of, array).result()) * 1e3)
    print(f"call round trip p50, µs ({calls} sequential calls, median of {repeats} repeats)")
    print(f"  actorq call                 {spread(rt_actorq)}")
    print(f"  ProcessPoolExecutor submit  {spread(rt_pool)}")
    ratio = statistics.median(rt_pool) / statistics.median(rt_actorq)
    print(f"  ratio pool / actorq         {ratio:.0f}x")
    print(f"{mb} MB float64 array to another process, ms (median of {repeats})")
    print(f"  actorq call                 {spread(arr_actorq)}")
    print(f"  ProcessPoolExecutor submit  {spread(arr_pool)}")
    ratio = statistics.median(arr_pool) / statistics.median(arr_actorq)
    print(f"  ratio pool / actorq         {ratio:.0f}x")


if __name__ == "__main__":
    main()
