"""What a page of fresh memory costs this machine, as more of it is taken (issue 15).

    python benchmarks/probe_fresh_memory.py [--gib 8]

Maps anonymous memory half a GiB at a time, writes one byte per 4 KiB page (one page
fault each), keeps it all, and prints the CPU and wall time per page of each half GiB.
An actor's start is mostly such faults (its copy-on-write copies of the fork server's
pages: ≈ 1,100-1,400 per actor, its unique memory), so where this cost jumps, starting
actors does too. On the development VM (2 cores, 23.5 GiB, a balloon device with free
page reporting) a fault cost ≈ 4 µs of CPU up to ≈ 6 GiB taken by this probe, then
15-45 µs: 1000 actors of 5.3 MiB each crossed that line (the superlinear starts of
benchmarks/bench_scale.py: 300 ready in 2.5 s, 1000 in 21 s on a quiet machine).
The memory is freed when the probe exits.
"""

from __future__ import annotations

import argparse
import mmap
import time

HALF_GIB = 1 << 29
PAGE = 4096


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=8.0, help="how much to take in all")
    args = parser.parse_args(argv)
    kept = []
    pages = HALF_GIB // PAGE
    for i in range(int(args.gib * 2)):
        block = mmap.mmap(-1, HALF_GIB)
        cpu, wall = time.process_time(), time.perf_counter()
        for offset in range(0, HALF_GIB, PAGE):
            block[offset] = 1
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        kept.append(block)
        print(f"{(i + 1) / 2:4.1f} GiB taken: {cpu / pages * 1e6:6.2f} µs CPU, "
              f"{wall / pages * 1e6:6.2f} µs wall per page", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
