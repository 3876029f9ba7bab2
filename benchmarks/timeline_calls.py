"""Where a synchronous call's wall time goes: each round trip classified by who parked.

    python benchmarks/timeline_calls.py [--calls N] [--rounds R]

Runs R rounds, each N sequential ``ref.echo(i).result()`` calls and N Pipe echoes (the
messaging suite's two round-trip cases, the same actor and peer), alternated, and for
every call records:

- its wall time (ns);
- whether the calling thread slept (a voluntary context switch of this thread:
  ``getrusage(RUSAGE_THREAD).ru_nvcsw`` before and after; it spun the reply in otherwise);
- whether the actor was woken by its doorbell (its control block's ``C_WAKEUPS``: it had
  parked, the call found it off the CPU);
- whether the actor's reply doorbell, held back for the spinning caller, was rung after
  all (``C_HELD_RUNG``: the caller did not read it within ``REPLY_GRACE``).

Prints p50/p99 of each side, the share of each class and the p50/p99 inside each class.
The two probes per call (two ``getrusage`` calls, ~1 µs) are on the actorq side only;
the Pipe side is timed as the suite times it. The load and the spread between rounds
say how much to trust a figure (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import Counter
from typing import Any

import actorq
from actorq._core.protocol import C_HELD, C_HELD_RUNG
from actorq._transport.channel import C_WAKEUPS
from actorq.bench.peers import PipeEcho
from actorq.bench.suites.messaging import Sink


def pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000 if s else float("nan")


def actorq_calls(system: Any, ref: Any, n: int) -> list[tuple[int, int, int, int]]:
    hub = system._runtime.hub
    slots = hub.outbound[ref.actor_id].ctl.slots
    echo, clock, usage, who = ref.echo, time.perf_counter_ns, resource.getrusage, \
        resource.RUSAGE_THREAD
    out = []
    for i in range(n):
        w0, r0, sw0 = slots[C_WAKEUPS], slots[C_HELD_RUNG], usage(who).ru_nvcsw
        start = clock()
        back = echo(i).result(timeout=10.0)
        t = clock() - start
        sw1 = usage(who).ru_nvcsw
        out.append((t, sw1 - sw0, slots[C_WAKEUPS] - w0, slots[C_HELD_RUNG] - r0))
        if back != i:
            raise RuntimeError(back)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with actorq.ActorSystem() as system, PipeEcho() as pipe:
        ref = system.spawn(Sink, name="echo")
        ref.echo(0).result(timeout=10.0)
        pipe.round_trips(200)
        actorq_calls(system, ref, 200)
        held0 = system._runtime.hub.outbound[ref.actor_id].ctl.slots[C_HELD]
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            recs = actorq_calls(system, ref, args.calls)
            pipe_t = pipe.round_trips(args.calls)
            times = [x[0] for x in recs]
            p50, p99 = pct(times, 0.5), pct(times, 0.99)
            q50, q99 = pct(pipe_t, 0.5), pct(pipe_t, 0.99)
            print(f"round {r}  load {load:4.1f}  actorq p50 {p50:6.1f} p99 {p99:7.1f} us | "
                  f"Pipe p50 {q50:6.1f} p99 {q99:7.1f} us | ratio p50 {p50 / q50:.3f} "
                  f"p99 {p99 / q99:.3f}")
            classes: dict[str, list[int]] = {}
            for t, slept, woke, rung in recs:
                key = (("caller slept" if slept else "caller spun") + ", "
                       + ("actor woken" if woke else "actor spinning")
                       + (", held reply rung" if rung else ""))
                classes.setdefault(key, []).append(t)
            for key, ts in sorted(classes.items(), key=lambda kv: -len(kv[1])):
                print(f"    {len(ts) / len(recs):6.1%}  {key:48s} p50 {pct(ts, 0.5):7.1f} "
                      f"p99 {pct(ts, 0.99):7.1f} us")
            slow = sorted(recs)[int(0.98 * len(recs)):]
            c = Counter((s > 0, w > 0) for _, s, w, _ in slow)
            print(f"    slowest 2%: caller slept {sum(v for k, v in c.items() if k[0])}, "
                  f"actor woken {sum(v for k, v in c.items() if k[1])} of {len(slow)}")
        held = system._runtime.hub.outbound[ref.actor_id].ctl.slots[C_HELD] - held0
        print(f"replies held for a spinning caller: {held}")


if __name__ == "__main__":
    main()
