"""Restart latency (SIGKILL to the next call answered) beside mp.Process, loky and Ray.

    python benchmarks/bench_restart.py [--quick] [--repeats N] [--results-dir DIR]

A thin entry point: the code is actorq/bench/suites/restart.py, the same as
``actorq bench restart``; this script writes to benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("restart", Path(__file__).resolve().parent / "results"))
