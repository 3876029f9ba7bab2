"""The ``overload`` suite: a slow actor offered 10x its capacity, beside an unbounded mp.Queue.

    actorq bench overload [--quick] [--repeats N] [--out DIR]
    python benchmarks/bench_overload.py [--quick] [--results-dir DIR]   (the same)

A consumer whose handler burns a fixed CPU time per message (200 µs of its thread's CPU
time, ``time.thread_time``) is measured in one run:

1. Unloaded: its rate R when one producer keeps its mailbox full (fewer messages than
   the credit window, so that producer never waits): the rate over the middle 80% of
   the messages, from the consumer's own clock. The same for a consumer process reading
   a ``multiprocessing.Queue``. Interleaved repeats.
2. Overload: producers offer 10 x R (the actorq consumer's R, for every case) for 20 s
   (``--quick``: 5 s): 4 threads of this process and 2 producer processes (actors for
   actorq), each paced at a sixth of the offered rate and catching up when it fell
   behind, so an actorq producer that waits for credit sends again at once when credit
   comes. Every 0.25 s: the consumer's handled count (throughput), the RSS of this
   process, of the consumer and of the producer processes, and how many messages wait
   (actorq: in flight, from ``system.metrics()``; mp.Queue: ``qsize()``). Cases:

   - actorq with its default fixed credit window (``SystemConfig.window``);
   - actorq with the adaptive window (``ActorOptions(window_target=50 ms)``);
   - ``multiprocessing.Queue``: ``put`` never waits, so the backlog grows in the
     producers' memory (each process's feeder-thread buffer) and in the queue;
   - Ray's ``max_pending_calls`` when ``ray`` is importable (reported as skipped if not).

   Before the overload each actorq producer process sends one message, handled while
   the consumer is idle, so that every channel is open when it starts. Each message
   carries ``time.time()`` taken just before the send call (so a wait for credit counts
   as latency); the consumer records, per message, when its handler ended, ``now -
   stamp`` and the producer. Latency is reported over the messages handled during the
   overload (after the 1 s warm-up), over every admitted message (those handled after
   the overload too), and per producer, with each producer's share of the throughput.
   After the overload the actorq consumer drains what was admitted and every message is
   checked to have been handled exactly once, in order per producer; the mp.Queue
   consumer stops working and only counts (and checks) the backlog it drains.
3. Fast path: ``tell`` throughput (200k small messages, then one call to sync) with
   flow control on (the default window) and effectively off (``window=10**9``: the
   credit check never waits), each repeat in a fresh system, the two interleaved.

Its report adds overload.png (matplotlib, from the ``plot`` extra; the plot is skipped
with a note when it is missing).

The counters and per-message records live in a file mapping under /dev/shm that the
consumer (actor, process or Ray worker alike) writes and this process reads, so that
sampling never sends a message to a consumer that is buried under its backlog. The
consumer touches the whole mapping before it starts, so the records do not show up as
RSS growth. Under forkserver every new process imports this package again, so the
top-level imports of its modules stay light (matplotlib is imported where the plot is
drawn).

The modules, each importing only those above it: ``params`` (parameters, case names),
``record`` (the shared record, pacing), ``actors``, ``peer`` (the mp.Queue processes),
``unloaded`` (step 1), ``harness`` (sampling, producer threads, bookkeeping), ``cases``
(step 2), ``fastpath`` (step 3), ``summary`` (figures, verdicts), ``report`` (tables,
observations, plot); this package runs them all and registers the suite.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from actorq.bench import BenchResult
from actorq.bench.suite import Plot, Suite, SuiteOptions, SuiteReport
from actorq.bench.suites.overload.cases import (
    actorq_overload,
    queue_overload,
    ray_missing,
    ray_overload,
)
from actorq.bench.suites.overload.fastpath import run_fast_path
from actorq.bench.suites.overload.params import (
    ADAPTIVE,
    CASES,
    FAST_OFF,
    FAST_ON,
    FIXED,
    FULL,
    MPQ,
    QUICK,
    RAY,
    REPEAT_KEYS,
    UNLOADED_ACTORQ,
    UNLOADED_MPQ,
)
from actorq.bench.suites.overload.report import for_report, json_ready, overload_sections, plot
from actorq.bench.suites.overload.summary import overload_results, summarize, verdicts
from actorq.bench.suites.overload.unloaded import run_unloaded

__all__ = [
    "ADAPTIVE",
    "CASES",
    "FAST_OFF",
    "FAST_ON",
    "FIXED",
    "FULL",
    "MPQ",
    "QUICK",
    "RAY",
    "REPEAT_KEYS",
    "SUITE",
    "UNLOADED_ACTORQ",
    "UNLOADED_MPQ",
    "ray_missing",
    "run_all",
    "run_overload",
    "run_overloads",
]


def run_overloads(p: Mapping[str, Any], rate_ref: float, rate_ref_mpq: float,
                  only: Sequence[str] = CASES,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run the overload cases in *only*; a skipped case maps to ``{"skipped": reason}``.

    A Ray failure is recorded as a skip (that code path was never run by its author);
    any other failure propagates.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in only:
        if progress is not None:
            progress(f"overload: {name} ({p['overload_s']:g} s)")
        if name == FIXED:
            out[name] = summarize(actorq_overload(p, rate_ref, adaptive=False), rate_ref, p)
        elif name == ADAPTIVE:
            out[name] = summarize(actorq_overload(p, rate_ref, adaptive=True), rate_ref, p)
        elif name == MPQ:
            out[name] = summarize(queue_overload(p, rate_ref), rate_ref_mpq, p)
        elif name == RAY:
            reason = ray_missing()
            if reason is not None:
                out[name] = {"skipped": reason}
                continue
            try:
                out[name] = summarize(ray_overload(p, rate_ref), rate_ref, p)
            except Exception as exc:
                out[name] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
        else:
            msg = f"unknown overload case {name!r}"
            raise ValueError(msg)
    return out


def run_all(p: Mapping[str, Any], only: Sequence[str] = CASES, fast: bool = True,
            progress: Callable[[str], None] | None = None,
            ) -> tuple[list[BenchResult], dict[str, dict[str, Any]], dict[str, list[int]]]:
    """Unloaded rates, the overload cases in *only*, then (with *fast*) the fast path."""
    say = progress or (lambda _text: None)
    say("unloaded rates")
    results = run_unloaded(p)
    by = {r.name: r for r in results}
    rate_ref, rate_ref_mpq = by[UNLOADED_ACTORQ].median, by[UNLOADED_MPQ].median
    summaries = run_overloads(p, rate_ref, rate_ref_mpq, only, progress)
    results += overload_results(summaries, p)
    waits: dict[str, list[int]] = {}
    if fast:
        say("fast path")
        fast_results, waits = run_fast_path(p)
        results += fast_results
    return results, summaries, waits


def run_overload(options: SuiteOptions) -> SuiteReport:
    """Unloaded rates, the overloads, the fast path; return the report with its plot."""
    p = options.parameters(FULL, QUICK, REPEAT_KEYS)
    results, summaries, waits = run_all(p, progress=options.say)
    checks = verdicts(summaries, results, p)
    title = "actorq overload benchmark" + (" (quick)" if options.quick else "")
    extra = {"overload": json_ready(for_report(summaries)),
             "fast_path_credit_waits": dict(waits)}
    graph = Plot("overload.png", "memory, throughput, backlog and latency over time",
                 lambda path: _draw(summaries, path, title))
    return SuiteReport("overload", title, results, checks, meta={"parameters": p},
                       extra=extra, sections=overload_sections(summaries, waits),
                       plots=[graph])


def _draw(summaries: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    why_not = plot(summaries, path, title)
    if why_not is not None:
        raise RuntimeError(why_not)


SUITE = Suite("overload", "a slow actor offered 10x its capacity (fixed and adaptive "
              "window) vs an unbounded mp.Queue; memory, latency, fairness, fast-path cost",
              run_overload, repeat_keys=REPEAT_KEYS)

# Ship this package's actor classes by value (as for a script's own classes; cloudpickle
# covers the submodules of a registered package), so that an actor process (a warm spare,
# a restart) does not import this package and actorq.bench first: that import would be
# counted in the restart times and the idle actor's memory.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
