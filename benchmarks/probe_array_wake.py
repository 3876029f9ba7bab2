"""An 8 MiB call split finer than ``bench_arrays.py --steps``: the actor's side stamped.

    python benchmarks/probe_array_wake.py [--calls 300]

Sequential calls of ``stamp(arr)`` (the messaging suite's 8 MiB array); every stamp is
``time.perf_counter`` (CLOCK_MONOTONIC, one clock for both processes). The caller's copy
is wrapped as in ``--steps``; inside the actor, wrapped once at the start by a handler
(``install``): its doorbell read (``os.eventfd_read``, the first thing a woken actor
does), the pickle of its record (``receiving._loads``), the out-of-band decode
(``receiving.decode_loaded``), its reply (``send_reply``); in the caller, the moment it
took the reply's record (``SystemHub._take_record``). Prints each step's p10, median
and p90, and how many calls found the actor parked (woken by its doorbell; the others
found it spinning and have no wake-up stamp). Wrapping costs a Python call per stamp:
compare runs of this probe with each other, not with ``bench_arrays.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from typing import Any

import numpy as np

import actorq
from actorq._transport import oob
from actorq.bench.suites import messaging

STEPS = ["call", "copy started", "copy ended", "actor woke", "record loaded",
         "decoded", "handler", "reply written", "reply read", "result back"]


class Probe(messaging.Sink):
    """The suite's sink, stamping its own steps."""

    def install(self) -> int:
        from actorq._core import receiving

        stamps: dict[str, float] = {}
        self.stamps = stamps
        clock = time.perf_counter

        def wrap(fn: Any, before: str | None, after: str) -> Any:
            def stamped(*args: Any, **kwargs: Any) -> Any:
                if before is not None:
                    stamps[before] = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    stamps[after] = clock()
            return stamped

        os.eventfd_read = wrap(os.eventfd_read, None, "actor woke")
        receiving._loads = wrap(receiving._loads, None, "record loaded")
        receiving.decode_loaded = wrap(receiving.decode_loaded, None, "decoded")
        hub = self.context._ops.hub  # type: ignore[attr-defined]
        hub.send_reply = wrap(hub.send_reply, None, "reply written")
        return os.getpid()

    def stamp(self, arr: np.ndarray) -> dict[str, float]:
        # the reply of the previous call was stamped after its handler returned
        started = time.perf_counter()
        out = {k: v for k, v in self.stamps.items() if k != "reply written"}
        out["previous reply written"] = self.stamps.get("reply written", 0.0)
        self.stamps.clear()
        out["handler"] = started
        out["seen"] = float(arr[-1]) == arr.size - 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    n = parser.parse_args().calls
    arr = np.arange(messaging.ARRAY_BYTES // 8, dtype=np.float64)
    rows: list[dict[str, float]] = []
    with actorq.ActorSystem() as system:
        ref = system.spawn(Probe, name="probe")
        ref.install().result(timeout=messaging.REPLY_TIMEOUT)
        for _ in range(3):
            ref.stamp(arr).result(timeout=messaging.REPLY_TIMEOUT)
        clock = time.perf_counter
        copies: list[float] = []
        taken: list[float] = []
        copy, hub = oob.copy_into, system._runtime.hub
        take = hub._take_record

        def stamped_copy(dst: Any, offset: int, src: Any) -> int:
            copies.append(clock())
            try:
                return copy(dst, offset, src)
            finally:
                copies.append(clock())

        def stamped_take(*args: Any) -> Any:
            taken.append(clock())
            return take(*args)

        oob.copy_into = stamped_copy
        hub._take_record = stamped_take
        try:
            for _ in range(n + 1):
                copies.clear()
                taken.clear()
                start = clock()
                row = ref.stamp(arr).result(timeout=messaging.REPLY_TIMEOUT)
                row.update({"call": start, "copy started": copies[0],
                            "copy ended": copies[-1], "result back": clock()})
                if taken:
                    row["reply read"] = taken[-1]
                if not row.pop("seen"):
                    msg = "the actor did not see the array's last element"
                    raise RuntimeError(msg)
                if rows:
                    rows[-1]["reply written"] = row["previous reply written"]
                rows.append(row)
        finally:
            oob.copy_into = copy
            hub._take_record = take
    rows = rows[:-1]  # its reply was not stamped
    woken = sum("actor woke" in r for r in rows)
    print(f"{len(rows)} calls; the actor was woken by its doorbell in {woken}")
    for a, b in itertools.pairwise(STEPS):
        xs = sorted((r[b] - r[a]) * 1e3 for r in rows if a in r and b in r and r[b] > 0)
        if xs:
            print(f"{a:>14s} -> {b:14s} p10 {xs[len(xs) // 10]:.3f}, median "
                  f"{statistics.median(xs):.3f}, p90 {xs[len(xs) * 9 // 10]:.3f} ms (n={len(xs)})")
    spinning = [r for r in rows if "actor woke" not in r]
    if spinning:
        xs = sorted((r["handler"] - r["copy ended"]) * 1e3 for r in spinning)
        print(f"found spinning: copy ended -> handler median {statistics.median(xs):.3f} ms")


if __name__ == "__main__":
    main()
