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
- answered: the call issued right after the kill returned, from the new process;
- sentinel: the kernel's report (forkserver: relayed by the fork server) reaped it.

The marks wrap private methods of ``actorq._runtime.runtime.Runtime``: a debugging
aid for this code base, not an API.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import actorq
from actorq._runtime import runtime as rt

clock = time.perf_counter
MARKS: dict[str, float] = {}
ORDER = ("notice", "handled", "start_process", "boot_sent", "constructed", "answered",
         "sentinel")


class Traced(actorq.Actor):
    def __init__(self) -> None:
        self.born = clock()

    def pid(self) -> int:
        return os.getpid()

    def born_at(self) -> float:
        return self.born


def mark(name: str, key: str) -> None:
    original: Callable[..., Any] = getattr(rt.Runtime, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        MARKS.setdefault(key, clock())
        return original(*args, **kwargs)

    setattr(rt.Runtime, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    for name, key in (("_on_life_lost", "notice"), ("_died", "handled"),
                      ("_start_process", "start_process"), ("_watch", "boot_sent"),
                      ("_reap_dying", "sentinel")):
        mark(name, key)
    rows = []
    with actorq.ActorSystem(start_method=args.start_method, root_max_restarts=10**6) as s:
        sup = s.supervisor(max_restarts=10**6, within=1.0,
                           backoff=actorq.Backoff(initial=0.0, maximum=0.0))
        ref = sup.spawn(Traced, name="traced")
        pid = ref.pid().result()
        for i in range(args.restarts + 1):
            time.sleep(0.15)  # the spare is started again meanwhile
            MARKS.clear()
            start = clock()
            os.kill(pid, signal.SIGKILL)
            new = ref.pid().result(timeout=30)
            answered = clock()
            born = ref.born_at().result(timeout=30)
            if new == pid:
                msg = "the killed process answered"
                raise RuntimeError(msg)
            pid = new
            if i:  # the first restart is a warm-up
                row = {k: (v - start) * 1e3 for k, v in MARKS.items()}
                rows.append(row | {"answered": (answered - start) * 1e3,
                                   "constructed": (born - start) * 1e3})
    for key in ORDER:
        col = sorted(row[key] for row in rows if key in row)
        if col:
            print(f"{key:14s} p10 {col[len(col) // 10]:6.2f}  p50 {statistics.median(col):6.2f}"
                  f"  p90 {col[9 * len(col) // 10]:6.2f} ms  ({len(col)} of {len(rows)})")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
