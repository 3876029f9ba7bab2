"""The ``messaging`` suite: actorq side by side with multiprocessing, faster_fifo and task pools.

    actorq bench messaging [--quick] [--repeats N] [--out DIR]
    python benchmarks/bench_transport.py [--quick] [--results-dir DIR]   (the same)

Measured in one run, each as several repeats (median and spread), the actorq side and
its peer interleaved repeat by repeat:

- one-way throughput of a small message ("small", i, 1.5): N tells then one call that
  returns how many the actor received, against multiprocessing.Queue and faster_fifo;
- call round trip: p50 and p99 over sequential ``ref.echo(i).result()`` calls, against
  a multiprocessing.Pipe echo process;
- pipelined calls: 1000 outstanding ``ref.echo(i)``, then wait for all (calls/s),
  against ``multiprocessing.Pool.apply_async``, ``ProcessPoolExecutor.submit``, loky
  and Dask (where installed), each with one worker process;
- an 8 MiB numpy array sent to an actor that returns its nbytes (GB/s), against
  ``Connection.send`` of the same array to a process that replies with its nbytes, and
  against the floor of any such transfer: one bare copy of the array into shared memory
  that is mapped and faulted in already (the one copy actorq makes, by the same routine:
  ``actorq._native.copy_into``, streaming stores where the C helpers are built, shared
  with a helper thread where two CPUs may be used; nothing around it);
- an idle actor: USS (MiB) and CPU % of its process over 2 s of idling.

numpy is imported only where the array benchmark needs it: this module's imports are
paid for in every process that unpickles its actor classes (the idle actor's memory
would count numpy's ~8 MiB USS).
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle
import psutil

import actorq
from actorq._native import COPY_THREADS, STREAMING, copy_into
from actorq.bench import (
    BenchResult,
    Case,
    Verdict,
    check,
    compare,
    executors,
    measure_interleaved,
    percentile,
)
from actorq.bench.peers import FasterFifoSink, PipeEcho, PipeSink, QueueSink, faster_fifo_missing
from actorq.bench.suite import Plot, Suite, SuiteOptions, SuiteReport
from actorq.bench.suites.counting import CountingSink

if TYPE_CHECKING:
    import numpy as np

MIB = 2**20
ARRAY_BYTES = 8 * MIB
REPLY_TIMEOUT = 60.0

# Tells: 400k a repeat (about 0.35 s for actorq on a quiet core: a scheduler hiccup of
# another job weighs less than in the 0.2 s of 200k), 7 repeats (the median of 7
# interleaved rounds holds against three slow ones). Arrays: 20 a repeat, 11 repeats:
# actorq's 10 took about 20 ms, where one time slice lost to another job (several ms on
# a loaded 2-core box) moved a repeat by a fifth or more (issue 15: 13.7x .. 35.3x).
FULL = {"tells": 400_000, "tell_repeats": 7, "calls": 5000, "call_repeats": 5,
        "pipelined": 1000, "pipelined_batches": 5, "pipelined_repeats": 7,
        "arrays": 20, "array_repeats": 11, "idle_repeats": 3, "idle_settle": 1.0,
        "idle_window": 2.0, "warmup": 1, "task_peers": "pool,executor,loky,dask"}
# Seconds, for CI and a first look; the figures are rough.
QUICK = {"tells": 20_000, "tell_repeats": 3, "calls": 500, "call_repeats": 3,
         "pipelined": 200, "pipelined_batches": 1, "pipelined_repeats": 3,
         "arrays": 2, "array_repeats": 3, "idle_repeats": 1, "idle_settle": 0.3,
         "idle_window": 0.5, "warmup": 1, "task_peers": "pool,executor,loky,dask"}
REPEAT_KEYS = ("tell_repeats", "call_repeats", "pipelined_repeats", "array_repeats",
               "idle_repeats")


class Idle(actorq.Actor):
    """Does nothing; imports nothing beyond actorq (what an idle actor costs by itself)."""

    def pid(self) -> int:
        return os.getpid()


class Sink(CountingSink):
    """Counts what it is told (``CountingSink``); echoes; reports array sizes and its pid."""

    def echo(self, x: Any) -> Any:
        return x

    def nbytes(self, arr: np.ndarray) -> int:
        """Touch the first elements (the data is really there), return the size."""
        if float(arr[:4].sum()) != float(arr[:4].sum()):  # NaN: the data is not there
            return -1
        return int(arr.nbytes)

    def pid(self) -> int:
        return os.getpid()


# -- the actorq side --------------------------------------------------------------------

def actorq_tells(ref: actorq.ActorRef[Sink], n: int) -> None:
    tell = ref.tell
    for i in range(n):
        tell(("small", i, 1.5))
    got = ref.count().result(timeout=REPLY_TIMEOUT)
    if got != n:
        msg = f"actorq: the actor counted {got} messages, {n} were told"
        raise RuntimeError(msg)


def actorq_round_trips(ref: actorq.ActorRef[Sink], n: int) -> dict[str, float]:
    echo, clock = ref.echo, time.perf_counter_ns
    times = []
    for i in range(n):
        start = clock()
        back = echo(i).result(timeout=REPLY_TIMEOUT)
        times.append(clock() - start)
        if back != i:
            msg = f"actorq: echo({i}) returned {back!r}"
            raise RuntimeError(msg)
    LAST_ROUND_TRIPS["actorq call"] = times
    return latency_summary(times)


def actorq_pipelined(ref: actorq.ActorRef[Sink], n: int, batches: int) -> None:
    echo = ref.echo
    for _ in range(batches):
        replies = [echo(i) for i in range(n)]
        for i, reply in enumerate(replies):
            if reply.result(timeout=REPLY_TIMEOUT) != i:
                msg = f"actorq: pipelined echo({i}) came back wrong"
                raise RuntimeError(msg)


def actorq_arrays(ref: actorq.ActorRef[Sink], arr: np.ndarray, k: int) -> None:
    for _ in range(k):
        got = ref.nbytes(arr).result(timeout=REPLY_TIMEOUT)
        if got != arr.nbytes:
            msg = f"actorq: the actor saw {got} bytes, {arr.nbytes} were sent"
            raise RuntimeError(msg)


def copy_target(arr: np.ndarray) -> np.ndarray:
    """An array like *arr* over anonymous shared memory, faulted in once, as a pooled
    block is (unmapped when the last array over it goes: no name to unlink): where
    ``bare_copies`` copies to."""
    import numpy as np  # loaded by now: the caller made *arr*

    dst = np.frombuffer(mmap.mmap(-1, arr.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS),
                        dtype=arr.dtype)
    dst[:] = 0
    return dst


def bare_copies(dst: np.ndarray, arr: np.ndarray, k: int) -> None:
    """Copy *arr* into *dst* (mapped shared memory, faulted in) *k* times: the floor,
    with the routine actorq's block pool copies with."""
    for _ in range(k):
        copy_into(dst, 0, arr)


# -- the peer side ----------------------------------------------------------------------

def peer_tells(peer: QueueSink | FasterFifoSink, n: int) -> None:
    got = peer.send_small(n)
    if got != n:
        msg = f"{type(peer).__name__}: the peer counted {got} messages, {n} were sent"
        raise RuntimeError(msg)


def pipe_round_trips(peer: PipeEcho, n: int) -> dict[str, float]:
    times = peer.round_trips(n)
    LAST_ROUND_TRIPS["Pipe echo"] = times
    return latency_summary(times)


def pipe_arrays(peer: PipeSink, arr: np.ndarray, k: int) -> None:
    for _ in range(k):
        got = peer.transfer(arr)
        if got != arr.nbytes:
            msg = f"Pipe: the peer saw {got} bytes, {arr.nbytes} were sent"
            raise RuntimeError(msg)


# The round trips of each side's last repeat (ns), for the latency CDF plot.
LAST_ROUND_TRIPS: dict[str, list[int]] = {}


def latency_summary(times_ns: list[int]) -> dict[str, float]:
    return {"p50": percentile(times_ns, 50) / 1e3, "p99": percentile(times_ns, 99) / 1e3}


# -- benchmarks -------------------------------------------------------------------------

def bench_tells(system: actorq.ActorSystem, p: dict[str, Any]) -> list[BenchResult]:
    n, group = p["tells"], "one-way small message"
    note = f"{n:,} messages, then one sync"
    ref = system.spawn(Sink, name="tell-sink")
    ref.count().result(timeout=REPLY_TIMEOUT)
    cases = [Case("actorq tell", actorq_tells, (ref, n), unit="msg/s", work=n, group=group,
                  note=note)]
    with QueueSink() as queue_sink:
        cases.append(Case("mp.Queue put", peer_tells, (queue_sink, n), unit="msg/s", work=n,
                          group=group, note=note))
        reason = faster_fifo_missing()
        if reason is not None:
            results = run(cases, p["tell_repeats"], p["warmup"])
            return [*results, BenchResult.skip("faster_fifo put", reason, unit="msg/s",
                                               group=group, higher_is_better=True)]
        with FasterFifoSink() as ff_sink:
            cases.append(Case("faster_fifo put", peer_tells, (ff_sink, n), unit="msg/s",
                              work=n, group=group, note=note + "; consumer uses get_many"))
            return run(cases, p["tell_repeats"], p["warmup"])


def bench_calls(system: actorq.ActorSystem, p: dict[str, Any]) -> list[BenchResult]:
    n, group = p["calls"], "call round trip"
    note = f"{n:,} sequential calls per repeat; value = that repeat's percentile"
    ref = system.spawn(Sink, name="echo")
    ref.echo(0).result(timeout=REPLY_TIMEOUT)
    with PipeEcho() as pipe:
        cases = [Case("actorq call", actorq_round_trips, (ref, n), unit="µs",
                      self_timed=True, group=group, note=note),
                 Case("Pipe echo", pipe_round_trips, (pipe, n), unit="µs", self_timed=True,
                      group=group, note=note)]
        return run(cases, p["call_repeats"], p["warmup"])


def bench_pipelined(system: actorq.ActorSystem, p: dict[str, Any]) -> list[BenchResult]:
    n, batches, group = p["pipelined"], p["pipelined_batches"], "pipelined calls"
    note = f"{n} outstanding calls, then wait all; {batches} batches per repeat"
    ref = system.spawn(Sink, name="pipelined")
    ref.echo(0).result(timeout=REPLY_TIMEOUT)
    cases = [Case("actorq pipelined call", actorq_pipelined, (ref, n, batches),
                  unit="calls/s", work=n * batches, group=group, note=note)]
    skipped: list[BenchResult] = []
    peers: list[executors.TaskPeer] = []
    try:
        chosen = {k.strip() for k in p["task_peers"].split(",")}
        for name, (key, _module, _open) in executors.PEERS.items():
            reason = executors.missing(name)
            if key not in chosen:
                reason = f"not selected (--set task_peers={p['task_peers']})"
            if reason is not None:
                skipped.append(BenchResult.skip(name, reason, unit="calls/s", group=group,
                                                higher_is_better=True))
                continue
            peer = executors.open_peer(name)
            peers.append(peer)
            peer.pipelined(1, 1)  # the worker is up before the first timed repeat
            cases.append(Case(name, peer.pipelined, (n, batches), unit="calls/s",
                              work=n * batches, group=group,
                              note=note + "; one worker process, echo(i) by reference"))
        return [*run(cases, p["pipelined_repeats"], p["warmup"]), *skipped]
    finally:
        for peer in peers:
            peer.close()


def bench_arrays(system: actorq.ActorSystem, p: dict[str, Any]) -> list[BenchResult]:
    k, group = p["arrays"], "8 MiB numpy array"
    import numpy as np  # here, not at the top: see the module docstring

    arr = np.arange(ARRAY_BYTES // 8, dtype=np.float64)
    # (memcpy without the C helpers, or with them on a CPU without AVX2)
    copy = "streaming stores (actorq._native)" if STREAMING else "memcpy"
    copy += ", 2 threads" if COPY_THREADS == 2 else ""
    per_repeat = f"{k} sequential transfers per repeat, reply = nbytes"
    note = f"{per_repeat}; the copy: {copy}"
    ref = system.spawn(Sink, name="arrays")
    ref.nbytes(arr).result(timeout=REPLY_TIMEOUT)
    dst = copy_target(arr)
    with PipeSink() as pipe:
        work = k * arr.nbytes / 1e9
        cases = [Case("actorq call(array)", actorq_arrays, (ref, arr, k), unit="GB/s",
                      work=work, group=group, note=note),
                 Case("Pipe send(array)", pipe_arrays, (pipe, arr, k), unit="GB/s", work=work,
                      group=group, note=f"{per_repeat}; pickled in band"),
                 Case("one copy into shared memory", bare_copies, (dst, arr, k), unit="GB/s",
                      work=work, group=group,
                      note=f"{k} copies per repeat: the floor; {copy}")]
        return run(cases, p["array_repeats"], p["warmup"])


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def other_actorq_processes(actor_pid: int) -> list[psutil.Process]:
    """Descendants of this process other than the actor and multiprocessing's helpers.

    The helpers (fork server, resource tracker) are this process's own children; the
    fork server's children share its command line, so they are told apart by parent.
    """
    helper_names = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
    me = psutil.Process()
    helpers = set()
    for proc in me.children():
        try:
            if any(h in " ".join(proc.cmdline()) for h in helper_names):
                helpers.add(proc.pid)
        except psutil.Error:
            continue
    return [proc for proc in me.children(recursive=True)
            if proc.pid != actor_pid and proc.pid not in helpers]


def idle_once(settle: float, window: float) -> dict[str, float]:
    """One fresh system with one actor: its USS and CPU while idle, and the overhead."""
    with actorq.ActorSystem() as system:
        ref = system.spawn(Idle, name="idle")
        actor = psutil.Process(ref.pid().result(timeout=REPLY_TIMEOUT))
        time.sleep(settle)  # measuring idleness: nothing to wait for but time itself
        me, others = psutil.Process(), other_actorq_processes(actor.pid)
        cpu0, mine0, others0 = cpu_seconds(actor), cpu_seconds(me), sum_cpu(others)
        start = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - start
        cpu1, mine1, others1 = cpu_seconds(actor), cpu_seconds(me), sum_cpu(others)
        return {"actor USS": actor.memory_full_info().uss / MIB,
                "actor CPU": (cpu1 - cpu0) / elapsed * 100,
                "user process CPU": (mine1 - mine0) / elapsed * 100,
                "spare processes": float(len(others)),
                "spare processes USS": sum_uss(others) / MIB,
                "spare processes CPU": (others1 - others0) / elapsed * 100}


def sum_cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += cpu_seconds(proc)
        except psutil.Error:
            continue
    return total


def sum_uss(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += proc.memory_full_info().uss
        except psutil.Error:
            continue
    return total


IDLE_UNITS = {"actor USS": "MiB", "actor CPU": "%", "user process CPU": "%",
              "spare processes": "count", "spare processes USS": "MiB",
              "spare processes CPU": "%"}


def bench_idle(p: dict[str, Any]) -> list[BenchResult]:
    settle, window = p["idle_settle"], p["idle_window"]
    tick = 100 / (os.sysconf("SC_CLK_TCK") * window)  # CPU times come in clock ticks
    note = (f"fresh system per repeat; idle {settle:g} s, then CPU over {window:g} s "
            f"(resolution {tick:.2g} %)")
    case = Case("idle", idle_once, (settle, window), self_timed=True, group="idle actor",
                note=note)
    results = run([case], p["idle_repeats"], 0)
    return [dataclasses.replace(r, unit=IDLE_UNITS[r.name.removeprefix("idle ")])
            for r in results]


def run(cases: list[Case], repeats: int, warmup: int) -> list[BenchResult]:
    return measure_interleaved(cases, repeats=repeats, warmup=warmup)


# -- verdicts and output ----------------------------------------------------------------

def verdicts(results: list[BenchResult]) -> list[Verdict]:
    by = {r.name: r for r in results}
    out = [
        # the targets of issue 15
        compare(by["actorq tell"], by["mp.Queue put"], at_least=10.0,
                name="tell throughput / mp.Queue"),
        compare(by["actorq tell"], by["faster_fifo put"], at_least=10.0,
                name="tell throughput / faster_fifo"),
        compare(by["actorq call p50"], by["Pipe echo p50"], at_most=0.25,
                name="call p50 / Pipe echo p50"),
        compare(by["actorq call p99"], by["Pipe echo p99"], at_most=0.35,
                name="call p99 / Pipe echo p99"),
    ]
    out += [compare(by["actorq pipelined call"], by[name], name=f"pipelined calls / {name}")
            for name in executors.PEERS]
    out += [
        compare(by["actorq call(array)"], by["Pipe send(array)"], at_least=20.0,
                name="8 MiB array GB/s / Pipe GB/s"),
        compare(by["actorq call(array)"], by["one copy into shared memory"],
                name="8 MiB array GB/s / one bare copy GB/s"),
        check(by["idle actor USS"], at_most=6.0, name="idle actor USS"),
        check(by["idle actor CPU"], at_most=1.0, name="idle actor CPU"),
    ]
    return out


STEPS: list[Callable[[actorq.ActorSystem, dict[str, Any]], list[BenchResult]]] = [
    bench_tells, bench_calls, bench_pipelined, bench_arrays]


def run_messaging(options: SuiteOptions) -> SuiteReport:
    """Run every messaging benchmark, then the idle actor; return the report."""
    p = options.parameters(FULL, QUICK, REPEAT_KEYS)
    results: list[BenchResult] = []
    # The system comes first: actorq configures the shared fork server's preload, which
    # only takes effect if no peer started the fork server before.
    with actorq.ActorSystem() as system:
        start_method = system.config.start_method
        for step in STEPS:
            options.say(step.__name__.removeprefix("bench_"))
            results += step(system, p)
    options.say("idle")
    results += bench_idle(p)
    title = "actorq messaging benchmarks" + (" (quick)" if options.quick else "")
    checks = verdicts(results)
    cdfs = {name: sorted(t / 1e3 for t in times) for name, times in LAST_ROUND_TRIPS.items()}
    plot = Plot("messaging.png", "ratios to the peers with their spread; call round-trip "
                "latency CDFs (last repeat)", lambda path: draw(checks, cdfs, path, title))
    return SuiteReport("messaging", title, results, checks, plots=[plot],
                       meta={"start_method": start_method, "parameters": p})


def draw(checks: list[Verdict], cdfs: dict[str, list[float]], path: Any, title: str) -> None:
    """Ratios to the peers (log scale, spread as error bars) and round-trip CDFs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [v for v in checks if v.unit == "x" and math.isfinite(v.value)]
    fig, (ax_r, ax_c) = plt.subplots(2, 1, figsize=(9, 8.5))
    ys = range(len(ratios))
    ax_r.errorbar([v.value for v in ratios], ys, fmt="o",
                  xerr=[[max(0.0, v.value - v.low) if math.isfinite(v.low) else 0.0
                         for v in ratios],
                        [max(0.0, v.high - v.value) if math.isfinite(v.high) else 0.0
                         for v in ratios]])
    ax_r.set_yticks(list(ys), [v.name for v in ratios], fontsize=8)
    ax_r.axvline(1.0, color="grey", linestyle=":")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("actorq / peer (same run); > 1 is better for rates, < 1 for latencies")
    for name, values in cdfs.items():
        ax_c.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
    ax_c.set_xscale("log")
    ax_c.set_xlabel("call round trip (µs)")
    ax_c.set_ylabel("fraction of calls")
    ax_c.legend(fontsize=8)
    for ax in (ax_r, ax_c):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SUITE = Suite("messaging", "tells, calls, pipelined calls, 8 MiB arrays, idle cost; vs "
              "mp.Queue, Pipe, Pool, ProcessPoolExecutor, faster-fifo, loky, Dask",
              run_messaging, repeat_keys=REPEAT_KEYS)

# Ship this module's actor classes by value (as for a script's own classes), so that an
# actor process (a warm spare, a restart) does not import this module and actorq.bench
# first: that import would be counted in the restart times and the idle actor's memory.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
