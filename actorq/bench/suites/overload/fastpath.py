"""Step 3: the cost of flow control on the ``tell`` fast path (default window vs
``window=10**9``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import actorq
from actorq.bench import BenchResult, Case, measure_interleaved
from actorq.bench.suites.overload.actors import Sink
from actorq.bench.suites.overload.params import FAST_OFF, FAST_ON, REPLY_TIMEOUT


def fast_tells(system: actorq.ActorSystem, sink: actorq.ActorRef[Sink], n: int,
               waits: list[int]) -> float:
    """Tell *n* small messages, then one call that returns how many arrived; msg/s.

    Appends to *waits* how often a producer waited for credit meanwhile.
    """
    before = system.metrics()["actors"]["sink"].get("waits", 0)
    tell = sink.tell
    start = time.perf_counter()
    for i in range(n):
        tell(("small", i, 1.5))
    got = sink.count().result(timeout=REPLY_TIMEOUT)
    elapsed = time.perf_counter() - start
    waits.append(system.metrics()["actors"]["sink"].get("waits", 0) - before)
    if got != n:
        msg = f"fast path (window={system.config.window}): the sink counted {got} of {n}"
        raise RuntimeError(msg)
    return n / elapsed


def run_fast_path(p: Mapping[str, Any]) -> tuple[list[BenchResult], dict[str, list[int]]]:
    """Tell throughput with the default window and with ``window=10**9``, interleaved.

    Two systems are alive at once, created one after the other and without warm spares:
    nothing forks while the runs are timed.
    """
    n = p["tells"]
    window_on = p.get("window") or _default_window()
    waits: dict[str, list[int]] = {FAST_ON: [], FAST_OFF: []}
    group = "tell fast path"
    note = f"{n:,} tells of a small tuple, then one call to sync"
    with contextlib.ExitStack() as stack:
        refs = []
        for window in (window_on, 10**9):
            system = stack.enter_context(actorq.ActorSystem(
                warm_spares=0, call_timeout=REPLY_TIMEOUT, window=window))
            sink = system.spawn(Sink, name="sink")
            sink.count().result(timeout=REPLY_TIMEOUT)
            refs.append((system, sink))
        (on_sys, on), (off_sys, off) = refs
        cases = [
            Case(FAST_ON, fast_tells, (on_sys, on, n, waits[FAST_ON]), unit="msg/s",
                 self_timed=True, higher_is_better=True, group=group,
                 note=f"{note}; window={window_on}"),
            Case(FAST_OFF, fast_tells, (off_sys, off, n, waits[FAST_OFF]), unit="msg/s",
                 self_timed=True, higher_is_better=True, group=group,
                 note=f"{note}; window=10**9"),
        ]
        results = measure_interleaved(cases, repeats=p["fast_repeats"], warmup=1)
    for key in waits:  # the warm-up's count is not reported
        del waits[key][0]
    return results, waits


def _default_window() -> int:
    from actorq._config import SystemConfig

    return SystemConfig().window
