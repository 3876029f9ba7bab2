"""Faults: SIGKILL, SIGSTOP, raise and max_rss overrun of a worker, beside multiprocessing.Pool.

    python benchmarks/bench_faults.py [--quick] [--faults PLAN] [--results-dir DIR]

A thin entry point: the code is actorq/bench/suites/faults.py, the same as
``actorq bench faults``; this script writes to benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("faults", Path(__file__).resolve().parent / "results"))
