"""Caller-side instructions per call: a pool call against a direct ref call (callgrind).

Run under callgrind twice per mode with different call counts; the difference divided by
the difference of counts is the per-call cost in the calling process, free of start-up::

    for n in 200 1200; do
      for mode in ref default retry circuit_retry least_loaded fastest hash; do
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode.$n \\
        python benchmarks/callgrind_pool_call.py $mode $n; done; done
    python benchmarks/callgrind_pool_call.py --report /tmp/cg 200 1200

Only the calling process runs under valgrind (the member runs natively). The system's
``spin_seconds=0`` makes a waiter park at once instead of spinning on its reply ring,
so the count does not depend on how long the member takes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import actorq

MODES = ("ref", "default", "retry", "circuit_retry", "least_loaded", "fastest", "hash")


class Echo(actorq.Actor):
    def echo(self, x):
        return x


def run(mode: str, n: int) -> None:
    with actorq.ActorSystem(spin_seconds=0.0, call_timeout=600.0, warm_spares=0) as system:
        options = {"default": {}, "retry": {"retry": actorq.Retry()},
                   "circuit_retry": {"circuit": actorq.CircuitBreaker(),
                                     "retry": actorq.Retry()}, "ref": {},
                   "least_loaded": {"routing": "least_loaded"},
                   "fastest": {"routing": "fastest"}, "hash": {"routing": "hash"}}[mode]
        pool = system.pool(Echo, size=1, **options)
        target = pool.members()[0] if mode == "ref" else pool
        if mode == "hash":  # a key per call (its hashing is part of the cost)
            for i in range(50):
                pool.echo(i, key=i).result()
            for i in range(n):
                pool.echo(i, key=i).result()
            return
        for i in range(50):  # warm: channels open, caches filled
            target.echo(i).result()
        for i in range(n):
            target.echo(i).result()


def total(path: Path) -> int:
    for line in path.read_text().splitlines():
        m = re.match(r"(?:summary|totals): (\d+)", line)
        if m:
            return int(m.group(1))
    raise ValueError(path)


def report(prefix: str, lo: int, hi: int) -> None:
    per = {}
    for mode in MODES:
        a, b = Path(f"{prefix}.{mode}.{lo}"), Path(f"{prefix}.{mode}.{hi}")
        if a.exists() and b.exists():
            per[mode] = (total(b) - total(a)) / (hi - lo)
    for mode, ins in per.items():
        ratio = ins / per["ref"] if "ref" in per else float("nan")
        print(f"{mode:14s} {ins:10.0f} instructions/call  {ratio:.3f}x ref")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        run(sys.argv[1], int(sys.argv[2]))
