"""Pools, circuits, retries and the Executor: actorq side by side with its peers.

    python benchmarks/bench_pool.py [--quick] [--results-dir DIR]

Four benchmarks, each reported as ratios measured in the same run:

1. routing: four members, one ten times slower (its handler sleeps 10 ms, the others
   1 ms), a fixed number of calls in flight; throughput of ``fastest`` and
   ``least_loaded`` against ``round_robin`` (target: fastest >= 1.6x round robin).
2. faults: four members, one raising on every call and one SIGKILLed every 200 calls;
   the share of calls that succeed with a circuit and retries (target >= 99.9 %), the
   retries against the budget; side by side, a ``ProcessPoolExecutor`` given the same
   faulty share (every fourth task raises, a worker is SIGKILLed every 200 tasks): what
   it does (it breaks: ``BrokenProcessPool``).
3. Executor: no-op ``submit`` throughput (submit N, wait for all) against
   ``ProcessPoolExecutor``, ``multiprocessing.Pool.apply_async`` and loky (when
   installed); ``map(chunksize=...)`` against ``ProcessPoolExecutor.map``.
4. call cost: sequential calls through a one-member pool against direct calls to that
   member's ref, interleaved in small batches (median of the batch means; the target:
   a pool call costs at most 1.2x a ref call).

Prints the tables and writes results/pool.json and results/pool.md. Every wait is
bounded. Figures depend on the machine's load: on a shared machine they are noisy, so
compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import actorq

RESULTS = Path(__file__).resolve().parent / "results"
WAIT = 60.0


class Sleeper(actorq.Actor):
    """A member whose calls take ``delay`` seconds (set per member)."""

    def __init__(self) -> None:
        self.delay = 0.001

    def set_delay(self, delay: float) -> None:
        self.delay = delay

    def work(self, x: int) -> int:
        time.sleep(self.delay)
        return x


# The faulty member's error: a builtin type, so that it pickles by reference from a worker
# of this script (an exception class defined in __main__ would not).
Faulty = ConnectionRefusedError


class Flaky(actorq.Actor):
    """A member that may be set to raise on every call."""

    def __init__(self) -> None:
        self.bad = False

    def set_bad(self) -> None:
        self.bad = True

    def work(self, x: int) -> int:
        if self.bad:
            raise Faulty(x)
        return x

    def pid(self) -> int:
        return os.getpid()


class Echo(actorq.Actor):
    def echo(self, x: int) -> int:
        return x


def noop() -> None:
    return None


def double(x: int) -> int:
    return 2 * x


def faulty_task(i: int) -> int:
    if i % 4 == 3:
        raise Faulty(i)
    if i % 200 == 100:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


# -- 1. routing ------------------------------------------------------------------------------


def run_windowed(pool: Any, calls: int, window: int) -> float:
    """Throughput (calls/s) of *calls* calls with at most *window* in flight."""
    sem = threading.Semaphore(window)
    done = threading.Event()
    left = [calls]
    lock = threading.Lock()

    def finished(_r: Any) -> None:
        sem.release()
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    start = time.perf_counter()
    for i in range(calls):
        if not sem.acquire(timeout=WAIT):
            msg = "routing benchmark: no call finished in time"
            raise TimeoutError(msg)
        pool.work(i).add_done_callback(finished)
    if not done.wait(WAIT):
        msg = "routing benchmark: calls did not finish in time"
        raise TimeoutError(msg)
    return calls / (time.perf_counter() - start)


def bench_routing(system: actorq.ActorSystem, calls: int, repeats: int) -> dict[str, Any]:
    figures: dict[str, list[float]] = {"round_robin": [], "least_loaded": [], "fastest": []}
    for _ in range(repeats):
        for routing in figures:
            pool = system.pool(Sleeper, size=4, routing=routing, oversubscribe=True)
            pool.members()[3].set_delay(0.010).result(timeout=WAIT)
            run_windowed(pool, 40, 8)  # warm-up (and the fastest router's first samples)
            figures[routing].append(run_windowed(pool, calls, 8))
            pool.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    return {"calls_per_repeat": calls, "window": 8, "repeats": repeats,
            "throughput": {k: {"median": med[k], "min": min(v), "max": max(v)}
                           for k, v in figures.items()},
            "fastest_vs_round_robin": med["fastest"] / med["round_robin"],
            "least_loaded_vs_round_robin": med["least_loaded"] / med["round_robin"]}


# -- 2. faults -------------------------------------------------------------------------------


def bench_faults(system: actorq.ActorSystem, calls: int) -> dict[str, Any]:
    pool = system.pool(Flaky, size=4, routing="least_loaded", oversubscribe=True,
                       circuit=actorq.CircuitBreaker(failure_threshold=3, reset_timeout=1.0,
                                                     failure_on=(Faulty,)),
                       retry=actorq.Retry(max_attempts=4, retry_on=(Faulty,),
                                          backoff=actorq.Backoff(initial=0.005, maximum=0.1)),
                       max_restarts=10_000, within=1.0)
    members = pool.members()
    members[0].set_bad().result(timeout=WAIT)
    victim = members[1]
    ok = failed = 0
    errors: dict[str, int] = {}
    window: list[Any] = []
    start = time.perf_counter()
    kills = 0
    for i in range(calls):
        if i % 200 == 100:
            pid = system.pid_of(victim)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        window.append(pool.work(i))
        if len(window) >= 32:
            ok, failed = _drain(window, ok, failed, errors)
    ok, failed = _drain(window, ok, failed, errors)
    elapsed = time.perf_counter() - start
    stats = pool.statistics()
    pool.stop()
    ppe = ppe_faults(calls)
    return {"calls": calls, "kills": kills, "succeeded": ok, "failed": failed, "errors": errors,
            "success_rate": ok / calls, "seconds": elapsed,
            "retries": stats.retries, "retry_share": stats.retries / calls,
            "budget_refusals": stats.budget_refusals,
            "circuit_open_rejections": stats.circuit_open_rejections,
            "member_failures": {m.name: m.failures for m in stats.members},
            "process_pool_executor": ppe}


def _drain(window: list[Any], ok: int, failed: int, errors: dict[str, int]) -> tuple[int, int]:
    for r in window:
        try:
            r.result(timeout=WAIT)
            ok += 1
        except Exception as exc:
            failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    window.clear()
    return ok, failed


def ppe_faults(calls: int) -> dict[str, Any]:
    """ProcessPoolExecutor with the same faulty share: count what it does."""
    ok = raised = broken = 0
    first_broken = None
    with cf.ProcessPoolExecutor(4) as ex:
        futures = []
        refused = 0
        for i in range(calls):
            try:
                futures.append(ex.submit(faulty_task, i))
            except cf.process.BrokenProcessPool:
                refused += 1  # broke while we were still submitting: submit raises
        for i, f in enumerate(futures):
            try:
                f.result(timeout=WAIT)
                ok += 1
            except cf.process.BrokenProcessPool:
                broken += 1
                first_broken = i if first_broken is None else first_broken
            except Faulty:
                raised += 1
    return {"tasks": calls, "submitted": len(futures), "submit_refused": refused,
            "succeeded": ok, "raised": raised,
            "broken_process_pool": broken, "first_broken_task": first_broken,
            "success_rate": ok / calls}


# -- 3. executor ----------------------------------------------------------------------------


def submit_rate(ex: Any, n: int) -> float:
    ex.submit(noop).result(timeout=WAIT)
    start = time.perf_counter()
    futures = [ex.submit(noop) for _ in range(n)]
    _done, not_done = cf.wait(futures, timeout=WAIT)
    if not_done:
        msg = "executor benchmark: tasks did not finish in time"
        raise TimeoutError(msg)
    return n / (time.perf_counter() - start)


def apply_async_rate(pool: Any, n: int) -> float:
    pool.apply_async(noop).get(timeout=WAIT)
    start = time.perf_counter()
    results = [pool.apply_async(noop) for _ in range(n)]
    for r in results:
        r.get(timeout=WAIT)
    return n / (time.perf_counter() - start)


def map_rate(ex: Any, n: int, chunksize: int) -> float:
    list(ex.map(double, range(100), chunksize=10))
    start = time.perf_counter()
    out = list(ex.map(double, range(n), chunksize=chunksize))
    assert out[-1] == 2 * (n - 1)
    return n / (time.perf_counter() - start)


def bench_executor(n: int, map_n: int, repeats: int) -> dict[str, Any]:
    workers = 2
    rates: dict[str, list[float]] = {"actorq.Executor": [], "ProcessPoolExecutor": [],
                                     "multiprocessing.Pool.apply_async": []}
    maps: dict[str, list[float]] = {"actorq.Executor": [], "ProcessPoolExecutor": []}
    try:
        import loky  # type: ignore[import-untyped]
    except ImportError:
        loky = None
    if loky is not None:
        rates["loky"] = []
    for _ in range(repeats):
        with actorq.Executor(workers) as ex:
            rates["actorq.Executor"].append(submit_rate(ex, n))
            maps["actorq.Executor"].append(map_rate(ex, map_n, 100))
        with cf.ProcessPoolExecutor(workers) as ex:
            rates["ProcessPoolExecutor"].append(submit_rate(ex, n))
            maps["ProcessPoolExecutor"].append(map_rate(ex, map_n, 100))
        with multiprocessing.get_context("forkserver").Pool(workers) as mp_pool:
            rates["multiprocessing.Pool.apply_async"].append(apply_async_rate(mp_pool, n))
        if loky is not None:
            ex = loky.get_reusable_executor(workers)
            rates["loky"].append(submit_rate(ex, n))
            ex.shutdown(wait=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    mmed = {k: statistics.median(v) for k, v in maps.items()}
    ours = med["actorq.Executor"]
    return {"tasks": n, "workers": workers, "repeats": repeats,
            "submit_per_second": {k: {"median": med[k], "min": min(v), "max": max(v)}
                                  for k, v in rates.items()},
            "submit_vs": {k: ours / v for k, v in med.items() if k != "actorq.Executor"},
            "map_items": map_n, "map_chunksize": 100,
            "map_per_second": {k: {"median": mmed[k], "min": min(v), "max": max(v)}
                               for k, v in maps.items()},
            "map_vs_process_pool_executor":
                mmed["actorq.Executor"] / mmed["ProcessPoolExecutor"]}


# -- 4. call cost ---------------------------------------------------------------------------


def bench_call_cost(system: actorq.ActorSystem, batches: int, per_batch: int) -> dict[str, Any]:
    """Wall time per sequential call (and the caller process's CPU time per call, in the
    JSON only: a synchronous waiter spins on its reply ring for a while, so it is close
    to the wall time)."""
    out: dict[str, Any] = {"batches": batches, "calls_per_batch": per_batch}
    for label, options in (("defaults: no retry, no circuit", {}),
                           ("retry", {"retry": actorq.Retry()}),
                           ("circuit + retry", {"circuit": actorq.CircuitBreaker(),
                                                "retry": actorq.Retry()})):
        pool = system.pool(Echo, size=1, **options)
        ref = pool.members()[0]
        ref.echo(0).result(timeout=WAIT)
        pool.echo(0).result(timeout=WAIT)
        wall: dict[str, list[float]] = {"ref": [], "pool": []}
        cpu: dict[str, list[float]] = {"ref": [], "pool": []}
        for b in range(batches):
            order = (("ref", ref), ("pool", pool)) if b % 2 else (("pool", pool), ("ref", ref))
            for name, target in order:
                c0, w0 = time.process_time(), time.perf_counter()
                for i in range(per_batch):
                    target.echo(i).result(timeout=WAIT)
                wall[name].append((time.perf_counter() - w0) / per_batch)
                cpu[name].append((time.process_time() - c0) / per_batch)
        d, p = statistics.median(wall["ref"]), statistics.median(wall["pool"])
        cd, cp = statistics.median(cpu["ref"]), statistics.median(cpu["pool"])
        out[label] = {"direct_us": d * 1e6, "pool_us": p * 1e6, "ratio": p / d,
                      "direct_min_us": min(wall["ref"]) * 1e6,
                      "pool_min_us": min(wall["pool"]) * 1e6,
                      "ratio_of_minima": min(wall["pool"]) / min(wall["ref"]),
                      "direct_cpu_us": cd * 1e6, "pool_cpu_us": cp * 1e6,
                      "cpu_ratio": cp / cd}
        pool.stop()
    return out


# -- report ---------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    r, f, e, c = res["routing"], res["faults"], res["executor"], res["call_cost"]
    lines = [
        "# Pool benchmarks", "",
        f"- machine: {res['machine']}", f"- when: {res['when']}", f"- mode: {res['mode']}",
        "- a shared, loaded machine: figures are noisy; compare the ratios", "",
        "| Check | Value | Target | Met |", "|---|---|---|---|",
        f"| routing: fastest / round_robin throughput | {r['fastest_vs_round_robin']:.2f}x"
        f" | >= 1.6x | {'yes' if r['fastest_vs_round_robin'] >= 1.6 else 'no'} |",
        f"| routing: least_loaded / round_robin throughput | "
        f"{r['least_loaded_vs_round_robin']:.2f}x | - | - |",
        f"| faults: calls succeeded (circuit + retry) | {100 * f['success_rate']:.2f} %"
        f" | >= 99.9 % | {'yes' if f['success_rate'] >= 0.999 else 'no'} |",
        f"| faults: retries / calls | {100 * f['retry_share']:.1f} % (budget refusals "
        f"{f['budget_refusals']}) | within budget | "
        f"{'yes' if f['budget_refusals'] == 0 else 'no'} |",
        f"| faults: ProcessPoolExecutor, same faulty share | "
        f"{100 * f['process_pool_executor']['success_rate']:.1f} % succeeded, "
        f"{f['process_pool_executor']['broken_process_pool']} BrokenProcessPool | - | - |",
    ]
    for peer, ratio in e["submit_vs"].items():
        target = ">= 3x" if peer == "ProcessPoolExecutor" else (
            ">= 1x" if "apply_async" in peer else "-")
        met = "-" if target == "-" else ("yes" if ratio >= float(target[3:-1]) else "no")
        lines.append(f"| Executor no-op submit/s / {peer} | {ratio:.2f}x | {target} | {met} |")
    mv = e["map_vs_process_pool_executor"]
    lines.append(f"| Executor map(chunksize=100) / ProcessPoolExecutor | {mv:.2f}x | >= 1x |"
                 f" {'yes' if mv >= 1 else 'no'} |")
    for label, v in c.items():
        if isinstance(v, dict):
            lines.append(f"| pool call / ref call, {label}: wall (median; of minima) | "
                         f"{v['ratio']:.2f}x; {v['ratio_of_minima']:.2f}x | <= 1.2x | "
                         f"{'yes' if v['ratio'] <= 1.2 else 'no'} |")

    lines += ["", "## Figures", "",
              "| Benchmark | Median | Range |", "|---|---|---|"]
    for k, v in r["throughput"].items():
        lines.append(f"| routing {k} (calls/s) | {v['median']:,.0f} | {v['min']:,.0f} .. "
                     f"{v['max']:,.0f} |")
    for k, v in e["submit_per_second"].items():
        lines.append(f"| {k} no-op submit (tasks/s) | {v['median']:,.0f} | {v['min']:,.0f} .. "
                     f"{v['max']:,.0f} |")
    for k, v in e["map_per_second"].items():
        lines.append(f"| {k} map chunksize=100 (items/s) | {v['median']:,.0f} | "
                     f"{v['min']:,.0f} .. {v['max']:,.0f} |")
    for label, v in c.items():
        if isinstance(v, dict):
            lines.append(f"| call, {label}: ref / pool wall (µs) | {v['direct_us']:.1f} / "
                         f"{v['pool_us']:.1f} | minima {v['direct_min_us']:.1f} / "
                         f"{v['pool_min_us']:.1f} |")

    lines += ["", "Faults, in detail: " + json.dumps(
        {k: f[k] for k in ("calls", "kills", "succeeded", "failed", "errors", "retries",
                           "budget_refusals", "circuit_open_rejections")}),
        "", "ProcessPoolExecutor with the same faults: "
        + json.dumps(f["process_pool_executor"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--only", choices=("routing", "faults", "executor", "call_cost"),
                        action="append", help="run only these benchmarks")
    args = parser.parse_args(argv)
    q = args.quick
    only = set(args.only or ("routing", "faults", "executor", "call_cost"))
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, "
                           f"{os.cpu_count()} cores, Python {platform.python_version()}",
                           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "mode": "quick" if q else "full"}
    with actorq.ActorSystem(call_timeout=WAIT) as system:
        if "routing" in only:
            res["routing"] = bench_routing(system, 400 if q else 2000, 2 if q else 3)
            print("routing", json.dumps(res["routing"], indent=1), flush=True)
        if "faults" in only:
            res["faults"] = bench_faults(system, 4000 if q else 20000)
            print("faults", json.dumps(res["faults"], indent=1), flush=True)
        if "call_cost" in only:
            res["call_cost"] = bench_call_cost(system, 20 if q else 40, 200 if q else 500)
            print("call_cost", json.dumps(res["call_cost"], indent=1), flush=True)
    if "executor" in only:
        res["executor"] = bench_executor(3000 if q else 10000, 20000 if q else 100000,
                                         2 if q else 3)
        print("executor", json.dumps(res["executor"], indent=1), flush=True)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "pool" if only == {"routing", "faults", "executor", "call_cost"} else \
        "pool-" + "-".join(sorted(only))
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    if only == {"routing", "faults", "executor", "call_cost"}:
        (out / f"{name}.md").write_text(markdown(res))
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
