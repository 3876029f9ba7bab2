"""Where the layered DAG's wall time goes: per run, against two bare processes.

    python benchmarks/graph_dag.py [REPEATS] [--spin N]   # interleaved with the bare processes
    valgrind --tool=callgrind python benchmarks/graph_dag.py --runs N --spin N

The first form runs the benchmark's DAG (400 tasks x 5 ms of CPU, two dependencies
each, ``actorq bench graph``'s part 2, the same task function and calibration:
``actorq.bench.cpuwork``) and the bare-process reference alternately (every other
repeat the bare processes first) and prints, per repeat:

- both wall times and their speed ratio, and the CPU each task measured (``spin``
  returns it), in actorq's workers and in the bare processes;
- the CPU of the user's process (getrusage), per task, the batches sent (and the tasks
  fused into them) and the CPU of the system's loop thread per batch;
- ``start``: from ``system.run`` to the first task's start (validation, set-up, the
  first dispatch: both workers idle); ``tail``: from the end of the last task to the
  return of ``system.run``;
- per worker, from its ``/proc/<pid>/schedstat``: ``wait``, the time it was runnable
  but off the CPU (another process had the core: the user's process, the other worker,
  anything else on the machine), and ``idle``, the time it was neither running nor
  runnable (waiting for work or a reply: what the scheduler can cut); and its CPU
  outside the tasks (``over``: the messages of its batches);
- each worker's gaps between two of its tasks, split into ``queued`` ones (the next
  task had already been sent) and ``starved`` ones (sent only after the previous one
  ended).

Then the medians and the load average. ``--spin N`` fixes the task's loop count (the
suite prints the one it calibrated), so that two programs run the same tasks.
Instruction counts of the user's process are repeatable where times are not: run
``--runs 0 --spin N`` and ``--runs 2 --spin N`` under callgrind (with the interpreter's
real binary, not a pyenv shim; ``--spin``: a calibration under valgrind would make the
tasks 50 times too short) and divide the difference of the totals by 800. ``--runs``
prints the batches of each run (instructions per batch), and does without
``os.pidfd_open``, which valgrind 3.19 does not know (no actor process would start).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any

import actorq
from actorq._graph import pool as _graph_pool
from actorq._graph import scheduler as _scheduler
from actorq.bench.cpuwork import calibrate, cpu_per_task, spin_many
from actorq.bench.suites.graph import layered_graph, noop

LAYERS, WIDTH = 20, 20
TASKS = LAYERS * WIDTH
_sent: dict[int, float] = {}


def _record_sends() -> None:
    """Note when each task was sent (a private hook, for this probe only)."""
    send = _scheduler.Scheduler._send

    def _send(self: Any, worker: Any, tids: list[int]) -> bool:
        now = time.monotonic()
        for t in tids:
            _sent[t] = now
        return send(self, worker, tids)

    _scheduler.Scheduler._send = _send  # type: ignore[method-assign]


def _loop_cpu(system: actorq.ActorSystem) -> float:
    """The CPU seconds of the system's loop thread (where the scheduler runs) so far."""
    box: list[float] = []
    done = threading.Event()

    def read() -> None:
        box.append(time.thread_time())
        done.set()

    system._loop().call_soon_threadsafe(read)
    done.wait(60)
    return box[0] if box else 0.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker_pids(system: actorq.ActorSystem) -> list[int]:
    pool = _graph_pool._pools.get(system)
    pids = [system.pid_of(w.ref) for w in pool.workers] if pool is not None else []
    return [p for p in pids if p]


def _schedstat(pids: list[int]) -> dict[int, tuple[float, float]]:
    """Per pid: (seconds on the CPU, seconds runnable but waiting for it)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                run, wait, _ = f.read().split()
        except OSError:
            continue
        out[pid] = (int(run) / 1e9, int(wait) / 1e9)
    return out


def _gaps(result: actorq.GraphResult) -> tuple[list[float], list[float]]:
    per: dict[int, list[tuple[float, float, int]]] = {}
    for node, ts in result.stats.tasks.items():
        per.setdefault(ts.worker, []).append((ts.start, ts.end, node.index))
    queued: list[float] = []
    starved: list[float] = []
    for tasks in per.values():
        tasks.sort()
        for (_, end, _), (start, _, nxt) in itertools.pairwise(tasks):
            (starved if _sent.get(nxt, 0.0) > end else queued).append(start - end)
    return queued, starved


def _bare(pool: Any, n_spin: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    cpu = pool.starmap(spin_many, [(n_spin, TASKS // 2)] * 2, chunksize=1)
    return time.perf_counter() - t0, sum(cpu) / TASKS


def _q(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    xs = sorted(xs)
    return (f"n={len(xs)} p50={xs[len(xs) // 2] * 1e3:.2f} "
            f"p90={xs[int(len(xs) * 0.9)] * 1e3:.2f} sum={sum(xs) * 1e3:.0f} ms")


def _ours(system: actorq.ActorSystem, n_spin: int) -> dict[str, Any]:
    graph = layered_graph(n_spin, LAYERS, WIDTH)
    pids = _worker_pids(system)
    s0 = _schedstat(pids)
    l0, c0, t0, m0 = _loop_cpu(system), _cpu(), time.perf_counter(), time.monotonic()
    result = system.run(graph, workers=2)
    wall, cpu, m1 = time.perf_counter() - t0, _cpu() - c0, time.monotonic()
    loop_cpu = _loop_cpu(system) - l0
    s1 = _schedstat(pids)
    tasks = result.stats.tasks.values()
    task_cpu = [result[node] for node in graph.nodes]
    workers = []
    for pid in pids:
        if pid in s0 and pid in s1:
            run, wait = (s1[pid][k] - s0[pid][k] for k in (0, 1))
            workers.append((run, wait, max(0.0, wall - run - wait)))
    over = sum(w[0] for w in workers) - sum(task_cpu)
    return {"wall": wall, "cpu": cpu, "batches": result.stats.batches, "workers": workers,
            "loop_cpu": loop_cpu, "fused": result.stats.extra.get("fused", 0),
            "task_cpu": cpu_per_task(task_cpu), "over": over,
            "start": min(ts.start for ts in tasks) - m0,
            "tail": m1 - max(ts.end for ts in tasks), "gaps": _gaps(result)}


def _line(r: dict[str, Any], bare: float, bare_cpu: float) -> str:
    queued, starved = r["gaps"]
    ws = "; ".join(f"wait {w * 1e3:.0f} idle {i * 1e3:.0f}" for _, w, i in r["workers"])
    return (f"actorq {r['wall']:.3f} s, bare {bare:.3f} s, speed ratio {bare / r['wall']:.3f}; "
            f"task CPU {r['task_cpu'] * 1e3:.2f} ms (bare {bare_cpu * 1e3:.2f}); "
            f"user CPU {r['cpu'] * 1e3:.0f} ms ({r['cpu'] / TASKS * 1e6:.0f} µs/task); "
            f"batches {r['batches']} ({r['fused']} tasks fused), loop thread "
            f"{r['loop_cpu'] / max(1, r['batches']) * 1e6:.0f} µs/batch; "
            f"start {r['start'] * 1e3:.1f} ms, tail "
            f"{r['tail'] * 1e3:.1f} ms; workers: {ws} ms, CPU outside tasks "
            f"{r['over'] * 1e3:.0f} ms; gaps queued {_q(queued)}; starved {_q(starved)}")


def main(argv: list[str]) -> None:
    n_spin = int(argv[argv.index("--spin") + 1]) if "--spin" in argv else calibrate(0.005)
    if "--runs" in argv:  # under callgrind: no bare processes, no printing per task
        runs = int(argv[argv.index("--runs") + 1])
        with actorq.ActorSystem() as system:
            system.run(layered_graph(n_spin, LAYERS, WIDTH), workers=2)  # warm
            batches = [system.run(layered_graph(n_spin, LAYERS, WIDTH), workers=2)
                       .stats.batches for _ in range(runs)]
        print(f"batches per run: {batches}")
        return
    repeats = int(argv[0]) if argv and argv[0].isdigit() else 5
    print(f"spin({n_spin}): 5 ms of CPU as calibrated; load {os.getloadavg()[0]:.1f}",
          flush=True)
    _record_sends()
    ctx = multiprocessing.get_context("fork")
    rows = []
    with ctx.Pool(2) as pool, actorq.ActorSystem() as system:
        pool.map(noop, range(4))
        for rep in range(repeats + 1):
            _sent.clear()
            if rep % 2:  # every other repeat the bare processes go first
                bare, bare_cpu = _bare(pool, n_spin)
            r = _ours(system, n_spin)
            if not rep % 2:
                bare, bare_cpu = _bare(pool, n_spin)
            if not rep:
                continue  # warm-up
            rows.append((bare / r["wall"], r["cpu"], r["task_cpu"], bare_cpu))
            print(_line(r, bare, bare_cpu), flush=True)
    ratios = sorted(row[0] for row in rows)
    print(f"speed ratio median {statistics.median(ratios):.3f} "
          f"({ratios[0]:.3f} .. {ratios[-1]:.3f}); user CPU per task "
          f"{statistics.median(row[1] for row in rows) / TASKS * 1e6:.0f} µs; task CPU "
          f"{statistics.median(row[2] for row in rows) * 1e3:.2f} ms (bare "
          f"{statistics.median(row[3] for row in rows) * 1e3:.2f}); "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
