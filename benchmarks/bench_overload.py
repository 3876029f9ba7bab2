"""Overload: a slow actor offered 10x its capacity, beside an unbounded multiprocessing.Queue.

    python benchmarks/bench_overload.py [--quick] [--repeats N] [--results-dir DIR]

A thin entry point: the code is the package actorq/bench/suites/overload/ (the method is
in its __init__ docstring), the same as ``actorq bench overload``; this script writes to
benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("overload", Path(__file__).resolve().parent / "results"))
