"""Many actors: how long N actors take to start, what each costs, what idling costs.

    python benchmarks/bench_scale.py [--quick] [--sizes 100,400,1000] [--results-dir DIR]

For each N (default 100, 400, 1000; ``--quick``: 100, 400), in a fresh system with the
default configuration (forkserver, one warm spare), one after the other:

- spawn: N ``system.spawn(Echo)`` calls (``time.perf_counter``), then ``wait_ready`` on
  every ref: the wall time from the first spawn until the last actor is ready (the
  issue 15 target: 1000 in at most 10 s on the 2-core development box);
- answer: one call to every actor, all answered (checked, not only timed);
- USS per actor: ``psutil``'s unique set size of every actor process (sampled: at most
  50), median, in MiB; the rings are shared memory and are not in it;
- idle CPU: the CPU time (user + system) the user process and every actor process use
  over ``IDLE_SECONDS`` with nothing to do, as a fraction of one core (``cpu_times``
  before and after), and the machine's load average meanwhile.

The machine is measured as it is: on a shared box the spawn time is mostly other
processes' load (the load average before and after each size is in the report).
Writes results/scale.json and results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

import actorq

RESULTS = Path(__file__).resolve().parent / "results"
READY_TIMEOUT = 600.0  # every wait is bounded: a wedged start fails the run
IDLE_SECONDS = 3.0
USS_SAMPLE = 50
TARGET_SECONDS_1000 = 10.0


class Echo(actorq.Actor):
    """The actor started N times: answers with what it is given."""

    def echo(self, x: int) -> int:
        return x


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of *procs* (those that are gone count 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def one_size(n: int) -> dict[str, Any]:
    """Start *n* actors in a fresh system; time it, call each once, measure memory/idle."""
    row: dict[str, Any] = {"n": n, "load_average_before": list(os.getloadavg())}
    with actorq.ActorSystem() as system:
        t0 = time.perf_counter()
        refs = [system.spawn(Echo) for _ in range(n)]
        t1 = time.perf_counter()
        for ref in refs:
            system.wait_ready(ref, timeout=READY_TIMEOUT)
        t2 = time.perf_counter()
        replies = [ref.echo(i) for i, ref in enumerate(refs)]
        answered = sum(r.result(timeout=READY_TIMEOUT) == i for i, r in enumerate(replies))
        t3 = time.perf_counter()
        pids = [system.pid_of(ref) for ref in refs]
        procs = [psutil.Process(pid) for pid in pids if pid is not None]
        uss = []
        for p in procs[:: max(1, len(procs) // USS_SAMPLE)][:USS_SAMPLE]:
            try:
                uss.append(p.memory_full_info().uss / 2**20)
            except psutil.Error:
                pass
        me = psutil.Process()
        everyone = [me, *procs]
        c0, w0 = cpu_seconds(everyone), time.perf_counter()
        time.sleep(IDLE_SECONDS)  # measuring idle: nothing to wait for but time
        c1, w1 = cpu_seconds(everyone), time.perf_counter()
        row.update(
            spawn_calls_s=t1 - t0, all_ready_s=t2 - t0, per_actor_ms=(t2 - t0) / n * 1e3,
            answered=answered, call_all_s=t3 - t2,
            uss_mib_median=statistics.median(uss) if uss else None, uss_samples=len(uss),
            system_uss_mib=me.memory_full_info().uss / 2**20,
            idle_cpu_cores=(c1 - c0) / (w1 - w0),
            idle_cpu_per_actor_pct=(c1 - c0) / (w1 - w0) / n * 100,
        )
    row["load_average_after"] = list(os.getloadavg())
    return row


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown report."""
    lines = ["# actorq scale benchmark", "", "## Machine and run", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "## Results", "",
              "| N | spawn calls (s) | all ready (s) | per actor (ms) | answered | "
              "USS per actor (MiB, median) | system USS (MiB) | idle CPU (cores) | "
              "load before → after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        uss = "-" if r["uss_mib_median"] is None else f"{r['uss_mib_median']:.2f}"
        lines.append(
            f"| {r['n']} | {r['spawn_calls_s']:.2f} | {r['all_ready_s']:.2f} | "
            f"{r['per_actor_ms']:.1f} | {r['answered']}/{r['n']} | {uss} | "
            f"{r['system_uss_mib']:.0f} | {r['idle_cpu_cores']:.3f} | "
            f"{r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f} |")
    big = [r for r in rows if r["n"] == 1000]
    if big:
        met = big[0]["all_ready_s"] <= TARGET_SECONDS_1000
        lines += ["", f"Target (issue 15): 1000 actors ready in ≤ {TARGET_SECONDS_1000:.0f} s: "
                  f"{big[0]['all_ready_s']:.1f} s, {'met' if met else 'not met'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 400 only")
    parser.add_argument("--sizes", help="comma-separated actor counts")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [100, 400] if args.quick else [100, 400, 1000])
    started = time.time()
    rows = []
    for n in sizes:
        rows.append(one_size(n))
        print(json.dumps(rows[-1]), flush=True)
    from actorq.bench import code_version, machine_info

    meta = {**machine_info(), "code": code_version(Path(__file__).resolve().parent.parent),
            "sizes": sizes, "wall_seconds": round(time.time() - started, 1),
            "config": "defaults (forkserver, warm_spares=1, ring_size 1 MiB)"}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "scale.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    (args.results_dir / "scale.md").write_text(render(rows, meta))
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
