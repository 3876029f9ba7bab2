"""Per-task CPU of ``system.run`` for 10k no-op tasks: the figure to profile and cut.

    python benchmarks/graph_cpu.py [REPEATS]            # times and CPU per task
    python benchmarks/graph_cpu.py --profile            # cProfile of both threads
    python benchmarks/graph_cpu.py --journal [REPEATS]  # each run with a fresh journal
    valgrind --tool=callgrind python benchmarks/graph_cpu.py --runs N

The first form prints, per repeat, tasks/s, the CPU time of the whole user process per
task (graph building, validation, scheduling, the hub's I/O, the result) and the
scheduler's own CPU per task (``stats.scheduler_seconds``). Timing on a shared machine
is noisy; instruction counts are not: run ``--runs 0`` and ``--runs 2`` under callgrind
(with the interpreter's real binary, not a pyenv shim) and halve the difference of the
two totals for the instructions of one 10k-task run, start-up cancelled out.

The run is the graph suite's no-op part (``actorq bench graph --set parts=noop``:
``run_noop_graph`` in actorq/bench/suites/graph.py), so what is profiled here is what
that suite measures against its peers; this script only adds the CPU figures, the
profile and a loop for callgrind.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time

import actorq
from actorq.bench.suites.graph import FULL, run_noop_graph

N: int = FULL["noop_tasks"]
JOURNALS: list[str] = []  # --journal: a folder for one fresh journal file per run


def run_once(system: actorq.ActorSystem, n: int) -> actorq.GraphResult:
    if not JOURNALS:
        return run_noop_graph(system, n)
    path = os.path.join(JOURNALS[0], f"run-{len(JOURNALS)}.db")
    JOURNALS.append(path)
    return run_noop_graph(system, n, journal=path)


def timed(system: actorq.ActorSystem, repeats: int) -> None:
    rows = []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = run_once(system, N)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append((N / wall, cpu / N * 1e6, result.stats.scheduler_seconds / N * 1e6))
    for rate, proc, sched in rows:
        print(f"{rate:9,.0f} tasks/s   process CPU {proc:6.2f} us/task   "
              f"scheduler {sched:5.2f} us/task")

    def median(k: int) -> float:
        return sorted(r[k] for r in rows)[len(rows) // 2]

    print(f"median: {median(0):,.0f} tasks/s, process CPU {median(1):.2f} us/task, "
          f"scheduler {median(2):.2f} us/task")


def profiled(system: actorq.ActorSystem) -> None:
    loop = system._loop()  # the scheduler runs on the system's loop thread
    on_loop, here = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
    switched = threading.Event()

    def switch(enable: bool) -> None:
        on_loop.enable() if enable else on_loop.disable()
        switched.set()

    loop.call_soon_threadsafe(switch, True)
    switched.wait()
    here.enable()
    for _ in range(3):
        run_once(system, N)
    here.disable()
    switched.clear()
    loop.call_soon_threadsafe(switch, False)
    switched.wait()
    for name, prof in (("caller's thread", here), ("system's loop", on_loop)):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        print(f"== {name} (CPU time, 3 runs of {N} tasks)\n{out.getvalue()}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--journal"]:
        argv = argv[1:]
        JOURNALS.append(tempfile.mkdtemp(prefix="graph-cpu-"))
    try:
        with actorq.ActorSystem() as system:
            run(system, argv)
    finally:
        if JOURNALS:
            shutil.rmtree(JOURNALS[0], ignore_errors=True)


def run(system: actorq.ActorSystem, argv: list[str]) -> None:
    run_once(system, 2000)  # workers up, caches warm
    if argv[:1] == ["--profile"]:
        profiled(system)
    elif argv[:1] == ["--runs"]:
        for _ in range(int(argv[1])):
            run_once(system, N)
    else:
        timed(system, int(argv[0]) if argv else 7)


if __name__ == "__main__":
    main(sys.argv[1:])
