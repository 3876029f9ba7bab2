"""The ``faults`` suite: a small workload under SIGKILL, SIGSTOP, raises and memory overruns.

    actorq bench faults [--quick] [--faults PLAN] [--repeats N] [--out DIR]

Workers (actors under a supervisor without backoff, ``ActorOptions(max_rss=...)``)
handle tasks ``work(task)``: burn a fixed CPU time, then count the task in a ledger (a
file mapping in /dev/shm that every process maps: the workload's own side effect) and
answer with the worker's pid. One driver thread per worker keeps ``depth`` calls in
flight. The plan's faults (default: one of each kind, ``actorq.bench.faults``) hit a
random worker:

    kill   SIGKILL: the call being handled gets ActorCrashed; the queued ones wait for
           the restarted worker (the system owns the mailboxes), so nothing is lost
    stop   SIGSTOP, SIGCONT after the stall: that worker's calls wait
    raise  the worker's next call raises InjectedFault (at the caller), before its work
    oom    the worker grows past max_rss; actorq kills and restarts it (cause "oom")

Afterwards every task is checked against the ledger: *lost* = answered as done but not
counted, or never answered; *duplicated* = counted more than once. actorq promises both
are 0 (a call whose handler died is reported as ActorCrashed, never silently dropped,
and is not run again). The same schedule of kills and stalls runs against a
``concurrent.futures.ProcessPoolExecutor`` of as many workers, used as documented: a
killed worker breaks the executor, every pending future fails with
``BrokenProcessPool`` (counted as reported failures: their work is not done) and a new
executor is made. Repeats are rounds of (actorq phase, executor phase).

``multiprocessing.Pool`` is not the peer here: a worker killed while it holds one of
the pool's queue locks leaves it taken, and the pool (even ``terminate()``) waits on it
forever, which a benchmark cannot clean up after; and the task a killed worker held is
never answered.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cloudpickle

import actorq
from actorq.bench.cpuwork import burn
from actorq.bench.faults import (
    CallRecord,
    FaultEvent,
    FaultPlan,
    InjectedFault,
    Injector,
    fault_effects,
)
from actorq.bench.mapped import MappedFile
from actorq.bench.suite import Plot, Suite, SuiteOptions, SuiteReport
from actorq.bench.timing import BenchResult, Verdict, compare, percentile

MIB = 2**20
REPLY_TIMEOUT = 30.0  # every wait is bounded: a wedged worker fails the run, never hangs it
HEADER = 64  # int64 flag slots before the counts: RAISE + member, OOM + member
RAISE, OOM = 0, 32
CAPACITY = 1 << 20  # tasks one phase may issue (int32 counts: 4 MiB)

FULL: dict[str, Any] = {"workers": 2, "depth": 8, "cost_us": 300.0, "duration_s": 12.0,
                        "interval_s": 0.1, "warmup_s": 1.0, "max_rss_mib": 160,
                        "rounds": 3, "pool_drain_s": 3.0,
                        "plan": "kill@3,stop@5+0.5,raise@7,oom@9"}
QUICK: dict[str, Any] = {**FULL, "duration_s": 3.5, "warmup_s": 0.5, "rounds": 1,
                         "pool_drain_s": 1.0, "plan": "kill@1,stop@1.6+0.3,raise@2.2,oom@2.6"}
ACTORQ, POOL = "actorq", "ProcessPoolExecutor"
COLORS = {ACTORQ: "tab:blue", POOL: "tab:red"}


class Ledger(MappedFile):
    """Flags and per-task counts in a file mapping every worker process maps."""

    SIZE = HEADER * 8 + CAPACITY * 4

    def __init__(self, path: str) -> None:
        super().__init__(path, self.SIZE)
        self.flags = self.keep(self.buf[: HEADER * 8].cast("q"))
        self.counts = self.keep(self.buf[HEADER * 8:].cast("i"))

    @classmethod
    def create(cls) -> Ledger:
        """Make a zero-filled mapping file and map it."""
        return cls(cls.make(cls.SIZE, "bench-ledger"))

    def take(self, slot: int) -> bool:
        """Clear flag *slot*; return whether it was set (only its worker reads it)."""
        if self.flags[slot]:
            self.flags[slot] = 0
            return True
        return False


def overrun(limit: int) -> None:
    """Hold more than *limit* bytes resident until the system kills this process."""
    hog = b"\x01" * (limit + 64 * MIB)  # a bytes literal is written, so it is resident
    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:  # the monitor samples RSS every 50 ms
        time.sleep(0.01)
    msg = f"still alive {REPLY_TIMEOUT}s after passing max_rss with {len(hog)} bytes"
    raise RuntimeError(msg)


class Worker(actorq.Actor):
    """Does a task: its flags first (raise, overrun), then the work, then the count."""

    def __init__(self, path: str, index: int, cost_us: float, limit: int) -> None:
        self.ledger = Ledger(path)
        self.index, self.cost, self.limit = index, cost_us / 1e6, limit

    def work(self, task: int) -> int:
        if self.ledger.take(RAISE + self.index):
            msg = f"injected fault in worker {self.index} at task {task}"
            raise InjectedFault(msg)
        if self.ledger.take(OOM + self.index):
            overrun(self.limit)
        burn(self.cost)
        self.ledger.counts[task] += 1
        return os.getpid()


_POOL_LEDGER: dict[str, Ledger] = {}


def pool_task(task: int, path: str, cost_us: float) -> int:
    """The executor's task: the same work and count as :meth:`Worker.work`."""
    ledger = _POOL_LEDGER.get(path)
    if ledger is None:
        ledger = _POOL_LEDGER[path] = Ledger(path)
    burn(cost_us / 1e6)
    ledger.counts[task] += 1
    return os.getpid()


# -- actorq phase ---------------------------------------------------------------------------

def drive(ref: actorq.ActorRef[Worker], name: str, ids: Callable[[], int], until: float,
          depth: int, t0: float, out: list[CallRecord], outcomes: dict[int, str]) -> None:
    """Keep *depth* calls in flight to one worker until *until*; record every outcome."""
    pending: collections.deque[tuple[int, float, Any]] = collections.deque()
    while True:
        while time.monotonic() < until and len(pending) < depth:
            task = ids()
            if task >= CAPACITY:
                break
            pending.append((task, time.monotonic() - t0, ref.work(task)))
        if not pending:
            return
        task, sent, reply = pending.popleft()
        pid: int | None = None
        try:
            pid = reply.result(timeout=REPLY_TIMEOUT)
            outcome = "ok"
        except InjectedFault:
            outcome = "raised"
        except actorq.ActorCrashed:
            outcome = "crashed"
        except actorq.CallTimeout:
            outcome = "unanswered"
        except Exception:  # anything else is a failure reported to the caller too
            outcome = "failed"
        outcomes[task] = outcome
        out.append(CallRecord(name, sent, time.monotonic() - t0, outcome == "ok", pid))


def sample_memory(system: actorq.ActorSystem, names: Sequence[str], t0: float,
                  until: float, interval: float, out: list[list[float]]) -> None:
    """Every *interval*: [t, rss MiB of each worker] (0 while it has no process)."""
    while time.monotonic() < until:
        actors = system.metrics()["actors"]
        out.append([time.monotonic() - t0,
                    *(actors.get(n, {}).get("rss", 0) / MIB for n in names)])
        time.sleep(interval)


def actorq_phase(p: Mapping[str, Any], plan: FaultPlan) -> dict[str, Any]:
    """One faulted run of the actorq workload; records, events, books, memory."""
    ledger = Ledger.create()
    limit = int(p["max_rss_mib"] * MIB)
    try:
        with actorq.ActorSystem(root_max_restarts=10**6, call_timeout=REPLY_TIMEOUT) as system:
            sup = system.supervisor(max_restarts=10**6, within=1.0,
                                    backoff=actorq.Backoff(initial=0.0, maximum=0.0),
                                    name="bench-faults")
            names = [f"worker-{i}" for i in range(p["workers"])]
            refs = [sup.spawn(Worker, ledger.path, i, p["cost_us"], limit, name=name,
                              actor_options=actorq.ActorOptions(max_rss=limit))
                    for i, name in enumerate(names)]
            for ref in refs:
                system.wait_ready(ref)
            index = {name: i for i, name in enumerate(names)}

            def flag(base: int) -> Callable[[str], None]:
                return lambda name: ledger.flags.__setitem__(base + index[name], 1)

            def members() -> list[tuple[str, int | None]]:
                return [(n, system.pid_of(r)) for n, r in zip(names, refs, strict=True)]

            run = _run_phase(p, plan, members, {"raise": flag(RAISE), "oom": flag(OOM)},
                             refs, names, system)
            counts = ledger.counts[: run["issued"]].tolist()
            run["restarts"] = {n: a["restarts"] for n, a in system.metrics()["actors"].items()
                               if n in index}
    finally:
        ledger.unlink()
    run["books"] = books(run.pop("outcomes"), counts)
    return run


def _run_phase(p: Mapping[str, Any], plan: FaultPlan,
               members: Callable[[], list[tuple[str, int | None]]],
               hooks: Mapping[str, Callable[[str], None]], refs: Sequence[Any],
               names: Sequence[str], system: actorq.ActorSystem) -> dict[str, Any]:
    counter = itertools.count()
    records: list[CallRecord] = []
    outcomes: dict[int, str] = {}
    memory: list[list[float]] = []
    t0 = time.monotonic()
    until = t0 + p["duration_s"]
    injector = Injector(plan, members, hooks, p["duration_s"], origin=t0)
    threads = [threading.Thread(target=drive, args=(ref, name, counter.__next__, until,
                                                    p["depth"], t0, records, outcomes))
               for ref, name in zip(refs, names, strict=True)]
    threads.append(threading.Thread(target=sample_memory, args=(
        system, names, t0, until, p["interval_s"], memory)))
    injector.start()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(p["duration_s"] + 4 * REPLY_TIMEOUT)
    finally:
        injector.close()
    issued = min(next(counter), CAPACITY)
    return {"records": records, "events": injector.events, "outcomes": outcomes,
            "issued": issued, "memory": memory, "t_end": time.monotonic() - t0}


def books(outcomes: Mapping[int, str], counts: Sequence[int]) -> dict[str, int]:
    """Lost, duplicated and reported failures, from the outcomes and the ledger."""
    tally = collections.Counter(outcomes.values())
    never = len(counts) - len(outcomes)
    lost = sum(1 for t, o in outcomes.items() if o == "ok" and counts[t] == 0)
    return {"issued": len(counts), "ok": tally["ok"], "crashed": tally["crashed"],
            "raised": tally["raised"], "failed": tally["failed"],
            "crashed_after_work": sum(1 for t, o in outcomes.items()
                                      if o == "crashed" and counts[t] == 1),
            "lost": lost + tally["unanswered"] + never,
            "duplicated": sum(1 for c in counts if c > 1)}


# -- ProcessPoolExecutor phase ----------------------------------------------------------------

class _Executor:
    """A ProcessPoolExecutor replaced by a new one when a dead worker broke it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.ex = self._new()
        self.replaced = 0

    def _new(self) -> ProcessPoolExecutor:
        ex = ProcessPoolExecutor(max_workers=self.workers,
                                 mp_context=multiprocessing.get_context("forkserver"))
        list(ex.map(burn, [0.0] * (self.workers * 2)))  # every worker is up
        return ex

    def submit(self, *args: Any) -> Future[int]:
        try:
            return self.ex.submit(pool_task, *args)
        except BrokenProcessPool:  # the documented recovery: a new executor
            self.ex.shutdown(wait=True, cancel_futures=True)
            self.ex = self._new()
            self.replaced += 1
            return self.ex.submit(pool_task, *args)

    def pids(self) -> list[int]:
        # no public list of the workers; the private _processes is the only one
        return list((self.ex._processes or {}).keys())

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


def pool_phase(p: Mapping[str, Any], plan: FaultPlan) -> dict[str, Any]:
    """The same schedule's kills and stalls against a ProcessPoolExecutor."""
    ledger = Ledger.create()
    try:
        executor = _Executor(p["workers"])
        try:
            return _pool_run(p, plan, executor, ledger)
        finally:
            executor.close()
    finally:
        ledger.unlink()


def _pool_run(p: Mapping[str, Any], plan: FaultPlan, executor: _Executor,
              ledger: Ledger) -> dict[str, Any]:
    records: list[CallRecord] = []
    outcomes: dict[int, str] = {}
    permits = threading.Semaphore(p["workers"] * p["depth"])
    t0 = time.monotonic()
    until = t0 + p["duration_s"]
    kept = FaultPlan(tuple(i for i in plan.items if i.kind in ("kill", "stop")), plan.seed)
    injector = Injector(kept, lambda: [("pool", pid) for pid in executor.pids()], {},
                        p["duration_s"], origin=t0)
    issued = 0
    injector.start()
    try:
        while time.monotonic() < until and issued < CAPACITY:
            if not permits.acquire(timeout=0.05):
                continue
            task, sent = issued, time.monotonic() - t0
            issued += 1
            future = executor.submit(task, ledger.path, p["cost_us"])
            future.add_done_callback(_done(task, sent, t0, records, outcomes, permits))
        deadline = time.monotonic() + REPLY_TIMEOUT
        while len(outcomes) < issued and time.monotonic() < deadline:
            time.sleep(0.01)  # the last futures resolve (or fail) shortly
    finally:
        injector.close()
    counts = ledger.counts[:issued].tolist()
    books_ = books(dict(outcomes), counts)
    books_["replaced"] = executor.replaced
    return {"records": list(records), "events": injector.events, "books": books_,
            "issued": issued, "memory": [], "t_end": time.monotonic() - t0}


def _done(task: int, sent: float, t0: float, records: list[CallRecord],
          outcomes: dict[int, str],
          permits: threading.Semaphore) -> Callable[[Future[int]], None]:
    def callback(future: Future[int]) -> None:
        exc = None if future.cancelled() else future.exception()
        ok = not future.cancelled() and exc is None
        outcomes[task] = "ok" if ok else "crashed"
        records.append(CallRecord("pool", sent, time.monotonic() - t0, ok,
                                  future.result() if ok else None))
        permits.release()
    return callback


# -- the report ---------------------------------------------------------------------------------

def analyse(run: dict[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    """Fault effects, books and latencies of one phase (JSON-ready, records dropped)."""
    records: list[CallRecord] = run["records"]
    events: list[FaultEvent] = run["events"]
    effects = fault_effects(events, records, interval=p["interval_s"], end=p["duration_s"],
                            warmup=p["warmup_s"])
    latencies = sorted(r.done - r.sent for r in records if r.ok)
    return {**effects, "books": run["books"], "issued": run["issued"],
            "memory": run["memory"], "restarts": run.get("restarts"),
            "latency_p50_s": percentile(latencies, 50) if latencies else None,
            "latency_p99_s": percentile(latencies, 99) if latencies else None,
            "latency_cdf": _cdf(latencies)}


def _cdf(values: Sequence[float], points: int = 200) -> list[float]:
    """*points* quantiles of sorted *values* (enough to draw the CDF)."""
    if not values:
        return []
    return [values[min(len(values) - 1, int(i * len(values) / points))]
            for i in range(points)]


def results_of(rounds: Sequence[Mapping[str, dict[str, Any]]]) -> list[BenchResult]:
    """Per side: baseline throughput, recovery per kind, p99 in the fault windows, books."""
    out = []
    for side in (ACTORQ, POOL):
        group = f"faults: {side}"
        runs = [r[side] for r in rounds]
        base = [x["baseline"] for x in runs if x["baseline"] is not None]
        out.append(BenchResult(f"{side} throughput before faults", "calls/s", tuple(base),
                               higher_is_better=True, group=group))
        for kind in ("kill", "stop", "raise", "oom"):
            rows = [f for x in runs for f in x["faults"] if f["kind"] == kind]
            if not rows:
                continue
            rec = tuple(f["recovery_s"] * 1e3 for f in rows if f["recovery_s"] is not None)
            p99 = tuple(f["p99_window_s"] * 1e3 for f in rows if f["p99_window_s"] is not None)
            note = f"{len(rows)} fault(s), {len(rows) - len(rec)} without a recovery seen"
            errors = "; ".join(sorted({f["error"] for f in rows if f["error"]}))
            for name, samples in ((f"{side} recovery after {kind}", rec),
                                  (f"{side} p99 in {kind} window", p99)):
                if samples:
                    out.append(BenchResult(name, "ms", samples, group=group, note=note))
                else:
                    out.append(BenchResult.skip(name, f"no recovery seen: {note}"
                                                + (f" ({errors})" if errors else ""),
                                                unit="ms", group=group))
        out.extend(BenchResult(f"{side} work {key}", "tasks",
                               tuple(float(x["books"][key]) for x in runs), group=group,
                               note="from the ledger of side effects")
                   for key in ("lost", "duplicated"))
    return out


def verdicts_of(results: Sequence[BenchResult]) -> list[Verdict]:
    by = {r.name: r for r in results}
    out = [compare(by[f"{ACTORQ} throughput before faults"],
                   by[f"{POOL} throughput before faults"], name=f"throughput / {POOL}")]
    for kind in ("kill", "stop"):
        ours = by.get(f"{ACTORQ} recovery after {kind}")
        peer = by.get(f"{POOL} recovery after {kind}")
        if ours is not None and peer is not None:
            out.append(compare(ours, peer, name=f"recovery after {kind} / {POOL}"))
    for key in ("lost", "duplicated"):
        r = by[f"{ACTORQ} work {key}"]
        out.append(Verdict(f"actorq work {key}", max(r.samples, default=math.nan), "tasks",
                           0.0, "at_most", detail="promised 0; counted from side effects"))
    return out


def fault_table(rounds: Sequence[Mapping[str, dict[str, Any]]]) -> str:
    lines = ["| Round | Side | Fault | At (s) | Member | Recovery (ms) | Dip (lowest % of "
             "baseline) | Dip (s) | p99 in window (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    lines.extend(
        f"| {i} | {side} | {f['kind']} | {f['t']:.2f} | {f['member']} (pid {f['pid']}) | "
        f"{_ms(f['recovery_s'])} | {_pct(f['dip_share'])} | {f['dip_s']:.2f} | "
        f"{_ms(f['p99_window_s'])} |"
        for i, r in enumerate(rounds, 1) for side in (ACTORQ, POOL) for f in r[side]["faults"])
    books = ["", "| Round | Side | issued | ok | crashed (reported) | raised (reported) | "
             "crashed after its work | **lost** | **duplicated** | executors replaced |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        for side in (ACTORQ, POOL):
            b = r[side]["books"]
            books.append(f"| {i} | {side} | {b['issued']} | {b['ok']} | {b['crashed']} | "
                         f"{b['raised']} | {b['crashed_after_work']} | {b['lost']} | "
                         f"{b['duplicated']} | {b.get('replaced', '-')} |")
    return "## Faults\n\n" + "\n".join(lines + books) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def draw(rounds: Sequence[Mapping[str, dict[str, Any]]], p: Mapping[str, Any],
         path: Path, title: str) -> None:
    """Throughput over time with the faults marked, latency CDFs, worker memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = rounds[-1]
    fig, (ax_t, ax_c, ax_m) = plt.subplots(3, 1, figsize=(9, 10))
    for side in (ACTORQ, POOL):
        run = last[side]
        ax_t.plot([t for t, _ in run["series"]], [r for _, r in run["series"]],
                  color=COLORS[side], label=side, drawstyle="steps-post")
        for f in run["faults"]:
            ax_t.axvline(f["t"], color=COLORS[side], linestyle=":", alpha=0.7)
            if side == ACTORQ:
                ax_t.annotate(f["kind"], (f["t"], 0), xytext=(2, 2), textcoords="offset points",
                              fontsize=8)
        cdf = run["latency_cdf"]
        ax_c.plot([v * 1e3 for v in cdf], [i / max(1, len(cdf)) for i in range(len(cdf))],
                  color=COLORS[side], label=side)
    ax_t.set_ylabel("successful calls / s")
    ax_t.set_xlabel("time (s); dotted lines: faults")
    ax_t.legend(fontsize=8)
    ax_c.set_xscale("log")
    ax_c.set_xlabel("call latency (ms)")
    ax_c.set_ylabel("fraction of calls")
    ax_c.legend(fontsize=8)
    memory = last[ACTORQ]["memory"]
    for k in range(1, len(memory[0]) if memory else 1):
        ax_m.plot([m[0] for m in memory], [m[k] for m in memory], label=f"worker-{k - 1}")
    ax_m.axhline(p["max_rss_mib"], color="grey", linestyle="--", label="max_rss")
    ax_m.set_ylabel("actorq worker RSS (MiB)")
    ax_m.set_xlabel("time (s)")
    ax_m.legend(fontsize=8)
    for ax in (ax_t, ax_c, ax_m):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_faults(options: SuiteOptions) -> SuiteReport:
    """Rounds of (actorq phase, executor phase) under the plan; return the report."""
    p = options.parameters(FULL, QUICK, ("rounds",))
    plan = options.faults or FaultPlan.parse(p["plan"])
    log = logging.getLogger("actorq")
    level = log.level
    log.setLevel(logging.ERROR)  # a warning per crash and restart: expected here
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for i in range(p["rounds"]):
            options.say(f"round {i + 1}/{p['rounds']}: actorq under faults")
            ours = analyse(actorq_phase(p, plan), p)
            options.say(f"round {i + 1}/{p['rounds']}: {POOL} under the same kills and stalls")
            rounds.append({ACTORQ: ours, POOL: analyse(pool_phase(p, plan), p)})
    finally:
        log.setLevel(level)
    results = results_of(rounds)
    title = "actorq under faults" + (" (quick)" if options.quick else "")
    plot = Plot("faults.png", "throughput with the faults marked, latency CDFs, memory",
                lambda path: draw(rounds, p, path, title))
    return SuiteReport("faults", title, results, verdicts_of(results),
                       meta={"parameters": p, "plan": [vars_of(i) for i in plan.items]},
                       extra={"faults": rounds}, sections=[fault_table(rounds)], plots=[plot])


def vars_of(item: Any) -> dict[str, Any]:
    return {"kind": item.kind, "at": item.at, "rate": item.rate, "stall": item.stall}


SUITE = Suite("faults", "SIGKILL, SIGSTOP, raise, max_rss overrun of a worker: recovery, "
              "throughput dip, p99, work lost/duplicated; vs ProcessPoolExecutor", run_faults,
              repeat_keys=("rounds",), supports_faults=True)

# Ship this module's actor classes by value (as for a script's own classes), so that an
# actor process (a warm spare, a restart) does not import this module and actorq.bench
# first: that import would be counted in the restart times and the idle actor's memory.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
