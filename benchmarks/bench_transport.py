"""The messaging suite (tells, calls, pipelined calls, arrays, idle cost) beside its peers.

    python benchmarks/bench_transport.py [--quick] [--repeats N] [--results-dir DIR]

A thin entry point: the code is actorq/bench/suites/messaging.py, the same as
``actorq bench messaging``; this script writes to benchmarks/results/ by default.
"""

import sys
from pathlib import Path

from actorq.bench.command import script_main

if __name__ == "__main__":
    sys.exit(script_main("messaging", Path(__file__).resolve().parent / "results"))
