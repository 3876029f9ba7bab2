"""Job graphs: actorq side by side with ProcessPoolExecutor, multiprocessing, loky, Dask (Ray).

    python benchmarks/bench_graph.py [--quick] [--results-dir DIR]

Four benchmarks, every peer measured in the same run (ratios, not absolute figures, are
what to read on a shared machine):

1. no-op tasks: 10k tasks of a function that returns its argument, submitted and
   gathered; tasks/s. Peers: ``ProcessPoolExecutor.submit``, ``multiprocessing.Pool
   .apply_async``, loky's reusable executor, Dask distributed (``client.submit``, 2k
   tasks: it is two orders of magnitude slower). Every pool is started and warmed first.
2. a layered DAG: 400 tasks of 5 ms of CPU (20 layers of 20), each depending on two of
   the layer before; wall time. The reference is two bare processes doing the same 400
   x 5 ms of CPU with no dependencies (``mp.Pool.map``, one chunk each): the goal is at
   least 97 % of its speed. Peers: a layer-by-layer ``ProcessPoolExecutor`` and loky,
   Dask distributed (``LocalCluster``, 2 processes x 1 thread) and Dask's
   multiprocessing scheduler.
3. 8 MiB numpy arrays between 64 tasks: 32 producers, a tree of 31 additions, one
   sum; wall time and peak memory (PSS of the process tree, plus /dev/shm growth,
   sampled every 20 ms). Peers: Dask processes and Dask distributed.
4. scale: a 100k-node graph (ints, two layers of additions); the scheduler's CPU time
   per task (µs) and the memory per node, against Dask's synchronous scheduler on the
   same graph shape (20k nodes: its per-task time is all overhead).

Ray is reported as not installed unless ``import ray`` works (it is not installed here).
Writes results/graph.json and results/graph.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import multiprocessing
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

import actorq
from actorq.bench import BenchResult, Case, compare, measure, measure_interleaved, write_results

CPU_TASK_SECONDS = 0.005
LAYERS, WIDTH = 20, 20
ARRAY_MIB = 8


# -- task functions (module level: every peer pickles them by reference) -----------------

def noop(x):
    return x


def spin(n, *deps):
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return acc + len(deps)


def spin_many(n, count):
    return sum(spin(n) for _ in range(count))


def make(seed):
    return np.random.default_rng(seed).random(ARRAY_MIB * 1024 * 1024 // 8)


def plus(a, b):
    return a + b


def total(a):
    return float(a.sum())


def calibrate() -> int:
    n = 20_000
    while True:
        t = time.perf_counter()
        spin(n)
        dt = time.perf_counter() - t
        if dt > 0.02:
            return max(1, int(n * CPU_TASK_SECONDS / dt))
        n *= 2


def ray_missing() -> str | None:
    return None if importlib.util.find_spec("ray") else "ray is not installed here"


# -- peak memory sampler ---------------------------------------------------------------------

def _sample_tree(pid, interval, stop, out):
    """In a process of its own (no GIL shared with the scheduler): sample, report the peak."""
    st = os.statvfs("/dev/shm")
    shm0 = (st.f_blocks - st.f_bfree) * st.f_frsize
    me = os.getpid()
    peak = 0
    while True:
        total_pss = 0
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            if p.pid == me:
                continue
            try:
                total_pss += p.memory_full_info().pss
            except psutil.Error:
                continue
        st = os.statvfs("/dev/shm")
        peak = max(peak, total_pss + max(0, (st.f_blocks - st.f_bfree) * st.f_frsize - shm0))
        if stop.wait(interval):
            break
    out.send(peak)


class PeakMemory:
    """Peak of (PSS of this process and its descendants + /dev/shm growth), sampled every
    *interval* seconds by a separate process."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_sample_tree,
                                 args=(os.getpid(), self.interval, self._stop, send))
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.peak = self._recv.recv()
        self._proc.join()
        self._recv.close()


# -- 1. no-op tasks -------------------------------------------------------------------------

def bench_noop(system, pools, n, repeats):
    group = "1. no-op tasks"

    def ours():
        g = actorq.Graph()
        nodes = [g.task(noop, i) for i in range(n)]
        r = system.run(g, workers=2)
        assert r[nodes[-1]] == n - 1

    def ppe():
        futs = [pools["ppe"].submit(noop, i) for i in range(n)]
        assert [f.result() for f in futs][-1] == n - 1

    def mp_pool():
        res = [pools["mp"].apply_async(noop, (i,)) for i in range(n)]
        assert [r.get() for r in res][-1] == n - 1

    def loky_ex():
        futs = [pools["loky"].submit(noop, i) for i in range(n)]
        assert [f.result() for f in futs][-1] == n - 1

    n_dask = max(200, n // 5)

    def dask_dist():
        client = pools["client"]
        futs = [client.submit(noop, i, pure=False) for i in range(n_dask)]
        assert client.gather(futs)[-1] == n_dask - 1

    kw = {"unit": "tasks/s", "group": group}
    out = measure_interleaved([
        Case("actorq system.run", ours, work=n, **kw),
        Case("ProcessPoolExecutor.submit", ppe, work=n, **kw),
        Case("mp.Pool.apply_async", mp_pool, work=n, **kw),
        Case("loky submit", loky_ex, work=n, **kw),
        Case("Dask distributed submit", dask_dist, work=n_dask, note=f"{n_dask} tasks", **kw),
    ], repeats=repeats, warmup=1)
    out += [BenchResult.skip("Ray", ray_missing() or "not run", unit="tasks/s", group=group,
                            higher_is_better=True)]
    verdicts = [compare(out[0], out[1], at_least=3.0, name="no-op tasks/s vs PPE.submit"),
                compare(out[0], out[2], at_least=1.0, name="no-op tasks/s vs mp.Pool"),
                compare(out[0], out[3], name="no-op tasks/s vs loky"),
                compare(out[0], out[4], name="no-op tasks/s vs Dask distributed")]
    return out, verdicts


# -- 2. layered DAG -------------------------------------------------------------------------

def layered_graph(n_spin):
    g = actorq.Graph()
    layer = [g.task(spin, n_spin) for _ in range(WIDTH)]
    for _ in range(LAYERS - 1):
        layer = [g.task(spin, n_spin, layer[i], layer[(i + 1) % WIDTH]) for i in range(WIDTH)]
    return g, layer


def bench_dag(system, pools, n_spin, repeats):
    group = "2. layered DAG, 400 x 5 ms"
    import dask

    def ours():
        g, _last = layered_graph(n_spin)
        r = system.run(g, workers=2)
        assert r.ok

    def bare():
        half = LAYERS * WIDTH // 2
        assert len(pools["mp"].starmap(spin_many, [(n_spin, half)] * 2, chunksize=1)) == 2

    def by_layer(ex):
        def run():
            prev = [ex.submit(spin, n_spin) for _ in range(WIDTH)]
            vals = [f.result() for f in prev]
            for _ in range(LAYERS - 1):
                futs = [ex.submit(spin, n_spin, vals[i], vals[(i + 1) % WIDTH])
                        for i in range(WIDTH)]
                vals = [f.result() for f in futs]
        return run

    def dask_graph():
        d = dask.delayed(spin)
        layer = [d(n_spin, dask_key_name=f"s-0-{i}") for i in range(WIDTH)]
        for k in range(1, LAYERS):
            layer = [d(n_spin, layer[i], layer[(i + 1) % WIDTH], dask_key_name=f"s-{k}-{i}")
                     for i in range(WIDTH)]
        return layer

    def dask_dist():
        dask.compute(*dask_graph(), scheduler=pools["client"])

    def dask_mp():
        dask.compute(*dask_graph(), scheduler="processes", num_workers=2)

    kw = {"unit": "s", "group": group}
    out = measure_interleaved([
        Case("actorq system.run", ours, **kw),
        Case("two bare processes (no deps)", bare, **kw),
        Case("PPE layer by layer", by_layer(pools["ppe"]), **kw),
        Case("loky layer by layer", by_layer(pools["loky"]), **kw),
        Case("Dask distributed", dask_dist, **kw),
        Case("Dask processes", dask_mp, **kw),
    ], repeats=repeats, warmup=1)
    out += [BenchResult.skip("Ray", ray_missing() or "not run", unit="s", group=group)]
    verdicts = [compare(out[1], out[0], at_least=0.97,
                        name="DAG: actorq speed / bare processes' speed")]
    verdicts += [compare(peer, out[0], name=f"DAG: actorq speed / {peer.name}")
                 for peer in out[2:6]]
    return out, verdicts


# -- 3. large arrays ------------------------------------------------------------------------

def bench_arrays(system, pools, repeats):
    group = f"3. {ARRAY_MIB} MiB arrays, 64 tasks"
    import dask

    def ours():
        g = actorq.Graph()
        level = [g.task(make, i) for i in range(32)]
        while len(level) > 1:
            level = [g.task(plus, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        end = g.task(total, level[0])
        return system.run(g, workers=2)[end]

    def dask_graph():
        level = [dask.delayed(make)(i) for i in range(32)]
        while len(level) > 1:
            level = [dask.delayed(plus)(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        return dask.delayed(total)(level[0])

    cases = {"actorq system.run": ours,
             "Dask processes": lambda: dask_graph().compute(scheduler="processes",
                                                            num_workers=2),
             "Dask distributed": lambda: dask_graph().compute(scheduler=pools["client"])}
    want = total(sum(make(i) for i in range(32)))
    out, mem = [], []
    for name, fn in cases.items():
        times, peaks = [], []
        for i in range(repeats + 1):
            with PeakMemory() as pm:
                t = time.perf_counter()
                got = fn()
                dt = time.perf_counter() - t
            assert abs(got - want) < 1e-6 * abs(want), (name, got, want)
            if i:  # the first run warms up
                times.append(dt)
                peaks.append(pm.peak / 2**20)
        out.append(BenchResult(name, "s", tuple(times), group=group + ": wall"))
        mem.append(BenchResult(name, "MiB", tuple(peaks), group=group + ": peak memory"))
    out.append(BenchResult.skip("Ray", ray_missing() or "not run", unit="s",
                                group=group + ": wall"))
    verdicts = [compare(out[i], out[0], name=f"arrays: actorq speed / {out[i].name}")
                for i in (1, 2)]
    verdicts += [compare(mem[0], mem[i], name=f"arrays: actorq peak memory / {mem[i].name}")
                 for i in (1, 2)]
    return out + mem, verdicts


# -- 4. scale -------------------------------------------------------------------------------

def big_graph(n):
    g = actorq.Graph()
    half = n // 2
    layer = [g.task(noop, i) for i in range(half)]
    l2 = [g.task(plus, layer[i], layer[i + 1]) for i in range(0, half, 2)]
    [g.task(plus, l2[i], l2[i + 1]) for i in range(0, len(l2) - 1, 2)]
    while len(g) < n:
        g.task(noop, len(g))
    return g


def bench_scale(system, n, repeats):
    group = f"4. scheduler overhead, {n // 1000}k nodes"
    import dask

    overhead, wall = [], []
    for _ in range(repeats):
        g = big_graph(n)
        t = time.perf_counter()
        r = system.run(g)
        wall.append(1e6 * (time.perf_counter() - t) / n)
        assert r.ok
        overhead.append(1e6 * r.stats.scheduler_seconds / n)
        del g, r
    # memory, traced (deterministic, unlike RSS) in one more, untimed round
    tracemalloc.start()
    g = big_graph(n)
    graph_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    r = system.run(g)
    run_peak = tracemalloc.get_traced_memory()[1] - graph_bytes
    tracemalloc.stop()
    del g, r

    n_dask = n // 5

    def dask_sync():
        d = dask.delayed
        half = n_dask // 2
        layer = [d(noop)(i) for i in range(half)]
        l2 = [d(plus)(layer[i], layer[i + 1]) for i in range(0, half, 2)]
        l3 = [d(plus)(l2[i], l2[i + 1]) for i in range(0, len(l2) - 1, 2)]
        t = time.perf_counter()
        dask.compute(*l3, *layer[-(n_dask - half - len(l2) - len(l3)):], scheduler="sync")
        return 1e6 * (time.perf_counter() - t) / n_dask

    ours = BenchResult("actorq scheduler CPU per task", "µs", tuple(overhead), group=group)
    ours_wall = BenchResult("actorq wall per task (2 workers)", "µs", tuple(wall), group=group)
    mem = [BenchResult("actorq graph memory per node", "B", (graph_bytes / n,), group=group,
                       note="tracemalloc, after building"),
           BenchResult("actorq scheduler memory per pending node", "B", (run_peak / n,),
                       group=group, note="tracemalloc peak of the run above the graph")]
    peer = measure(dask_sync, self_timed=True, name="Dask sync scheduler per task",
                   unit="µs", repeats=repeats, warmup=0, group=group,
                   note=f"{n_dask} nodes, same shape")
    return [ours, ours_wall, *mem, peer], [
        compare(ours, peer, name="scheduler µs per task: actorq / Dask sync")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 3
    n_noop = 2000 if args.quick else 10_000
    n_big = 20_000 if args.quick else 100_000
    n_spin = calibrate()
    print(f"5 ms of CPU = spin({n_spin}) here; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    from distributed import Client, LocalCluster
    from loky import get_reusable_executor

    ctx = multiprocessing.get_context("fork")
    results, verdicts = [], []
    with (actorq.ActorSystem() as system,
          concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ppe,
          ctx.Pool(2) as mp_pool,
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=None) as cluster, Client(cluster) as client):
        pools = {"ppe": ppe, "mp": mp_pool, "loky": get_reusable_executor(2),
                 "client": client}
        for name, run in [("no-op tasks", lambda: bench_noop(system, pools, n_noop, repeats)),
                          ("layered DAG", lambda: bench_dag(system, pools, n_spin, repeats)),
                          ("arrays", lambda: bench_arrays(system, pools, repeats)),
                          ("scale", lambda: bench_scale(system, n_big, repeats))]:
            t = time.perf_counter()
            out, ver = run()
            results += out
            verdicts += ver
            print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
            for v in ver:
                print(f"  {v.name}: {v.value:.3g}x ({v.low:.3g}-{v.high:.3g})"
                      + (f" target {v.target}" if v.target else ""), flush=True)
    out_dir = Path(args.results_dir)
    meta = {"quick": args.quick, "repeats": repeats, "noop_tasks": n_noop,
            "big_graph_nodes": n_big, "spin_for_5ms": n_spin,
            "load_average_at_start": os.getloadavg()[0],
            "note": "shared 2-core machine under load from other work: read the ratios"}
    write_results(results, out_dir / "graph.json", out_dir / "graph.md", verdicts=verdicts,
                  title="actorq job graphs against peers", meta=meta)
    print(f"wrote {out_dir / 'graph.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
