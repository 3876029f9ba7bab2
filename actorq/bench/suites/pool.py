"""The ``pool`` suite: pools, circuits, retries and the Executor, beside their peers.

    actorq bench pool [--quick] [--set KEY=VALUE] [--repeats N] [--out DIR]

Four parts (``--set parts=routing,faults,executor,call_cost``), each reported as ratios
measured in the same run:

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
   installed); ``map(chunksize=100)`` against ``ProcessPoolExecutor.map``.
4. call cost: sequential calls through a one-member pool against direct calls to that
   member's ref, interleaved in small batches (median of the batch means; the target:
   a pool call costs at most 1.2x a ref call), for each configuration
   ``benchmarks/callgrind_pool_call.py`` counts: defaults, least_loaded, fastest,
   retry, circuit + retry, hash with a new key each call and with 64 keys repeated,
   ``timeout=``.

Every wait is bounded. Figures depend on the machine's load: on a shared machine they
are noisy, so compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import importlib.util
import json
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import cloudpickle

import actorq
from actorq._errors import BenchError
from actorq.bench.suite import Suite, SuiteOptions, SuiteReport
from actorq.bench.timing import BenchResult, Verdict, check, compare

WAIT = 60.0
PARTS = ("routing", "faults", "executor", "call_cost")
FULL: dict[str, Any] = {"parts": ",".join(PARTS), "repeats": 3, "routing_calls": 2000,
                        "fault_calls": 20_000, "call_batches": 40, "calls_per_batch": 500,
                        "submit_tasks": 10_000, "map_items": 100_000}
QUICK: dict[str, Any] = {**FULL, "repeats": 2, "routing_calls": 400, "fault_calls": 4000,
                         "call_batches": 20, "calls_per_batch": 200, "submit_tasks": 3000,
                         "map_items": 20_000}


class Sleeper(actorq.Actor):
    """A member whose calls take ``delay`` seconds (set per member)."""

    def __init__(self) -> None:
        self.delay = 0.001

    def set_delay(self, delay: float) -> None:
        self.delay = delay

    def work(self, x: int) -> int:
        time.sleep(self.delay)
        return x


# The faulty member's error: a builtin type, so that it pickles by reference from any
# worker (the peers' workers do not get this module by value).
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
            "throughput": {k: {"median": med[k], "min": min(v), "max": max(v), "samples": v}
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
    if out[-1] != 2 * (n - 1):
        msg = f"map: last item {out[-1]} instead of {2 * (n - 1)}"
        raise BenchError(msg)
    return n / (time.perf_counter() - start)


def bench_executor(n: int, map_n: int, repeats: int) -> dict[str, Any]:
    workers = 2
    rates: dict[str, list[float]] = {"actorq.Executor": [], "ProcessPoolExecutor": [],
                                     "multiprocessing.Pool.apply_async": []}
    maps: dict[str, list[float]] = {"actorq.Executor": [], "ProcessPoolExecutor": []}
    loky = importlib.import_module("loky") if importlib.util.find_spec("loky") else None
    if loky is not None:
        rates["loky"] = []
    for _ in range(repeats):
        with actorq.Executor(workers) as ex:
            rates["actorq.Executor"].append(submit_rate(ex, n))
            maps["actorq.Executor"].append(map_rate(ex, map_n, 100))
        with cf.ProcessPoolExecutor(workers) as ppe:
            rates["ProcessPoolExecutor"].append(submit_rate(ppe, n))
            maps["ProcessPoolExecutor"].append(map_rate(ppe, map_n, 100))
        with multiprocessing.get_context("forkserver").Pool(workers) as mp_pool:
            rates["multiprocessing.Pool.apply_async"].append(apply_async_rate(mp_pool, n))
        if loky is not None:
            lex = loky.get_reusable_executor(workers)
            rates["loky"].append(submit_rate(lex, n))
            lex.shutdown(wait=True, kill_workers=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    mmed = {k: statistics.median(v) for k, v in maps.items()}
    ours = med["actorq.Executor"]
    return {"tasks": n, "workers": workers, "repeats": repeats,
            "submit_per_second": {k: {"median": med[k], "min": min(v), "max": max(v),
                                      "samples": v} for k, v in rates.items()},
            "submit_vs": {k: ours / v for k, v in med.items() if k != "actorq.Executor"},
            "map_items": map_n, "map_chunksize": 100,
            "map_per_second": {k: {"median": mmed[k], "min": min(v), "max": max(v),
                                   "samples": v} for k, v in maps.items()},
            "map_vs_process_pool_executor":
                mmed["actorq.Executor"] / mmed["ProcessPoolExecutor"]}


# -- 4. call cost ---------------------------------------------------------------------------


# The pool configurations whose call is weighed against a ref call: (label, the pool's
# options, the calls' keys: None for none, 0 a new int each call, n the ints 0..n-1 in turn).
# The same as benchmarks/callgrind_pool_call.py's modes (instructions), by wall clock here;
# that harness takes REPEAT_KEYS from here.
REPEAT_KEYS = 64
CALL_COST_CONFIGS: tuple[tuple[str, dict[str, Any], int | None], ...] = (
    ("defaults: no retry, no circuit", {}, None),
    ("least_loaded", {"routing": "least_loaded"}, None),
    ("fastest", {"routing": "fastest"}, None),
    ("retry", {"retry": actorq.Retry()}, None),
    ("circuit + retry", {"circuit": actorq.CircuitBreaker(), "retry": actorq.Retry()}, None),
    ("hash, a new key each call", {"routing": "hash"}, 0),
    (f"hash, {REPEAT_KEYS} keys repeated", {"routing": "hash"}, REPEAT_KEYS),
    ("timeout=", {"timeout": WAIT}, None),
)


def _batch(target: Any, start: int, n: int, keys: int | None) -> None:
    """*n* sequential calls of ``target.echo`` (with ``key=`` if *keys* is not None)."""
    echo = target.echo
    if keys is None:
        for i in range(start, start + n):
            echo(i).result(timeout=WAIT)
    elif keys == 0:
        for i in range(start, start + n):
            echo(i, key=i).result(timeout=WAIT)
    else:
        for i in range(start, start + n):
            echo(i, key=i % keys).result(timeout=WAIT)


def bench_call_cost(system: actorq.ActorSystem, batches: int, per_batch: int) -> dict[str, Any]:
    """Wall time per sequential call of each pool configuration (``CALL_COST_CONFIGS``)
    against a direct call of its one member's ref, their batches interleaved (and the
    caller process's CPU time per call, in the JSON only: a synchronous waiter spins on
    its reply ring for a while, so it is close to the wall time)."""
    out: dict[str, Any] = {"batches": batches, "calls_per_batch": per_batch}
    for label, options, keys in CALL_COST_CONFIGS:
        pool = system.pool(Echo, size=1, **options)
        ref = pool.members()[0]
        _batch(ref, 0, 1, None)
        _batch(pool, 0, 1, keys)
        wall: dict[str, list[float]] = {"ref": [], "pool": []}
        cpu: dict[str, list[float]] = {"ref": [], "pool": []}
        for b in range(batches):
            order = ((("ref", ref, None), ("pool", pool, keys)) if b % 2 else
                     (("pool", pool, keys), ("ref", ref, None)))
            for name, target, k in order:
                c0, w0 = time.process_time(), time.perf_counter()
                _batch(target, b * per_batch, per_batch, k)
                wall[name].append((time.perf_counter() - w0) / per_batch)
                cpu[name].append((time.process_time() - c0) / per_batch)
        d, p = statistics.median(wall["ref"]), statistics.median(wall["pool"])
        cd, cp = statistics.median(cpu["ref"]), statistics.median(cpu["pool"])
        ratios = sorted(pw / rw for pw, rw in zip(wall["pool"], wall["ref"], strict=True))
        out[label] = {"direct_us": d * 1e6, "pool_us": p * 1e6, "ratio": p / d,
                      "direct_min_us": min(wall["ref"]) * 1e6,
                      "pool_min_us": min(wall["pool"]) * 1e6,
                      "ratio_of_minima": min(wall["pool"]) / min(wall["ref"]),
                      # each batch of the pool against its neighbouring ref batch
                      "batch_ratio_p25": ratios[len(ratios) // 4],
                      "batch_ratio_p75": ratios[(3 * len(ratios)) // 4],
                      "direct_cpu_us": cd * 1e6, "pool_cpu_us": cp * 1e6,
                      "cpu_ratio": cp / cd,
                      "direct_samples_us": [x * 1e6 for x in wall["ref"]],
                      "pool_samples_us": [x * 1e6 for x in wall["pool"]]}
        pool.stop()
    return out


# -- report ---------------------------------------------------------------------------------


def results_of(res: Mapping[str, Any]) -> tuple[list[BenchResult], list[Verdict]]:
    """The figures and ratios of the parts that ran."""
    out: list[BenchResult] = []
    verdicts: list[Verdict] = []
    if "routing" in res:
        r, group = res["routing"], "1. routing, one member 10x slower"
        by = {k: BenchResult(f"pool {k}", "calls/s", tuple(v["samples"]),
                             higher_is_better=True, group=group,
                             note=f"{r['window']} calls in flight")
              for k, v in r["throughput"].items()}
        out += by.values()
        verdicts += [compare(by["fastest"], by["round_robin"], at_least=1.6,
                             name="routing: fastest / round_robin throughput"),
                     compare(by["least_loaded"], by["round_robin"],
                             name="routing: least_loaded / round_robin throughput")]
    if "faults" in res:
        f, group = res["faults"], "2. faults: a raising member, a member SIGKILLed"
        ppe = f["process_pool_executor"]
        ours = BenchResult("pool calls succeeded (circuit + retry)", "%",
                           (100 * f["success_rate"],), higher_is_better=True, group=group,
                           note=f"{f['calls']} calls, {f['kills']} kills")
        peer = BenchResult("ProcessPoolExecutor tasks succeeded", "%",
                           (100 * ppe["success_rate"],), higher_is_better=True, group=group,
                           note=f"{ppe['broken_process_pool']} BrokenProcessPool")
        retries = BenchResult("pool retries / calls", "%", (100 * f["retry_share"],),
                              group=group, note=f"budget refusals {f['budget_refusals']}")
        refusals = BenchResult("pool retry budget refusals", "calls",
                               (float(f["budget_refusals"]),), group=group)
        out += [ours, peer, retries, refusals]
        verdicts += [check(ours, at_least=99.9, name="faults: calls succeeded"),
                     check(refusals, at_most=0.0, name="faults: retries within the budget"),
                     compare(ours, peer, name="faults: succeeded / ProcessPoolExecutor's")]
    if "executor" in res:
        e, group = res["executor"], "3. Executor"
        subs = {k: BenchResult(f"{k} no-op submit", "tasks/s", tuple(v["samples"]),
                               higher_is_better=True, group=group,
                               note=f"{e['tasks']} tasks, {e['workers']} workers")
                for k, v in e["submit_per_second"].items()}
        maps = {k: BenchResult(f"{k} map chunksize={e['map_chunksize']}", "items/s",
                               tuple(v["samples"]), higher_is_better=True, group=group,
                               note=f"{e['map_items']} items")
                for k, v in e["map_per_second"].items()}
        out += [*subs.values(), *maps.values()]
        goals = {"ProcessPoolExecutor": 3.0, "multiprocessing.Pool.apply_async": 1.0}
        verdicts += [compare(subs["actorq.Executor"], r, at_least=goals.get(k),
                             name=f"Executor no-op submit/s / {k}")
                     for k, r in subs.items() if k != "actorq.Executor"]
        verdicts.append(compare(maps["actorq.Executor"], maps["ProcessPoolExecutor"],
                                at_least=1.0,
                                name="Executor map(chunksize=100) / ProcessPoolExecutor"))
    if "call_cost" in res:
        c, group = res["call_cost"], "4. call cost, sequential, one member"
        for label, v in c.items():
            if not isinstance(v, dict):
                continue
            note = f"{label}; median of batch means"
            ref = BenchResult(f"ref call ({label})", "µs", tuple(v["direct_samples_us"]),
                              group=group, note=note)
            pool = BenchResult(f"pool call ({label})", "µs", tuple(v["pool_samples_us"]),
                               group=group, note=note)
            out += [ref, pool]
            verdicts.append(compare(pool, ref, at_most=1.2,
                                    name=f"pool call / ref call, {label}"))
    return out, verdicts


def fault_section(res: Mapping[str, Any]) -> list[str]:
    if "faults" not in res:
        return []
    f = res["faults"]
    detail = {k: f[k] for k in ("calls", "kills", "succeeded", "failed", "errors", "retries",
                                "budget_refusals", "circuit_open_rejections")}
    return ["## Faults, in detail\n\n"
            f"- the pool (circuit + retry): `{json.dumps(detail)}`\n"
            "- ProcessPoolExecutor with the same faults: "
            f"`{json.dumps(f['process_pool_executor'])}`\n"]


def run_pool(options: SuiteOptions) -> SuiteReport:
    """Every chosen part; return the report."""
    p = options.parameters(FULL, QUICK, ("repeats",))
    parts = {k.strip() for k in p["parts"].split(",") if k.strip()}
    unknown = sorted(parts - set(PARTS))
    if unknown:
        msg = f"parameter parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}"
        raise BenchError(msg)
    for key in ("repeats", "routing_calls", "fault_calls", "call_batches", "calls_per_batch",
                "submit_tasks", "map_items"):
        if p[key] < 1:
            msg = f"parameter {key}={p[key]}: at least 1"
            raise BenchError(msg)
    res: dict[str, Any] = {}
    with actorq.ActorSystem(call_timeout=WAIT) as system:
        if "routing" in parts:
            options.say("routing")
            res["routing"] = bench_routing(system, p["routing_calls"], p["repeats"])
        if "faults" in parts:
            options.say("faults")
            res["faults"] = bench_faults(system, p["fault_calls"])
        if "call_cost" in parts:
            options.say("call cost")
            res["call_cost"] = bench_call_cost(system, p["call_batches"],
                                               p["calls_per_batch"])
    if "executor" in parts:
        options.say("executor")
        res["executor"] = bench_executor(p["submit_tasks"], p["map_items"], p["repeats"])
    results, verdicts = results_of(res)
    title = "Pool benchmarks" + (" (quick)" if options.quick else "")
    return SuiteReport("pool", title, results, verdicts,
                       meta={"parameters": p,
                             "note": "on a shared machine under load: read the ratios"},
                       extra={"pool": res}, sections=fault_section(res))


SUITE = Suite("pool", "pools: routing under a slow member, circuit + retry under faults "
              "(vs PPE), Executor submit/map (vs PPE, mp.Pool, loky), pool call cost",
              run_pool, repeat_keys=("repeats",))

# Ship this module's actor classes by value (as for a script's own classes), so that a
# member process (a restart) does not import this module and actorq.bench first.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
