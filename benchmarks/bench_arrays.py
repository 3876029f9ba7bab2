"""8 MiB numpy arrays: actorq against a Pipe, and nothing else (the messaging suite's case).

    python benchmarks/bench_arrays.py [--per-repeat 10] [--repeats 7]

The same actor, array and peer as ``actorq bench messaging``'s "8 MiB numpy array"
(``Sink.nbytes`` against ``PipeSink``: ``Connection.send`` of the array, pickled in
band), measured alone so that it takes seconds: ``--per-repeat`` sequential transfers
per repeat, the two sides interleaved repeat by repeat, and the ratio of each repeat
pair. Prints ms per array on each side and the ratio's median and range.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import actorq
from actorq.bench.peers import PipeSink
from actorq.bench.suites import messaging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-repeat", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    k = args.per_repeat
    arr = np.arange(messaging.ARRAY_BYTES // 8, dtype=np.float64)
    with actorq.ActorSystem() as system:
        ref = system.spawn(messaging.Sink, name="arrays")
        with PipeSink() as pipe:
            messaging.pipe_arrays(pipe, arr, 2)  # warm-up: blocks, mappings, the peer
            messaging.actorq_arrays(ref, arr, 2)
            ours, theirs = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                messaging.actorq_arrays(ref, arr, k)
                middle = time.perf_counter()
                messaging.pipe_arrays(pipe, arr, k)
                end = time.perf_counter()
                ours.append((middle - start) / k * 1e3)
                theirs.append((end - middle) / k * 1e3)
    ratios = sorted(p / a for a, p in zip(ours, theirs, strict=True))
    print("actorq ms/array:", " ".join(f"{x:.2f}" for x in sorted(ours)))
    print("Pipe   ms/array:", " ".join(f"{x:.2f}" for x in sorted(theirs)))
    print(f"Pipe / actorq: median {statistics.median(ratios):.1f}x "
          f"(range {ratios[0]:.1f} .. {ratios[-1]:.1f}), {args.repeats} repeat pairs")


if __name__ == "__main__":
    main()
