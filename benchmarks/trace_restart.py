"""Where a restart's time goes: a timestamp trace of SIGKILL → next call answered.

    python benchmarks/trace_restart.py [--restarts 30] [--start-method forkserver]

One actor under a supervisor without backoff (as ``actorq bench restart``), killed
``--restarts`` times, 0.15 s apart. Timestamps (``time.perf_counter``, the monotonic
clock every process shares) relative to the kill, p10 / p50 / p90 over the restarts:

- notice: the early death notice (``_process/lifelock.py``) reaches the system;
- handled: the system handles the death (attribution, supervisor: a restart);
- start_process: a spare is taken (by the loop thread itself when the spare was
  prepared for this actor: then one GO message starts it; else by the starter thread,
  with a full boot message); boot_sent: the loop watches the new process;
- constructed: the new instance's constructor ran (the actor reports the time);
- ready: its "ready" reached the loop thread;
- called: its handler began the call issued right after the kill (it reports the time);
- replied: that call's reply was read in this process (the loop thread, or the caller
  spinning on the ring);
- answered: the call issued right after the kill returned, from the new process;
- sentinel: the kernel's report (forkserver: relayed by the fork server) reaped it.

With ``--slowest N``, the N slowest restarts are printed step by step, and with each:
``inline`` (1: the spare prepared for the actor was taken by the loop thread that
handled the death), ``prepared`` (1: such a spare was waiting at the kill), ``gc`` (ms
this process spent collecting garbage between the kill and the answer), ``run`` /
``wait`` (ms the new process's main thread ran / waited on a run queue for a CPU over
the same span, from ``/proc/<pid>/schedstat``), ``loop_wait`` (the same wait for this
process's loop thread), ``faults`` (the new process's minor page faults over that
span), ``refill`` (ms after the kill that the spare it took was being replaced, if that
began before the answer: the fork and the new spare's boot then compete with the
answer for a CPU), and the refill after the previous
restart: when a spare was started and when it was prepared, in ms *before* the kill.
``--json FILE`` writes every restart's row.

The marks wrap methods of the runtime's parts (``actorq._runtime``: ``Deaths``,
``Launcher``, ``Runtime``): a debugging aid for this code base, not an API.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import actorq
from actorq._core.reply import Reply
from actorq._process.spares import WarmPool
from actorq._runtime.deaths import Deaths
from actorq._runtime.launch import Launcher
from actorq._runtime.runtime import Runtime

clock = time.perf_counter
MARKS: dict[str, float] = {}  # step -> when it happened (the clock)
FLAGS: dict[str, bool] = {}
REFILL: dict[str, float] = {}  # the refill after a restart: a spare started, prepared
GC_MS = [0.0, 0.0]  # this process's garbage collections: ms in all, start of the current
ORDER = ("notice", "handled", "start_process", "boot_sent", "constructed", "ready", "called",
         "replied", "answered", "sentinel")
DETAIL = ("inline", "prepared", "gc", "run", "wait", "loop_wait", "faults", "refill",
          "spare_started", "spare_prepared")


class Traced(actorq.Actor):
    def __init__(self) -> None:
        self.born = clock()
        self.called = math.nan

    def pid(self) -> int:
        self.called = clock()
        return os.getpid()

    def born_at(self) -> tuple[float, float]:
        """When the constructor ran, and when ``pid`` was called last."""
        return self.born, self.called


def mark(cls: type, name: str, key: str) -> None:
    original: Callable[..., Any] = getattr(cls, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        MARKS.setdefault(key, clock())
        return original(*args, **kwargs)

    setattr(cls, name, wrapped)


def mark_refill() -> None:
    """Note when the pool starts and prepares a spare, and whether a restart took its
    spare inline (from the loop thread)."""
    pool = WarmPool
    start_one, prepare = pool.start_one, pool.prepare

    def started(self: Any) -> Any:
        got = start_one(self)
        REFILL["spare_started"] = clock()
        return got

    def prepared(self: Any, prep: Any) -> bool:
        done = prepare(self, prep)
        if done:
            REFILL["spare_prepared"] = clock()
        return done

    pool.start_one, pool.prepare = started, prepared  # type: ignore[method-assign]
    original = Launcher.start_process

    def start(self: Any, *args: Any, **kwargs: Any) -> bool:
        done = original(self, *args, **kwargs)
        if kwargs.get("inline"):
            FLAGS.setdefault("inline", done)
        return done

    Launcher.start_process = start  # type: ignore[method-assign]


def time_gc(phase: str, _info: dict[str, Any]) -> None:
    if phase == "start":
        GC_MS[1] = clock()
    else:
        GC_MS[0] += (clock() - GC_MS[1]) * 1e3


def schedstat(pid: int, task: str = "") -> tuple[float, float]:
    """ms the main thread of *pid* (or its thread *task*) ran, and waited on a run
    queue, so far."""
    try:
        with open(f"/proc/{pid}{task}/schedstat") as f:
            ran, waited = f.read().split()[:2]
    except OSError:
        return math.nan, math.nan
    return int(ran) / 1e6, int(waited) / 1e6


def minflt(pid: int) -> float:
    """Minor page faults of the process *pid* so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return float(f.read().rsplit(b")", 1)[1].split()[7])
    except (OSError, IndexError):
        return math.nan


def restart_once(system: actorq.ActorSystem, ref: actorq.ActorRef[Traced],
                 pid: int, loop_task: str) -> tuple[int, dict[str, float]]:
    """Kill *pid*; return the new pid and the row of this restart (ms)."""
    runtime = system._runtime
    prepared = any(tag[0] == ref.actor_id for tag in runtime._launch.spares.tags())
    refill = dict(REFILL)
    before = {proc.pid: (*schedstat(proc.pid), minflt(proc.pid))
              for proc, _sock in runtime._launch.spares._spares}
    MARKS.clear()
    REFILL.clear()
    FLAGS.clear()
    GC_MS[0] = 0.0
    loop_before = schedstat(os.getpid(), loop_task)[1]
    start = clock()
    os.kill(pid, signal.SIGKILL)
    new = ref.pid().result(timeout=30)
    answered = clock()
    gc_ms = GC_MS[0]
    loop_wait = schedstat(os.getpid(), loop_task)[1] - loop_before
    ran, waited = schedstat(new)
    faults = minflt(new)
    refill_at = MARKS.pop("refill", None)
    born, called = ref.born_at().result(timeout=30)
    if new == pid:
        msg = "the killed process answered"
        raise RuntimeError(msg)
    row = {k: (v - start) * 1e3 for k, v in MARKS.items() if k != "refill"}
    row |= {"answered": (answered - start) * 1e3, "constructed": (born - start) * 1e3,
            "called": (called - start) * 1e3, "prepared": prepared,
            "inline": FLAGS.get("inline", False), "gc": gc_ms, "loop_wait": loop_wait}
    if refill_at is not None and refill_at < answered:
        row["refill"] = (refill_at - start) * 1e3
    if new in before:
        row |= {"run": ran - before[new][0], "wait": waited - before[new][1],
                "faults": faults - before[new][2]}
    row |= {k: (start - v) * 1e3 for k, v in refill.items()}
    return new, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--start-method", default="forkserver")
    parser.add_argument("--settle", type=float, default=0.15,
                        help="seconds between a restart and the next kill")
    parser.add_argument("--slowest", type=int, default=0,
                        help="print the N slowest restarts step by step")
    parser.add_argument("--json", help="write every restart's row to this file")
    args = parser.parse_args()
    for cls, name, key in ((Deaths, "on_life_lost", "notice"), (Deaths, "_died", "handled"),
                           (Launcher, "start_process", "start_process"),
                           (Runtime, "_watch", "boot_sent"), (Launcher, "on_ready", "ready"),
                           (Reply, "set_result", "replied"),
                           (Launcher, "submit_refill", "refill"),
                           (Deaths, "reap_dying", "sentinel")):
        mark(cls, name, key)
    mark_refill()
    gc.callbacks.append(time_gc)
    rows = []
    with actorq.ActorSystem(start_method=args.start_method, root_max_restarts=10**6) as s:
        sup = s.supervisor(max_restarts=10**6, within=1.0,
                           backoff=actorq.Backoff(initial=0.0, maximum=0.0))
        ref = sup.spawn(Traced, name="traced")
        pid = ref.pid().result()
        loop_id = s._runtime._s.hub.loop_thread_id
        loop_tid = next(t.native_id for t in threading.enumerate() if t.ident == loop_id)
        for i in range(args.restarts + 1):
            time.sleep(args.settle)  # the spare is started again meanwhile
            pid, row = restart_once(s, ref, pid, f"/task/{loop_tid}")
            if i:  # the first restart is a warm-up
                rows.append(row)
    for key in ORDER:
        col = sorted(row[key] for row in rows if key in row)
        if col:
            print(f"{key:14s} p10 {col[len(col) // 10]:6.2f}  p50 {statistics.median(col):6.2f}"
                  f"  p90 {col[9 * len(col) // 10]:6.2f} ms  ({len(col)} of {len(rows)})")
    total = sorted(row["answered"] for row in rows)
    print(f"answered: max {total[-1]:.2f} ms, over 8 ms {sum(t > 8 for t in total)} of "
          f"{len(total)}; the refill began before the answer in "
          f"{sum('refill' in row for row in rows)}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    if args.slowest:
        cols = (*ORDER[:-1], *DETAIL)
        print("slowest restarts, ms after the kill (the refill's: ms before it)")
        print(" ".join(f"{c[:10]:>10s}" for c in cols))
        for row in sorted(rows, key=lambda r: -r["answered"])[:args.slowest]:
            print(" ".join(f"{row.get(c, math.nan):10.2f}" for c in cols))


if __name__ == "__main__":
    main()
