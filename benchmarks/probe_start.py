"""What one actor start costs: page faults and CPU per start, by process.

    python benchmarks/probe_start.py [--actors 60] [--rounds 3] [--start-method forkserver]

Each round starts ``--actors`` actors in a fresh system as one burst (as
``bench_scale.py`` does) and reads, for each actor right after it is ready, its minor
page faults (``/proc/<pid>/stat``: counted from its fork, so every copy-on-write page
it wrote on its way to ready, and every fresh page it took) and its CPU
(``/proc/<pid>/schedstat``); and the CPU of the user's process and of the fork server
over the burst, per start. Medians per round (p10 .. p90 of the actors). Unlike the
wall time, these figures hardly move with the load of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import actorq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scale import READY_TIMEOUT, cpu_seconds, fork_server_pid, minflt


class Idle(actorq.Actor):
    """Started many times; does nothing."""

    def ping(self) -> int:
        return os.getpid()


def spread(values: list[float]) -> str:
    """``median (p10 .. p90)``."""
    if not values:
        return "-"
    cuts = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
    return f"{statistics.median(values):.1f} ({cuts[0]:.1f} .. {cuts[-1]:.1f})"


def one_round(n: int, method: str) -> dict[str, list[float] | float]:
    """Start *n* actors at once; what each start cost."""
    with actorq.ActorSystem(start_method=method) as system:
        system.wait_ready(system.spawn(Idle), timeout=READY_TIMEOUT)  # the spares are up
        me, server = os.getpid(), fork_server_pid() if method == "forkserver" else None
        u0 = cpu_seconds([me])
        f0 = cpu_seconds([server]) if server else 0.0
        refs = [system.spawn(Idle) for _ in range(n)]
        faults, cpu = [], []
        for ref in refs:
            system.wait_ready(ref, timeout=READY_TIMEOUT)
            pid = system.pid_of(ref)
            if pid is not None and (got := minflt(pid)) is not None:
                faults.append(float(got))
                cpu.append(cpu_seconds([pid]) * 1e3)
        u1 = cpu_seconds([me])
        f1 = cpu_seconds([server]) if server else 0.0
    return {"faults": faults, "cpu_ms": cpu, "user_ms": (u1 - u0) / n * 1e3,
            "server_ms": (f1 - f0) / n * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args(argv)
    print(f"load {os.getloadavg()[0]:.1f}; {args.actors} actors per round, "
          f"{args.start_method}")
    print("round | actor faults to ready | actor CPU to ready (ms) | user / fork server "
          "CPU per start (ms)")
    for i in range(args.rounds):
        r = one_round(args.actors, args.start_method)
        print(f"{i + 1} | {spread(r['faults'])} | {spread(r['cpu_ms'])} | "  # type: ignore[arg-type]
              f"{r['user_ms']:.2f} / {r['server_ms']:.2f}", flush=True)
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
