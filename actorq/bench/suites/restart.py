"""The ``restart`` suite: restart latency beside multiprocessing and loky (and Ray if present).

    actorq bench restart [--quick] [--repeats N] [--out DIR]
    python benchmarks/bench_restart.py [--quick] [--results-dir DIR]   (the same)

Restart latency is the time from the SIGKILL of an actor's process to the next call
answered by its new process (``time.perf_counter``; the call is issued right after the
kill, and a reply still carrying the old pid is not counted as an answer). Measured in
one run, side by side:

- actorq, under a supervisor without backoff, for each start method (forkserver, fork)
  with one warm spare process (the default) and with none (a cold restart);
- the floor under any restart: SIGKILL of an actorq actor's process until the kernel
  reports it gone (its pidfd turns readable), nothing restarted yet;
- peers: a plain ``multiprocessing.Process`` started (forkserver and fork contexts) to
  its first message answered over a Pipe; a loky reusable executor (one worker)
  recovering from its worker's SIGKILL until a new task returns; Ray's actor restart
  when ``ray`` is importable (skipped otherwise).

The target case (forkserver + warm spare, issue 15's p50 ≤ 5 ms and p99 ≤ 8 ms) takes
100 restarts (``target_repeats``), the others 30 (``repeats``; ``--repeats`` sets both).

The run is split into rounds. In each round every case runs one block of restarts in
a fresh system / executor (one unrecorded warm-up restart first), the cases one after
the other, so a slow drift of the machine hits every case alike while no two systems
are alive at once (two systems forking concurrently could hand each other's pipes to
their children). Before every kill the case waits ``settle`` seconds: the warm spare
taken by the previous restart is started again meanwhile, and nothing is left running
from the previous sample. Whether the new process existed before the kill (a warm
spare was used) is checked for every actorq restart.

Under forkserver, a cold start imports this module (the actor class is pickled by
reference), so its imports are on the path of every cold start (actorq's cold restart
and the plain Process alike; a warm spare paid it beforehand). The top-level imports
are therefore what actorq loads anyway; ``actorq.bench`` is imported where used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import multiprocessing
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import cloudpickle

import actorq
from actorq.bench.suite import Suite, SuiteOptions, SuiteReport

if TYPE_CHECKING:
    from actorq.bench import BenchResult, Verdict

REPLY_TIMEOUT = 30.0  # every wait is bounded: a wedged restart fails the run, never hangs it
JOIN_TIMEOUT = 5.0
TARGET_P50_MS = 5.0  # issue 15: p50 ≤ 5 ms (its p99 ≤ 8 ms is read from the table)
GROUP = "restart latency"
FLOOR_GROUP = "kernel floor"
STOP = "stop"

# The target case (FS_SPARE) takes ``target_repeats`` samples, the others ``repeats``:
# its p99 is judged against issue 15's 8 ms, and of 30 samples the p99 is 71 % of the
# way from the second-largest to the largest (one slow restart decides it); of 100 it is
# the second-largest, to 1 %. About 11 s more than 30 (0.15 s between kills).
FULL = {"repeats": 30, "target_repeats": 100, "rounds": 3, "warmup": 1, "settle": 0.15}
QUICK = {"repeats": 3, "target_repeats": 3, "rounds": 1, "warmup": 1, "settle": 0.05}

# The cases (rows); the verdicts refer to them by these names.
FS_SPARE = "actorq forkserver + spare"
FS_COLD = "actorq forkserver cold"
FORK_SPARE = "actorq fork + spare"
FORK_COLD = "actorq fork cold"
FS_EXIT = "actorq actor exit (forkserver)"
MP_FS = "mp.Process forkserver start"
MP_FORK = "mp.Process fork start"
LOKY = "loky worker recovery"
RAY = "Ray actor restart"
BOOKKEEPING = ("kills", "warm_hits", "crashed_calls", "stale_answers", "failed_calls",
               "pid_of_none", "pid_of_mismatch")


class Target(actorq.Actor):
    """The restarted actor: answers with its own pid (so a new process is recognised)."""

    def pid(self) -> int:
        return os.getpid()


def new_block() -> dict[str, Any]:
    """What one block of restarts reports (a plain dict: this module may be loaded from
    its path without being in ``sys.modules``, which dataclasses do not support)."""
    block: dict[str, Any] = dict.fromkeys(BOOKKEEPING, 0)
    block.update(samples_ms=[], restarts=None)
    return block


def existing_pids() -> set[int]:
    """Every pid on the machine now (a restart whose new pid is in here used a spare)."""
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def wait_exit(pidfd: int, pid: int) -> None:
    """Block until the process behind *pidfd* has exited (the fd turns readable)."""
    ready, _, _ = select.select([pidfd], [], [], REPLY_TIMEOUT)
    if not ready:
        msg = f"pid {pid} still alive {REPLY_TIMEOUT}s after SIGKILL"
        raise TimeoutError(msg)


# -- actorq -------------------------------------------------------------------------------

def actorq_call_until_new_pid(ref: actorq.ActorRef[Target], old_pid: int, deadline: float,
                              block: dict[str, Any]) -> int:
    """Call ``ref.pid()`` until a process other than *old_pid* answers; return its pid.

    A call that raises ``ActorCrashed`` (it was attributed to the crash) is counted and
    made again: the latency runs until a call is answered, as a user would see it.
    """
    while True:
        try:
            got = ref.pid().result(timeout=REPLY_TIMEOUT)
        except actorq.ActorCrashed:
            block["crashed_calls"] += 1
        else:
            if got != old_pid:
                return int(got)
            block["stale_answers"] += 1
        if time.perf_counter() > deadline:
            msg = f"actorq: no answer from a new process within {REPLY_TIMEOUT}s of the kill"
            raise TimeoutError(msg)


def actorq_block(start_method: str, warm_spares: int, n: int, warmup: int = 1,
                 settle: float = 0.15, *, exit_only: bool = False) -> dict[str, Any]:
    """Restart one actor ``warmup + n`` times in a fresh system; record the last *n*.

    Each sample is the time from ``os.kill(pid, SIGKILL)`` to the first call answered
    by a new process; with *exit_only*, to the kernel reporting the old process gone
    (the restart is then waited for, untimed).

    Returns:
        ``new_block()`` filled in: latencies in ms, kills, the system's restart count,
        how many new processes existed before their kill (warm spares), calls that
        raised ``ActorCrashed`` or were answered by the killed pid, and how often
        ``pid_of`` did not show the new pid right after it answered.
    """
    block = new_block()
    with actorq.ActorSystem(start_method=start_method, warm_spares=warm_spares,
                            root_max_restarts=10**6, call_timeout=REPLY_TIMEOUT) as system:
        sup = system.supervisor(max_restarts=10**6, within=1.0,
                                backoff=actorq.Backoff(initial=0.0, maximum=0.0),
                                name="bench")
        ref = sup.spawn(Target, name="target")
        pid = ref.pid().result(timeout=REPLY_TIMEOUT)
        for i in range(warmup + n):
            time.sleep(settle)  # the previous restart's spare is started again meanwhile
            before = existing_pids()
            if exit_only:
                pidfd = os.pidfd_open(pid)
                try:
                    start = time.perf_counter()
                    os.kill(pid, signal.SIGKILL)
                    wait_exit(pidfd, pid)
                    elapsed = time.perf_counter() - start
                finally:
                    os.close(pidfd)
                new_pid = actorq_call_until_new_pid(ref, pid, start + REPLY_TIMEOUT, block)
            else:
                start = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                new_pid = actorq_call_until_new_pid(ref, pid, start + REPLY_TIMEOUT, block)
                elapsed = time.perf_counter() - start
            block["kills"] += 1
            shown = system.pid_of(ref)
            if shown is None:
                block["pid_of_none"] += 1
            elif shown != new_pid:
                block["pid_of_mismatch"] += 1
            if i >= warmup:
                block["samples_ms"].append(elapsed * 1e3)
                block["warm_hits"] += new_pid in before
            pid = new_pid
        block["restarts"] = system.metrics()["actors"]["target"]["restarts"]
    return block


# -- multiprocessing.Process ----------------------------------------------------------------

def _echo_main(conn: Any) -> None:
    """The peer process: send back what arrives, until STOP or EOF."""
    with contextlib.suppress(EOFError):
        while True:
            message = conn.recv()
            if message == STOP:
                break
            conn.send(message)
    conn.close()


def _stop_process(proc: Any, conn: Any) -> None:
    """Ask the peer to stop, join it; then SIGTERM, then SIGKILL, each under a deadline."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(STOP)
    proc.join(JOIN_TIMEOUT)
    for escalate in (proc.terminate, proc.kill):
        if proc.exitcode is not None:
            break
        escalate()
        proc.join(JOIN_TIMEOUT)
    conn.close()
    proc.close()


def process_start_block(method: str, n: int, warmup: int = 1,
                        settle: float = 0.15) -> dict[str, Any]:
    """Start a plain process ``warmup + n`` times; time start to first echo over a Pipe."""
    ctx: Any = multiprocessing.get_context(method)
    block = new_block()
    for i in range(warmup + n):
        time.sleep(settle)
        start = time.perf_counter()
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_echo_main, args=(theirs,), name="bench:restart-peer",
                           daemon=True)
        try:
            proc.start()
            theirs.close()
            ours.send(i)
            if not ours.poll(REPLY_TIMEOUT):
                msg = f"{method} peer (pid {proc.pid}) did not answer in {REPLY_TIMEOUT}s"
                raise TimeoutError(msg)
            got = ours.recv()
            elapsed = time.perf_counter() - start
        finally:
            theirs.close()
            _stop_process(proc, ours)
        if got != i:
            msg = f"{method} peer echoed {got!r} for {i!r}"
            raise RuntimeError(msg)
        block["kills"] += 1
        if i >= warmup:
            block["samples_ms"].append(elapsed * 1e3)
    return block


# -- loky ---------------------------------------------------------------------------------

def loky_block(n: int, warmup: int = 1, settle: float = 0.15) -> dict[str, Any]:
    """Kill loky's only worker ``warmup + n`` times; time the kill to a task answered.

    The documented recovery: the task in flight raises ``TerminatedWorkerError`` (the
    executor is broken), ``get_reusable_executor`` then gives a new executor whose
    worker is started on the next submit.
    """
    from concurrent.futures.process import BrokenProcessPool  # loky's errors derive from it

    from loky import get_reusable_executor

    block = new_block()
    executor = get_reusable_executor(max_workers=1)
    try:
        pid = executor.submit(os.getpid).result(timeout=REPLY_TIMEOUT)
        for i in range(warmup + n):
            time.sleep(settle)
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    got = executor.submit(os.getpid).result(timeout=REPLY_TIMEOUT)
                except BrokenProcessPool:
                    block["failed_calls"] += 1
                    executor = get_reusable_executor(max_workers=1)
                else:
                    if got != pid:
                        break
                    block["stale_answers"] += 1
                if time.perf_counter() > start + REPLY_TIMEOUT:
                    msg = f"loky: no task answered within {REPLY_TIMEOUT}s of the kill"
                    raise TimeoutError(msg)
            elapsed = time.perf_counter() - start
            block["kills"] += 1
            if i >= warmup:
                block["samples_ms"].append(elapsed * 1e3)
            pid = got
    finally:
        executor.shutdown(wait=True, kill_workers=True)
    return block


# -- Ray (only when installed; it was not where this was written) ---------------------------

class PlainTarget:
    """Ray's actor: answers with its pid."""

    def pid(self) -> int:
        return os.getpid()


def ray_missing() -> str | None:
    """Why the Ray case cannot run, or None if ray is importable."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install ray): Ray's actor restart not measured"
    return None


def ray_block(n: int, warmup: int = 1, settle: float = 0.15) -> dict[str, Any]:
    """Kill a Ray actor (``max_restarts=-1``) ``warmup + n`` times; time kill to answer.

    Never run by its author (ray was not installed); a failure is reported as a skip.
    """
    import ray

    block = new_block()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        handle: Any = ray.remote(max_restarts=-1)(PlainTarget).remote()
        pid = ray.get(handle.pid.remote(), timeout=REPLY_TIMEOUT)
        for i in range(warmup + n):
            time.sleep(settle)
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    got = ray.get(handle.pid.remote(), timeout=REPLY_TIMEOUT)
                except ray.exceptions.RayError:
                    block["failed_calls"] += 1
                else:
                    if got != pid:
                        break
                    block["stale_answers"] += 1
                if time.perf_counter() > start + REPLY_TIMEOUT:
                    msg = f"Ray: no answer from a new process within {REPLY_TIMEOUT}s"
                    raise TimeoutError(msg)
            elapsed = time.perf_counter() - start
            block["kills"] += 1
            if i >= warmup:
                block["samples_ms"].append(elapsed * 1e3)
            pid = got
        ray.kill(handle)
    finally:
        ray.shutdown()
    return block


# -- running the cases ------------------------------------------------------------------

Runner = Callable[[int, int, float], dict[str, Any]]


def cases() -> dict[str, tuple[Runner, str, str]]:
    """Case name -> (block runner, group, note), in running order.

    The first case is an actorq forkserver one: actorq configures the fork server's
    preload, which only takes effect before anything else started the fork server.
    """
    restart = "SIGKILL → next call answered by a new process; supervisor without backoff"
    start = "Process.start() → first message echoed over a Pipe (no kill, no supervisor)"

    def actorq_case(method: str, spares: int, exit_only: bool = False) -> Runner:
        return lambda n, warmup, settle: actorq_block(method, spares, n, warmup, settle,
                                                      exit_only=exit_only)

    def process_case(method: str) -> Runner:
        return lambda n, warmup, settle: process_start_block(method, n, warmup, settle)

    table: dict[str, tuple[Runner, str, str]] = {
        FS_SPARE: (actorq_case("forkserver", 1), GROUP, restart + "; warm_spares=1"),
        FS_COLD: (actorq_case("forkserver", 0), GROUP, restart + "; warm_spares=0"),
        FORK_SPARE: (actorq_case("fork", 1), GROUP, restart + "; warm_spares=1"),
        FORK_COLD: (actorq_case("fork", 0), GROUP, restart + "; warm_spares=0"),
        MP_FS: (process_case("forkserver"), GROUP, start),
        MP_FORK: (process_case("fork"), GROUP, start),
        LOKY: (loky_block, GROUP, "get_reusable_executor(max_workers=1); SIGKILL → "
               "TerminatedWorkerError → new executor → next task answered"),
    }
    if ray_missing() is None:
        table[RAY] = (ray_block, GROUP, "max_restarts=-1; SIGKILL → next call answered")
    table[FS_EXIT] = (actorq_case("forkserver", 1, exit_only=True), FLOOR_GROUP,
                      "SIGKILL → the kernel reports the actor's process gone (pidfd "
                      "readable); part of every restart above")
    return table


def run_cases(p: Mapping[str, Any], only: list[str] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every case (or those in *only*) in rounds; return the merged blocks by name.
    The target case takes ``p["target_repeats"]`` samples if given, the others (and it,
    if not) ``p["repeats"]``.

    A Ray failure is recorded (``error``) instead of failing the run: that case is
    untested; any other case's failure propagates.
    """
    table = cases()
    names = [name for name in table if only is None or name in only]
    merged = {name: new_block() for name in names}
    rounds = max(1, min(p["rounds"], p["repeats"]))
    for r in range(rounds):
        for name in names:
            if "error" in merged[name]:
                continue
            total = (p.get("target_repeats", p["repeats"]) if name == FS_SPARE
                     else p["repeats"])
            n = total // rounds + (r < total % rounds)
            if progress is not None:
                progress(f"round {r + 1}/{rounds}: {name} ({n} samples)")
            runner = table[name][0]
            try:
                block = runner(n, p["warmup"], p["settle"])
            except Exception as exc:
                if name != RAY:
                    raise
                merged[name]["error"] = f"{type(exc).__name__}: {exc}"
                continue
            merge(merged[name], block)
    return merged


def merge(into: dict[str, Any], block: Mapping[str, Any]) -> None:
    into["samples_ms"] += block["samples_ms"]
    for key in BOOKKEEPING:
        into[key] += block[key]
    if block["restarts"] is not None:
        into["restarts"] = (into["restarts"] or 0) + block["restarts"]


def to_results(blocks: Mapping[str, Mapping[str, Any]]) -> list[BenchResult]:
    from actorq.bench import BenchResult

    table = cases()
    results = []
    for name, block in blocks.items():
        _runner, group, note = table[name]
        if "error" in block:
            results.append(BenchResult.skip(name, f"failed: {block['error']}", unit="ms",
                                            group=group))
            continue
        if name.startswith("actorq") and note.endswith("warm_spares=1"):
            note += (f"; the new process was a warm spare in {block['warm_hits']}/"
                     f"{len(block['samples_ms'])}")
        results.append(BenchResult(name, "ms", tuple(block["samples_ms"]), group=group,
                                   note=note))
    if RAY not in blocks:  # the peers' rows come before the floor's
        at = next((i for i, r in enumerate(results) if r.group != GROUP), len(results))
        results.insert(at, BenchResult.skip(RAY, ray_missing() or "not run", unit="ms",
                                            group=GROUP))
    return results


# -- verdicts and output ----------------------------------------------------------------

def p99(result: BenchResult) -> float:
    from actorq.bench import percentile

    return percentile(result.samples, 99) if result.samples else math.nan


def p99_ratio(ours: BenchResult, peer: BenchResult, name: str) -> Verdict:
    from actorq.bench import Verdict

    for side in (ours, peer):
        if not side.samples:
            return Verdict(name, math.nan, "x", None, "at_most",
                           detail=f"{side.name} skipped: {side.skipped or 'no samples'}")
    return Verdict(name, p99(ours) / p99(peer), "x", None, "at_most",
                   detail=f"p99 {ours.name} / p99 {peer.name}")


def verdicts(results: list[BenchResult]) -> list[Verdict]:
    """The 5 ms target on the default restart, then ratios (p50, p99) to the peers."""
    from actorq.bench import check, compare

    by = {r.name: r for r in results}
    pairs = [(FS_SPARE, MP_FS), (FS_SPARE, LOKY), (FS_SPARE, RAY), (FS_COLD, MP_FS),
             (FORK_SPARE, MP_FORK), (FORK_COLD, MP_FORK), (FS_SPARE, FS_COLD),
             (FORK_SPARE, FORK_COLD), (FS_EXIT, FS_SPARE)]
    out = [check(by[FS_SPARE], at_most=TARGET_P50_MS, name=f"{FS_SPARE} restart p50")]
    for ours, peer in pairs:
        if ours in by and peer in by:
            out.append(compare(by[ours], by[peer], name=f"{ours} / {peer} (p50)"))
            if by[ours].samples and by[peer].samples:  # a skip is said once, above
                out.append(p99_ratio(by[ours], by[peer], f"{ours} / {peer} (p99)"))
    return out


def latency_rows(results: list[BenchResult],
                 blocks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """p50 / p99 / spread per case, with the restart bookkeeping, JSON-ready."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"name": r.name, "group": r.group, "unit": r.unit,
                               "n": len(r.samples), "skipped": r.skipped}
        for key, value in (("p50", r.median), ("p99", p99(r)), ("p10", r.p10),
                           ("p90", r.p90), ("min", r.min), ("max", r.max),
                           ("rel_spread", r.rel_spread)):
            row[key] = value if math.isfinite(value) else None
        block = blocks.get(r.name, {})
        row.update({k: v for k, v in block.items() if k not in ("samples_ms", "error")})
        rows.append(row)
    return rows


def latency_table(rows: list[dict[str, Any]]) -> str:
    from actorq.bench import format_value

    def fmt(value: float | None) -> str:
        return format_value(math.nan if value is None else value)

    labels = (("warm_hits", "warm spare used"), ("crashed_calls", "ActorCrashed raised"),
              ("failed_calls", "calls failed (broken pool)"),
              ("stale_answers", "answers from the killed pid"),
              ("pid_of_none", "pid_of() None after the answer"),
              ("pid_of_mismatch", "pid_of() not the answering pid"))
    lines = ["| Case | p50 | p99 | p10 .. p90 | min .. max | Unit | n | Bookkeeping |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["skipped"] is not None:
            lines.append(f"| {row['name']} | skipped | - | - | - | {row['unit']} | 0 | "
                         f"{row['skipped']} |")
            continue
        book = [f"kills {row.get('kills', 0)}"]
        if row.get("restarts") is not None:
            book.append(f"restarts counted {row['restarts']}")
        book += [f"{label} {row[key]}" for key, label in labels if row.get(key)]
        lines.append(f"| {row['name']} | {fmt(row['p50'])} | {fmt(row['p99'])} | "
                     f"{fmt(row['p10'])} .. {fmt(row['p90'])} | "
                     f"{fmt(row['min'])} .. {fmt(row['max'])} | {row['unit']} | {row['n']} | "
                     f"{', '.join(book)} |")
    return "\n".join(lines)


def latency_section(rows: list[dict[str, Any]]) -> str:
    """The Markdown section of the p50/p99 table."""
    n = max((row["n"] for row in rows), default=0)
    return ("## Restart latency\n\nTime from SIGKILL to the next call answered by a new "
            "process (peers: see each row's note in Results). Up to 100 samples (column "
            f"n; {n} at most here), p99 lies between the two largest.\n\n"
            + latency_table(rows) + "\n")


def run_restart(options: SuiteOptions) -> SuiteReport:
    """Run every restart case in rounds; return the report (JSON ``latency``: p50/p99)."""
    p = options.parameters(FULL, QUICK, ("repeats", "target_repeats"))
    # actorq logs a warning per crash and per restart: expected here by the hundred.
    log = logging.getLogger("actorq")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        blocks = run_cases(p, progress=options.say)
    finally:
        log.setLevel(level)
    results = to_results(blocks)
    rows = latency_rows(results, blocks)
    title = "actorq restart benchmarks" + (" (quick)" if options.quick else "")
    meta = {"actorq_log_level": "ERROR (its warning per crash and restart is off)",
            "writes_bytecode": not sys.dont_write_bytecode, "parameters": p}
    return SuiteReport("restart", title, results, verdicts(results), meta=meta,
                       extra={"latency": rows}, sections=[latency_section(rows)])


SUITE = Suite("restart", "SIGKILL of an actor to the next call answered by its new process; "
              "vs mp.Process start, loky worker recovery, Ray", run_restart,
              repeat_keys=("repeats", "target_repeats"))

# Ship this module's actor classes by value (as for a script's own classes), so that an
# actor process (a warm spare, a restart) does not import this module and actorq.bench
# first: that import would be counted in the restart times and the idle actor's memory.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
