"""The calling thread's CPU time per call: pool configurations against a ref call.

    python benchmarks/cputime_pool_call.py MODE...     # modes of callgrind_pool_call.py

The same in-process harness as ``callgrind_pool_call.py`` (one member over real rings,
the real ``SystemHub``, no loop thread), timed with ``time.thread_time`` around the
caller's parts of each call only (the call, then ``result()``). Fifteen rounds of 400
calls per configuration, each round's figure divided by the ref call's of the same
round; prints the median and quartiles of those ratios. A quick before/after check
(a minute); on a loaded machine run it alternately on both trees, and prefer the
instruction counts of ``callgrind_pool_call.py --count`` for a claim.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from callgrind_pool_call import make_system_hub, target_of
from msgpath_harness import READ_AHEAD, Harness

ROUNDS, CALLS = 15, 400


def per_call(h: Harness, target: Any, keyed: bool, n: int) -> float:
    """The calling thread's CPU seconds per call, over *n* calls."""
    echo = target.echo
    receiver = h.receiver
    spent = 0.0
    for i in range(n):
        t0 = time.thread_time()
        reply = echo(i, key=i) if keyed else echo(i)
        spent += time.thread_time() - t0
        receiver.drain(READ_AHEAD)  # the member's side: not timed
        if receiver.queue:
            receiver.pump()
        receiver.flush_dirty()
        t0 = time.thread_time()
        reply.result(10.0)
        spent += time.thread_time() - t0
    return spent / n


def main(modes: list[str]) -> None:
    h = Harness(make_system_hub)
    try:
        targets = {m: target_of(h, m) for m in ["ref", *modes]}
        for m, t in targets.items():
            per_call(h, t, m == "hash", 300)  # warm
        ratios: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(ROUNDS):
            ref = per_call(h, targets["ref"], False, CALLS)
            for m in modes:
                ratios[m].append(per_call(h, targets[m], m == "hash", CALLS) / ref)
        for m in modes:
            q1, q2, q3 = statistics.quantiles(ratios[m], n=4)
            print(f"{m:14s} {q2:.3f}x ref  (quartiles {q1:.3f} .. {q3:.3f})", flush=True)
        for t in targets.values():
            if hasattr(t, "halt"):
                t.halt()
    finally:
        h.close()


if __name__ == "__main__":
    main(sys.argv[1:])
