"""Job graphs: actorq beside ProcessPoolExecutor, multiprocessing, loky, Dask (Ray).

    python benchmarks/bench_graph.py [--quick] [--set KEY=VALUE] [--out DIR]

A thin entry point: the code is actorq/bench/suites/graph.py, the same as
``actorq bench graph``; this script writes to benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("graph", Path(__file__).resolve().parent / "results"))
