"""The ``graph`` suite: job graphs beside ProcessPoolExecutor, multiprocessing, loky, Dask.

    actorq bench graph [--quick] [--set KEY=VALUE] [--repeats N] [--out DIR]

Four parts (``--set parts=noop,dag,arrays,scale``), every peer measured in the same run
(ratios, not absolute figures, are what to read on a shared machine):

1. no-op tasks: ``noop_tasks`` tasks of a function that returns its argument, submitted
   and gathered; tasks/s. Peers: ``ProcessPoolExecutor.submit``, ``multiprocessing.Pool
   .apply_async``, loky's reusable executor, Dask distributed (``client.submit``, a fifth
   of the tasks: it is two orders of magnitude slower). Every pool is started and warmed
   first.
2. a layered DAG: ``layers`` x ``width`` tasks of ``task_ms`` of CPU, each depending on
   two of the layer before; wall time. A task is ``spin(n)`` (``actorq.bench.cpuwork``),
   ``n`` calibrated once on the CPU clock to ``task_ms`` (or given: ``--set spin=N``,
   e.g. the one another run used: the report's parameters hold it); the results note
   the CPU the tasks measured. The reference is two bare processes doing the
   same CPU work with no dependencies (``mp.Pool.starmap``, one chunk each): the goal is
   at least 97 % of its speed, measured (actorq and the bare processes interleaved) while
   no other peer is alive, as the median of the rounds' ratios (each round runs both
   sides one right after the other: the VM's speed drifts over seconds). Then, in a
   second group with those peers started: a layer-by-layer ``ProcessPoolExecutor``
   and loky, Dask distributed (``LocalCluster``, 2 processes x 1 thread), Dask's
   multiprocessing scheduler and Ray, against actorq measured again beside them.
3. ``array_mib`` MiB numpy arrays: ``arrays`` producers, a tree of additions, one sum;
   wall time and peak memory (PSS of the process tree, plus /dev/shm growth, sampled
   every 20 ms by a process of its own). Peers: Dask processes and Dask distributed.
4. scale: a ``big_nodes``-node graph (ints, two layers of additions); the scheduler's CPU
   time per task (µs) and the memory per node, against Dask's synchronous scheduler on
   the same graph shape (a fifth of the nodes: its per-task time is all overhead).

Peers are chosen with ``--set peers=ppe,mp,loky,dask,distributed,ray``; one whose library
is not installed is reported as skipped. Each part starts the peers it measures and stops
them after it, so an idle cluster never runs beside another part, and before each part
(and the DAG's target phase) waits until no process a previous part started still
uses CPU (``actorq.bench.quiet``; one still busy after 15 s is named in the report's
``busy_strays``). Ray runs as a local
cluster of 2 CPUs (``ray.init(num_cpus=2)``): tasks by ``ray.remote``, dependencies as
object refs, large arrays through its object store; like Dask distributed, its no-op run
is a fifth of the tasks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import importlib.util
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

import actorq
from actorq._errors import BenchError
from actorq.bench.cpuwork import calibrate, cpu_per_task, spin, spin_many
from actorq.bench.quiet import WAIT, Strays
from actorq.bench.suite import Suite, SuiteOptions, SuiteReport
from actorq.bench.timing import (
    BenchResult,
    Case,
    Verdict,
    compare,
    compare_paired,
    measure,
    measure_interleaved,
)

FULL: dict[str, Any] = {"repeats": 3, "noop_tasks": 10_000, "layers": 20, "width": 20,
                        "task_ms": 5.0, "spin": 0, "arrays": 32, "array_mib": 8,
                        "big_nodes": 100_000,
                        "parts": "noop,dag,arrays,scale",
                        "peers": "ppe,mp,loky,dask,distributed,ray"}
QUICK: dict[str, Any] = {**FULL, "repeats": 2, "noop_tasks": 1000, "layers": 6, "width": 6,
                         "arrays": 8, "array_mib": 2, "big_nodes": 10_000,
                         "peers": "ppe,mp,loky,dask"}
PARTS = ("noop", "dag", "arrays", "scale")
PEERS = {"ppe": None, "mp": None, "loky": "loky", "dask": "dask", "distributed": "distributed",
         "ray": "ray"}

Array = npt.NDArray[np.float64]


# -- task functions (module level: every peer pickles them by reference) -----------------

def noop(x: int) -> int:
    return x


def make(seed: int, mib: int) -> Array:
    return np.random.default_rng(seed).random(mib * 1024 * 1024 // 8)


def plus(a: Any, b: Any) -> Any:
    return a + b


def total(a: Array) -> float:
    return float(a.sum())


def peer_missing(key: str, chosen: set[str],
                 failed: Mapping[str, str] | None = None) -> str | None:
    """Why the peer *key* is not measured in this run, or None. *failed*: the peers
    whose cluster did not start (``open_pools``), with why."""
    if key not in chosen:
        return "not selected (--set peers=...)"
    if failed and key in failed:
        return f"{key} did not start ({failed[key]}): peer not measured"
    module = PEERS[key]
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module}): peer not measured"
    return None


# -- peak memory sampler ---------------------------------------------------------------------

def _shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _sample_tree(pid: int, interval: float, stop: Any, out: Connection) -> None:
    """In a process of its own (no GIL shared with the scheduler): sample, report the peak."""
    shm0 = _shm_used()
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
        peak = max(peak, total_pss + max(0, _shm_used() - shm0))
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
        send.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self.peak = int(self._recv.recv())
        finally:
            self._proc.join()
            self._recv.close()


# -- the peers' pools ------------------------------------------------------------------------

@contextlib.contextmanager
def open_pools(chosen: set[str]) -> Iterator[dict[str, Any]]:
    """Start and warm every chosen, installed pool; stop them all after. A cluster that
    does not start (Ray or Dask's, timing out on a loaded machine) is left out and
    named in ``pools["failed"]``, not an error of the whole run."""
    ctx = multiprocessing.get_context("fork")
    failed: dict[str, str] = {}
    pools: dict[str, Any] = {"failed": failed}
    with contextlib.ExitStack() as stack:
        if peer_missing("ppe", chosen) is None:
            pools["ppe"] = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx))
            list(pools["ppe"].map(noop, range(4)))
        if peer_missing("mp", chosen) is None:
            pools["mp"] = stack.enter_context(ctx.Pool(2))
            pools["mp"].map(noop, range(4))
        if peer_missing("loky", chosen) is None:
            loky = importlib.import_module("loky")
            pools["loky"] = loky.get_reusable_executor(2)
            stack.callback(pools["loky"].shutdown, wait=True, kill_workers=True)
            list(pools["loky"].map(noop, range(4)))
        if peer_missing("distributed", chosen) is None:
            distributed = importlib.import_module("distributed")
            try:
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True,
                    dashboard_address=None))
                pools["client"] = stack.enter_context(distributed.Client(cluster))
            except Exception as exc:
                failed["distributed"] = _why(exc)
        if peer_missing("dask", chosen) is None:
            pools["dask"] = importlib.import_module("dask")
        if peer_missing("ray", chosen) is None:
            ray = importlib.import_module("ray")
            try:
                ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False)
            except Exception as exc:
                failed["ray"] = _why(exc)
                ray.shutdown()  # whatever it started
            else:
                stack.callback(ray.shutdown)
                pools["ray"] = ray
                ray.get([ray.remote(noop).remote(i) for i in range(4)])
        yield pools


def _why(exc: BaseException) -> str:
    """An exception, on one short line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _skip(name: str, reason: str | None, unit: str, group: str,
          higher: bool = False) -> BenchResult:
    return BenchResult.skip(name, reason or "not measured", unit=unit, group=group,
                            higher_is_better=higher)


# -- 1. no-op tasks -------------------------------------------------------------------------

def run_noop_graph(system: actorq.ActorSystem, n: int,
                   journal: str | None = None) -> actorq.GraphResult:
    """Part 1's run: *n* independent no-op tasks on two workers (also profiled by
    ``benchmarks/graph_cpu.py``); BenchError if a result is wrong."""
    g = actorq.Graph()
    nodes = [g.task(noop, i) for i in range(n)]
    r = system.run(g, workers=2, journal=journal)
    if r[nodes[-1]] != n - 1:
        msg = "actorq: wrong result"
        raise BenchError(msg)
    return r


def bench_noop(system: actorq.ActorSystem, pools: Mapping[str, Any], p: Mapping[str, Any],
               chosen: set[str]) -> tuple[list[BenchResult], list[Verdict]]:
    n, group = p["noop_tasks"], "1. no-op tasks"
    n_dask = max(200, n // 5)

    def ours() -> None:
        run_noop_graph(system, n)

    def by_submit(ex: Any) -> Callable[[], None]:
        def run() -> None:
            futs = [ex.submit(noop, i) for i in range(n)]
            if [f.result() for f in futs][-1] != n - 1:
                msg = "wrong result"
                raise BenchError(msg)
        return run

    def mp_pool() -> None:
        res = [pools["mp"].apply_async(noop, (i,)) for i in range(n)]
        if [r.get() for r in res][-1] != n - 1:
            msg = "mp.Pool: wrong result"
            raise BenchError(msg)

    def ray_noop() -> None:
        ray = pools["ray"]
        remote = ray.remote(noop)
        if ray.get([remote.remote(i) for i in range(n_dask)])[-1] != n_dask - 1:
            msg = "Ray: wrong result"
            raise BenchError(msg)

    def dask_dist() -> None:
        client = pools["client"]
        futs = [client.submit(noop, i, pure=False) for i in range(n_dask)]
        if client.gather(futs)[-1] != n_dask - 1:
            msg = "Dask distributed: wrong result"
            raise BenchError(msg)

    kw: dict[str, Any] = {"unit": "tasks/s", "group": group}
    peers = [("ppe", Case("ProcessPoolExecutor.submit", by_submit(pools.get("ppe")), work=n,
                          **kw)),
             ("mp", Case("mp.Pool.apply_async", mp_pool, work=n, **kw)),
             ("loky", Case("loky submit", by_submit(pools.get("loky")), work=n, **kw)),
             ("distributed", Case("Dask distributed submit", dask_dist, work=n_dask,
                                  note=f"{n_dask} tasks", **kw)),
             ("ray", Case("Ray remote tasks", ray_noop, work=n_dask, note=f"{n_dask} tasks",
                          **kw))]
    cases = [Case("actorq system.run", ours, work=n, **kw)]
    skipped: list[BenchResult] = []
    for key, case in peers:
        why = peer_missing(key, chosen, pools.get("failed"))
        if why is None:
            cases.append(case)
        else:
            skipped.append(_skip(case.name, why, "tasks/s", group, True))
    out = measure_interleaved(cases, repeats=p["repeats"], warmup=1)
    goals = {"ProcessPoolExecutor.submit": 3.0, "mp.Pool.apply_async": 1.0}
    verdicts = [compare(out[0], peer, at_least=goals.get(peer.name),
                        name=f"no-op tasks/s vs {peer.name}") for peer in out[1:]]
    return out + skipped, verdicts


# -- 2. layered DAG -------------------------------------------------------------------------

def layered_graph(n_spin: int, layers: int, width: int) -> actorq.Graph:
    g = actorq.Graph()
    layer = [g.task(spin, n_spin) for _ in range(width)]
    for _ in range(layers - 1):
        layer = [g.task(spin, n_spin, layer[i], layer[(i + 1) % width]) for i in range(width)]
    return g


def bench_dag(system: actorq.ActorSystem, pools: Mapping[str, Any], p: Mapping[str, Any],
              chosen: set[str]) -> tuple[list[BenchResult], list[Verdict]]:
    layers, width = p["layers"], p["width"]
    group = f"2. layered DAG, {layers * width} x {p['task_ms']:g} ms"
    n_spin = p["spin"]  # run_graph calibrated it (once for both phases), or --set spin=
    dask: Any = pools.get("dask")
    task_cpu: dict[str, list[float]] = {"ours": [], "bare": []}  # CPU per task, per run

    def ours() -> None:
        g = layered_graph(n_spin, layers, width)
        r = system.run(g, workers=2)
        if not r.ok:
            msg = "actorq: the DAG failed"
            raise BenchError(msg)
        task_cpu["ours"].append(cpu_per_task(r[node] for node in g.nodes))

    def bare() -> None:
        half = layers * width // 2
        cpu = pools["mp"].starmap(spin_many, [(n_spin, half)] * 2, chunksize=1)
        task_cpu["bare"].append(sum(cpu) / (2 * half))

    def by_layer(key: str) -> Callable[[], None]:
        def run() -> None:
            ex = pools[key]
            vals = [f.result() for f in [ex.submit(spin, n_spin) for _ in range(width)]]
            for _ in range(layers - 1):
                futs = [ex.submit(spin, n_spin, vals[i], vals[(i + 1) % width])
                        for i in range(width)]
                vals = [f.result() for f in futs]
        return run

    def dask_graph() -> list[Any]:
        d = dask.delayed(spin)
        layer = [d(n_spin, dask_key_name=f"s-0-{i}") for i in range(width)]
        for k in range(1, layers):
            layer = [d(n_spin, layer[i], layer[(i + 1) % width], dask_key_name=f"s-{k}-{i}")
                     for i in range(width)]
        return layer

    def dask_dist() -> None:
        dask.compute(*dask_graph(), scheduler=pools["client"])

    def dask_mp() -> None:
        dask.compute(*dask_graph(), scheduler="processes", num_workers=2)

    def ray_dag() -> None:
        ray = pools["ray"]
        remote = ray.remote(spin)
        layer = [remote.remote(n_spin) for _ in range(width)]
        for _ in range(layers - 1):
            layer = [remote.remote(n_spin, layer[i], layer[(i + 1) % width])
                     for i in range(width)]
        ray.get(layer)

    # The target against the bare processes is measured with no other peer alive (an
    # idle Dask or Ray cluster's processes take CPU from whatever runs beside them): the
    # peers' pools of this part are opened only after it (run_graph: ``pools`` holds the
    # bare processes' pool alone while ``target`` is True).
    target = pools.get("target", False)
    kw: dict[str, Any] = {"unit": "s",
                          "group": group if target else f"{group}, with the peers alive"}
    cases = [Case("actorq system.run", ours, **kw)]
    skipped: list[BenchResult] = []
    peers = [("mp", Case("two bare processes (no deps)", bare, **kw))] if target else [
        ("ppe", Case("PPE layer by layer", by_layer("ppe"), **kw)),
        ("loky", Case("loky layer by layer", by_layer("loky"), **kw)),
        ("distributed", Case("Dask distributed", dask_dist, **kw)),
        ("dask", Case("Dask processes", dask_mp, **kw)),
        ("ray", Case("Ray", ray_dag, **kw))]
    for key, case in peers:
        why = peer_missing(key, chosen, pools.get("failed"))
        if why is None:
            cases.append(case)
        else:
            skipped.append(_skip(case.name, why, "s", kw["group"]))
    if len(cases) == 1 and not target:
        return skipped, []  # no peer to compare with
    out = measure_interleaved(cases, repeats=p["repeats"], warmup=1)
    out = [_with_task_cpu(r, task_cpu.get({"actorq system.run": "ours",
                                           "two bare processes (no deps)": "bare"}
                                          .get(r.name, ""), []), n_spin) for r in out]
    verdicts = []
    for peer in out[1:]:
        if peer.name == "two bare processes (no deps)":
            # per round: the two sides ran one after the other (compare_paired)
            verdicts.append(compare_paired(peer, out[0], at_least=0.97,
                                           name="DAG: actorq speed / bare processes' speed"))
        else:
            verdicts.append(compare(peer, out[0], name=f"DAG: actorq speed / {peer.name}"))
    return out + skipped, verdicts


def _with_task_cpu(result: BenchResult, cpu: list[float], n_spin: int) -> BenchResult:
    """*result* noting the CPU its tasks measured (``spin`` returns it), median per run."""
    if not cpu:
        return result
    cpu = sorted(cpu)
    note = (f"spin({n_spin}); CPU per task {cpu[len(cpu) // 2] * 1e3:.2f} ms (runs "
            f"{cpu[0] * 1e3:.2f} .. {cpu[-1] * 1e3:.2f})")
    return dataclasses.replace(result, note=f"{result.note}; {note}" if result.note else note)


# -- 3. large arrays ------------------------------------------------------------------------

def bench_arrays(system: actorq.ActorSystem, pools: Mapping[str, Any], p: Mapping[str, Any],
                 chosen: set[str]) -> tuple[list[BenchResult], list[Verdict]]:
    count, mib = p["arrays"], p["array_mib"]
    group = f"3. {mib} MiB arrays, {2 * count} tasks"
    dask: Any = pools.get("dask")

    def ours() -> float:
        g = actorq.Graph()
        level = [g.task(make, i, mib) for i in range(count)]
        while len(level) > 1:
            level = [g.task(plus, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        end = g.task(total, level[0])
        return float(system.run(g, workers=2)[end])

    def dask_graph() -> Any:
        level = [dask.delayed(make)(i, mib) for i in range(count)]
        while len(level) > 1:
            level = [dask.delayed(plus)(level[i], level[i + 1])
                     for i in range(0, len(level), 2)]
        return dask.delayed(total)(level[0])

    def ray_arrays() -> float:
        ray = pools["ray"]
        add = ray.remote(plus)
        level = [ray.remote(make).remote(i, mib) for i in range(count)]
        while len(level) > 1:
            level = [add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        return float(ray.get(ray.remote(total).remote(level[0])))

    cases: dict[str, Callable[[], float]] = {"actorq system.run": ours}
    skipped: list[BenchResult] = []
    failed = pools.get("failed")
    for key, name, fn in [
            ("ray", "Ray", ray_arrays),
            ("dask", "Dask processes",
             lambda: dask_graph().compute(scheduler="processes", num_workers=2)),
            ("distributed", "Dask distributed",
             lambda: dask_graph().compute(scheduler=pools["client"]))]:
        why = peer_missing(key, chosen, failed) or (peer_missing("dask", chosen, failed)
                                                    if key == "distributed" else None)
        if why is None:
            cases[name] = fn
        else:
            skipped.append(_skip(name, why, "s", group + ": wall"))
    want = total(sum((make(i, mib) for i in range(count)), np.zeros(1)))
    out, mem = [], []
    for name, fn in cases.items():
        times, peaks = [], []
        for i in range(p["repeats"] + 1):
            with PeakMemory() as pm:
                t = time.perf_counter()
                got = fn()
                dt = time.perf_counter() - t
            if abs(got - want) > 1e-6 * abs(want):
                msg = f"{name}: sum {got} instead of {want}"
                raise BenchError(msg)
            if i:  # the first run warms up
                times.append(dt)
                peaks.append(pm.peak / 2**20)
        out.append(BenchResult(name, "s", tuple(times), group=group + ": wall"))
        mem.append(BenchResult(name, "MiB", tuple(peaks), group=group + ": peak memory"))
    verdicts = [compare(peer, out[0], name=f"arrays: actorq speed / {peer.name}")
                for peer in out[1:]]
    verdicts += [compare(mem[0], peer, name=f"arrays: actorq peak memory / {peer.name}")
                 for peer in mem[1:]]
    return out + mem + skipped, verdicts


# -- 4. scale -------------------------------------------------------------------------------

def big_graph(n: int) -> actorq.Graph:
    g = actorq.Graph()
    half = n // 2
    layer = [g.task(noop, i) for i in range(half)]
    l2 = [g.task(plus, layer[i], layer[i + 1]) for i in range(0, half, 2)]
    for i in range(0, len(l2) - 1, 2):
        g.task(plus, l2[i], l2[i + 1])
    while len(g) < n:
        g.task(noop, len(g))
    return g


def bench_scale(system: actorq.ActorSystem, pools: Mapping[str, Any], p: Mapping[str, Any],
                chosen: set[str]) -> tuple[list[BenchResult], list[Verdict]]:
    n, repeats = p["big_nodes"], p["repeats"]
    group = f"4. scheduler overhead, {n // 1000}k nodes"
    overhead, wall = [], []
    for _ in range(repeats):
        g = big_graph(n)
        t = time.perf_counter()
        r = system.run(g)
        wall.append(1e6 * (time.perf_counter() - t) / n)
        if not r.ok:
            msg = "actorq: the big graph failed"
            raise BenchError(msg)
        overhead.append(1e6 * r.stats.scheduler_seconds / n)
        del g, r
    # memory, traced (deterministic, unlike RSS) in one more, untimed round
    tracemalloc.start()
    try:
        g = big_graph(n)
        graph_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        r = system.run(g)
        run_peak = tracemalloc.get_traced_memory()[1] - graph_bytes
    finally:
        tracemalloc.stop()
    del g, r

    ours = BenchResult("actorq scheduler CPU per task", "µs", tuple(overhead), group=group)
    ours_wall = BenchResult("actorq wall per task (2 workers)", "µs", tuple(wall), group=group)
    mem = [BenchResult("actorq graph memory per node", "B", (graph_bytes / n,), group=group,
                       note="tracemalloc, after building"),
           BenchResult("actorq scheduler memory per pending node", "B", (run_peak / n,),
                       group=group, note="tracemalloc peak of the run above the graph")]
    n_dask = n // 5
    why = peer_missing("dask", chosen, pools.get("failed"))
    if why is not None:
        return [ours, ours_wall, *mem, _skip("Dask sync scheduler per task", why, "µs", group)], []
    dask: Any = pools["dask"]

    def dask_sync() -> float:
        d = dask.delayed
        half = n_dask // 2
        layer = [d(noop)(i) for i in range(half)]
        l2 = [d(plus)(layer[i], layer[i + 1]) for i in range(0, half, 2)]
        l3 = [d(plus)(l2[i], l2[i + 1]) for i in range(0, len(l2) - 1, 2)]
        t = time.perf_counter()
        dask.compute(*l3, *layer[-(n_dask - half - len(l2) - len(l3)):], scheduler="sync")
        return float(1e6 * (time.perf_counter() - t) / n_dask)

    peer = measure(dask_sync, self_timed=True, name="Dask sync scheduler per task",
                   unit="µs", repeats=repeats, warmup=0, group=group,
                   note=f"{n_dask} nodes, same shape")
    return [ours, ours_wall, *mem, peer], [
        compare(ours, peer, name="scheduler µs per task: actorq / Dask sync")]


BENCHES = {"noop": bench_noop, "dag": bench_dag, "arrays": bench_arrays, "scale": bench_scale}


def _choice(text: str, known: tuple[str, ...] | list[str], key: str) -> set[str]:
    chosen = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(chosen - set(known))
    if unknown:
        msg = (f"parameter {key}: unknown {', '.join(unknown)}; choose from "
               f"{', '.join(known)}")
        raise BenchError(msg)
    return chosen


def run_graph(options: SuiteOptions) -> SuiteReport:
    """Every chosen part, its peers interleaved; return the report."""
    p = options.parameters(FULL, QUICK, ("repeats",))
    parts = _choice(p["parts"], PARTS, "parts")
    chosen = _choice(p["peers"], list(PEERS), "peers")
    count = p["arrays"]
    if "arrays" in parts and (count < 2 or count & (count - 1)):
        msg = f"parameter arrays={count}: a power of two of at least 2 (a tree of additions)"
        raise BenchError(msg)
    for key in ("noop_tasks", "layers", "width", "array_mib", "big_nodes", "repeats"):
        if p[key] < 1:
            msg = f"parameter {key}={p[key]}: at least 1"
            raise BenchError(msg)
    if "dag" in parts and p["spin"] < 1:
        p["spin"] = calibrate(p["task_ms"] / 1e3)  # recorded in the report's parameters
    results: list[BenchResult] = []
    verdicts: list[Verdict] = []
    options.say(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    busy_before: dict[str, str] = {}  # a phase -> a previous part's process still busy
    with actorq.ActorSystem() as system:
        strays = Strays()  # the system's processes are not strays
        for name in PARTS:
            if name not in parts:
                continue
            options.say(name)
            t = time.perf_counter()
            # each part starts its peers and stops them after it: none runs beside
            # another part; the DAG's target phase has only the bare processes' pool
            phases: list[tuple[set[str], dict[str, Any]]] = [(chosen, {})]
            if name == "dag":
                phases = [(chosen & {"mp"}, {"target": True}), (chosen - {"mp"}, {})]
            for wanted, extra in phases:
                busy = strays.wait_quiet()  # a previous part's peer still winding down
                if busy:
                    busy_before[f"{name}{' (target)' if extra else ''}"] = busy
                    options.say(f"{name}: still busy after {WAIT:g} s: {busy}")
                with open_pools(wanted) as pools:
                    out, ver = BENCHES[name](system, {**pools, **extra}, p, wanted)
                results += out
                verdicts += ver
            options.say(f"{name}: {time.perf_counter() - t:.1f} s")
    title = "actorq job graphs against peers" + (" (quick)" if options.quick else "")
    return SuiteReport("graph", title, results, verdicts,
                       meta={"parameters": p, "busy_strays": busy_before,
                             "note": "on a shared machine under load: read the ratios"})


SUITE = Suite("graph", "job graphs (system.run): no-op tasks/s, a layered DAG, large arrays, "
              "100k-node scheduler overhead; vs PPE, mp.Pool, loky, Dask", run_graph,
              repeat_keys=("repeats",))
