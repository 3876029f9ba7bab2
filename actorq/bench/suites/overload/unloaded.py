"""Step 1: each consumer's unloaded rate R, actorq and mp.Queue side by side."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import actorq
from actorq.bench import BenchResult, Case, measure_interleaved
from actorq.bench.suites.overload.actors import Consumer
from actorq.bench.suites.overload.params import (
    REPLY_TIMEOUT,
    UNLOADED_ACTORQ,
    UNLOADED_MPQ,
    system_options,
)
from actorq.bench.suites.overload.peer import QueuePeer
from actorq.bench.suites.overload.record import MAX_PRODUCERS, Recorder, recorder, wait_for


def unloaded_once(send: Callable[[Any], None], rec: Recorder, ids: Iterator[int], n: int,
                  timeout: float) -> float:
    """One producer sends *n* messages as fast as it can; return the consumer's rate
    (msg/s) over the middle 80% of them, from its own handled-at times."""
    producer = next(ids)
    first = rec.count()
    for seq in range(n):
        send((producer, seq, time.time()))
    wait_for(lambda: rec.count() >= first + n, timeout, "unloaded run")
    at = sorted(rec.read(first, first + n)[0])
    lo, hi = n // 10, n - n // 10 - 1
    if hi <= lo or at[hi] <= at[lo]:
        msg = f"unloaded run of {n} messages is too short to time"
        raise RuntimeError(msg)
    return (hi - lo) / (at[hi] - at[lo])


def run_unloaded(p: Mapping[str, Any]) -> list[BenchResult]:
    """The consumers' rate R, actorq and mp.Queue side by side (interleaved repeats)."""
    cost = p["cost_us"] * 1e-6
    n = max(200, int(p["unloaded_s"] / cost))
    group = "unloaded consumer rate R"
    note = (f"{n:,} messages from one producer, mailbox never empty; rate over the middle "
            f"80%; handler burns {p['cost_us']:g} µs CPU")
    options = system_options(p)
    # The system comes first: actorq configures the fork server's preload, which only
    # takes effect if nothing started the fork server before.
    with actorq.ActorSystem(**options) as system, recorder() as rec_a, recorder() as rec_q:
        consumer = system.spawn(Consumer, rec_a.path, cost, name="consumer")
        consumer.pid().result(timeout=REPLY_TIMEOUT)
        with QueuePeer(rec_q, cost) as peer:
            ids_a, ids_q = itertools.count(MAX_PRODUCERS - 16), itertools.count(MAX_PRODUCERS - 16)
            timeout = REPLY_TIMEOUT + 10 * n * cost
            cases = [
                Case(UNLOADED_ACTORQ, unloaded_once, (consumer.tell, rec_a, ids_a, n, timeout),
                     unit="msg/s", self_timed=True, higher_is_better=True, group=group,
                     note=note),
                Case(UNLOADED_MPQ, unloaded_once, (peer.put, rec_q, ids_q, n, timeout),
                     unit="msg/s", self_timed=True, higher_is_better=True, group=group,
                     note=note),
            ]
            results = measure_interleaved(cases, repeats=p["unloaded_repeats"], warmup=0)
            peer.drain(REPLY_TIMEOUT)
    return results
