"""Pools, circuits, retries and the Executor: actorq beside its peers.

    python benchmarks/bench_pool.py [--quick] [--set KEY=VALUE] [--out DIR]

A thin entry point: the code is actorq/bench/suites/pool.py, the same as
``actorq bench pool``; this script writes to benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("pool", Path(__file__).resolve().parent / "results"))
