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
RSS growth. Under forkserver every new process imports this script again, so the
top-level imports stay light (matplotlib is imported where the plot is drawn).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

import actorq
from actorq.bench import (
    BenchResult,
    Case,
    Verdict,
    format_value,
    measure_interleaved,
    percentile,
)
from actorq.bench.mapped import MappedFile
from actorq.bench.suite import Plot, Suite, SuiteOptions, SuiteReport

MIB = 2**20
REPLY_TIMEOUT = 60.0  # every wait is bounded: a wedged consumer fails the run, never hangs it
JOIN_TIMEOUT = 5.0
MIN_SLEEP = 0.001  # a paced producer ahead of schedule sleeps at least this long

FULL: dict[str, Any] = {
    "cost_us": 200.0, "offered_x": 10.0, "overload_s": 20.0, "interval_s": 0.25,
    "warmup_s": 1.0, "threads": 4, "producer_procs": 2, "unloaded_s": 1.5,
    "unloaded_repeats": 3, "adaptive_target_s": 0.05, "window": None,
    "rss_growth_mib": 5.0, "tells": 200_000, "tell_warmup": 20_000, "fast_repeats": 7,
    "drain_timeout_s": 120.0, "ray_max_pending": 1024, "open_channels_first": True,
}
# Seconds, for CI and a first look: a 1.5 s overload shows the shape, not the figures.
QUICK: dict[str, Any] = {
    **FULL, "overload_s": 1.5, "warmup_s": 0.3, "interval_s": 0.1, "unloaded_s": 0.3,
    "unloaded_repeats": 1, "tells": 10_000, "tell_warmup": 1000, "fast_repeats": 2,
    "drain_timeout_s": 60.0,
}
REPEAT_KEYS = ("unloaded_repeats", "fast_repeats")

# The cases; verdicts and the plot refer to them by these names.
FIXED = "actorq fixed window"
ADAPTIVE = "actorq adaptive window"
MPQ = "mp.Queue (unbounded)"
RAY = "Ray max_pending_calls"
CASES = (FIXED, ADAPTIVE, MPQ, RAY)
UNLOADED_ACTORQ = "actorq consumer unloaded"
UNLOADED_MPQ = "mp.Queue consumer unloaded"
FAST_ON = "tell, flow control on"
FAST_OFF = "tell, flow control off"
COLORS = {FIXED: "tab:blue", ADAPTIVE: "tab:green", MPQ: "tab:red", RAY: "tab:purple"}


# -- the shared record: counters and per-message latencies in a file mapping ---------------

# int64 slots at the start of the mapping
COUNT = 0  # messages handled with their work done (one record each)
ANOMALIES = 1  # messages whose sequence number was not the next of their producer
DISCARDED = 2  # messages drained without work (mp.Queue after the overload)
READY = 3  # the consumer mapped and touched everything
HANDLED = 8  # + producer id: messages of that producer handled or discarded
SENT = 64  # + producer id: messages that producer process sent (mp.Queue producers)
MAX_PRODUCERS = SENT - HANDLED
OPENER = 32  # producer ids from here on: the messages that open actorq's channels
SLOTS = 128
RECORD_CAPACITY = 1 << 18  # records kept, a ring
FIELDS = 3  # per record: handled_at (time.time()), latency (s), producer id



class Recorder(MappedFile):
    """Counters and per-message records of one consumer, in a file mapping.

    One consumer writes (``record``); any process that maps the same path reads.
    A message's record is written before ``COUNT`` moves past it (x86 keeps stores in
    order), so a reader sees complete records below ``COUNT``.
    """

    def __init__(self, path: str, capacity: int = RECORD_CAPACITY) -> None:
        super().__init__(path, SLOTS * 8 + capacity * 8 * FIELDS)
        self.capacity = capacity
        self.slots = self.keep(self.buf[: SLOTS * 8].cast("q"))
        self.records = self.keep(self.buf[SLOTS * 8:].cast("d"))
        self._next: dict[int, int] = {}

    @classmethod
    def create(cls, capacity: int = RECORD_CAPACITY) -> Recorder:
        """Make a zero-filled mapping file and map it."""
        return cls(cls.make(SLOTS * 8 + capacity * 8 * FIELDS, "overload.rec"), capacity)

    def touch(self) -> None:
        """Write every page now, so that recording later does not grow this process's RSS."""
        chunk = 1 << 20
        for start in range(0, len(self.buf), chunk):
            end = min(start + chunk, len(self.buf))
            self.buf[start:end] = bytes(end - start)
        self.slots[READY] = 1

    def record(self, producer: int, seq: int, stamp: float, keep: bool = True) -> None:
        """Count one message of *producer*; with *keep*, record its latency too."""
        slots = self.slots
        expected = self._next.get(producer, 0)
        if seq != expected:
            slots[ANOMALIES] += 1
        self._next[producer] = seq + 1
        slots[HANDLED + producer] += 1
        if keep:
            now = time.time()
            i = slots[COUNT]
            j = (i % self.capacity) * FIELDS
            records = self.records
            records[j] = now
            records[j + 1] = now - stamp
            records[j + 2] = producer
            slots[COUNT] = i + 1
        else:
            slots[DISCARDED] += 1

    def count(self) -> int:
        """Messages handled with their work done so far."""
        return int(self.slots[COUNT])

    def read(self, start: int = 0, end: int | None = None,
             ) -> tuple[list[float], list[float], list[int]]:
        """(handled_at, latency, producer) of messages ``start .. end`` still in the ring."""
        end = self.count() if end is None else end
        start = max(start, end - self.capacity)
        flat = self.records.tolist()
        at: list[float] = []
        lat: list[float] = []
        who: list[int] = []
        for i in range(start, end):
            j = (i % self.capacity) * FIELDS
            at.append(flat[j])
            lat.append(flat[j + 1])
            who.append(int(flat[j + 2]))
        return at, lat, who

    def handled_by(self, ids: Sequence[int]) -> list[int]:
        """Messages handled (or discarded) so far, per producer in *ids*."""
        return [int(self.slots[HANDLED + i]) for i in ids]

@contextlib.contextmanager
def recorder() -> Iterator[Recorder]:
    rec = Recorder.create()
    try:
        yield rec
    finally:
        rec.unlink()


def burn(seconds: float) -> None:
    """Spend *seconds* of this thread's CPU time (not wall time: preemption is not work)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll *condition* every 2 ms; return the seconds it took; TimeoutError past *timeout*."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            msg = f"{what}: not done within {timeout:g} s"
            raise TimeoutError(msg)
        time.sleep(0.002)
    return time.monotonic() - start


def paced_send(send: Callable[[int], None], rate: float, duration: float,
               refused: type[BaseException] = actorq.Backpressure) -> dict[str, float]:
    """Offer messages at *rate* per second for *duration* seconds: ``send(seq)`` each.

    Message k is due at ``k / rate``; a producer that fell behind (it waited for
    credit) sends at once until it is on schedule again. A send that raises *refused*
    was not admitted: its sequence number is used again by the next message.
    """
    start = time.perf_counter()
    end = start + duration
    seq = attempts = refusals = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = start + attempts / rate
        if now < due:
            time.sleep(max(due - now, MIN_SLEEP))
            continue
        try:
            send(seq)
        except refused:
            refusals += 1
        else:
            seq += 1
        attempts += 1
    return {"sent": seq, "refused": refusals, "attempts": attempts,
            "scheduled": int(duration * rate), "elapsed": time.perf_counter() - start}


# -- actors -------------------------------------------------------------------------------

class Consumer(actorq.Actor):
    """Burns *cost* seconds of CPU per told message; records it in the shared file."""

    def __init__(self, path: str, cost: float) -> None:
        self.recorder = Recorder(path)
        self.recorder.touch()
        self.cost = cost

    def receive(self, message: tuple[int, int, float]) -> None:
        producer, seq, stamp = message
        burn(self.cost)
        self.recorder.record(producer, seq, stamp)

    def pid(self) -> int:
        return os.getpid()


class Producer(actorq.Actor):
    """Tells a target paced messages for a while (a sync handler: it waits for credit)."""

    def open(self, target: actorq.ActorRef[Consumer], producer: int) -> None:
        """Tell one message, which opens this process's channel to *target*."""
        target.tell((producer, 0, time.time()))

    def produce(self, target: actorq.ActorRef[Consumer], producer: int, rate: float,
                duration: float) -> dict[str, float]:
        tell = target.tell
        return paced_send(lambda seq: tell((producer, seq, time.time())), rate, duration)

    def pid(self) -> int:
        return os.getpid()


class Sink(actorq.Actor):
    """Counts what it is told (the fast-path benchmark)."""

    def __init__(self) -> None:
        self.received = 0

    def receive(self, message: Any) -> None:
        self.received += 1

    def count(self) -> int:
        """How many messages arrived since the last count; start again."""
        n, self.received = self.received, 0
        return n


# -- multiprocessing.Queue peer -----------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Best effort: have the kernel SIGKILL this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def queue_consumer_main(queue: Any, path: str, cost: float, discard: Any) -> None:
    """The mp.Queue consumer: work on each message until *discard* is set, then only
    count (and check) what arrives, until ``None``."""
    _die_with_parent()
    rec = Recorder(path)
    rec.touch()
    get = queue.get
    is_set = discard.is_set
    working = True
    while (message := get()) is not None:
        producer, seq, stamp = message
        if working and not is_set():
            burn(cost)
            rec.record(producer, seq, stamp)
        else:  # after the overload: drain the backlog without the work, still checking it
            working = False
            rec.record(producer, seq, stamp, keep=False)
    rec.close()


def queue_producer_main(queue: Any, path: str, producer: int, rate: float, duration: float,
                        go: Any) -> None:
    """An mp.Queue producer process: ``put`` at *rate* (it never waits), then exit
    (which waits until its feeder thread has written its backlog to the pipe)."""
    _die_with_parent()
    rec = Recorder(path)
    if not go.wait(REPLY_TIMEOUT):
        return
    put = queue.put
    out = paced_send(lambda seq: put((producer, seq, time.time())), rate, duration)
    rec.slots[SENT + producer] = int(out["sent"])
    rec.close()


class QueuePeer:
    """A consumer process reading a ``multiprocessing.Queue`` (forkserver), and the
    producer processes that feed it; ``close()`` drains and joins them all."""

    def __init__(self, rec: Recorder, cost: float) -> None:
        self.ctx: Any = multiprocessing.get_context("forkserver")
        self.rec = rec
        self.queue = self.ctx.Queue()
        self.discard = self.ctx.Event()
        self.go = self.ctx.Event()
        self.producers: list[Any] = []
        self.consumer = self.ctx.Process(target=queue_consumer_main,
                                         args=(self.queue, rec.path, cost, self.discard),
                                         name="bench:overload-mpq-consumer", daemon=True)
        self.consumer.start()
        self._closed = False
        wait_for(lambda: rec.slots[READY] == 1, REPLY_TIMEOUT, "mp.Queue consumer start")

    def put(self, message: Any) -> None:
        self.queue.put(message)

    def start_producers(self, ids: Sequence[int], rate: float, duration: float) -> None:
        """Start producer processes; they wait for ``go``."""
        for producer in ids:
            proc = self.ctx.Process(target=queue_producer_main,
                                    args=(self.queue, self.rec.path, producer, rate, duration,
                                          self.go),
                                    name=f"bench:overload-mpq-producer-{producer}",
                                    daemon=True)
            proc.start()
            self.producers.append(proc)

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.producers]

    def drain(self, timeout: float) -> float:
        """Stop the work, let the producers exit (their backlogs flushed into the pipe),
        then drain everything; return the seconds it took."""
        start = time.monotonic()
        self.discard.set()
        for proc in self.producers:
            proc.join(max(0.1, timeout - (time.monotonic() - start)))
        self.queue.put(None)
        self.consumer.join(max(0.1, timeout - (time.monotonic() - start)))
        if self.consumer.exitcode is None:
            msg = f"mp.Queue consumer still draining after {timeout:g} s"
            raise TimeoutError(msg)
        return time.monotonic() - start

    def close(self) -> None:
        """Join (then terminate, then kill) every process; close the queue. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.go.set()  # producers still waiting for the start would wait REPLY_TIMEOUT
        self.discard.set()
        procs = [*self.producers, self.consumer]
        if self.consumer.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                self.queue.put(None)
        clean = True
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            for escalate in (proc.terminate, proc.kill):
                if proc.exitcode is not None:
                    break
                clean = False
                escalate()
                proc.join(JOIN_TIMEOUT)
        if not clean:  # nobody reads the pipe any more: our feeder must not wait for it
            self.queue.cancel_join_thread()
        self.queue.close()
        if clean:
            self.queue.join_thread()
        for proc in procs:
            proc.close()

    def __enter__(self) -> QueuePeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- unloaded rate --------------------------------------------------------------------------

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


def system_options(p: Mapping[str, Any]) -> dict[str, Any]:
    """No warm spare (its start would compete for the CPUs during a run)."""
    options: dict[str, Any] = {"warm_spares": 0, "call_timeout": REPLY_TIMEOUT}
    if p.get("window") is not None:
        options["window"] = p["window"]
    return options


# -- overload -------------------------------------------------------------------------------

def rss(pid: int | None) -> float:
    """Resident set size of *pid* in MiB (nan when gone)."""
    if pid is None:
        return math.nan
    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except psutil.Error:
        return math.nan


def cpu_seconds(pids: Sequence[int | None]) -> float:
    """User + system CPU seconds used so far by the processes *pids* (gone ones: 0)."""
    total = 0.0
    for pid in pids:
        if pid is None:
            continue
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class CpuMeter:
    """CPU use of groups of processes over a stretch, in % of one core."""

    def __init__(self, groups: Mapping[str, Sequence[int | None]]) -> None:
        self.groups = dict(groups)
        self.start = time.monotonic()
        self.before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}

    def percent(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.start
        return {name: (cpu_seconds(pids) - self.before[name]) / elapsed * 100
                for name, pids in self.groups.items()}


def sample_series(t0: float, duration: float, interval: float,
                  read: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Call *read* every *interval* seconds from *t0* (``time.time()``) to *duration*."""
    rows = []
    k = 0
    while True:
        row = read()
        row["t"] = time.time() - t0
        rows.append(row)
        if row["t"] >= duration:
            return rows
        k += 1
        delay = t0 + min(k * interval, duration) - time.time()
        if delay > 0:
            time.sleep(delay)


def start_threads(target: Callable[..., dict[str, float]], ids: Sequence[int],
                  args: tuple[Any, ...], go: threading.Event,
                  out: dict[int, Any]) -> list[threading.Thread]:
    """Producer threads of this process, each ``target(producer, *args)`` after *go*."""

    def main(producer: int) -> None:
        go.wait()
        try:
            out[producer] = target(producer, *args)
        except BaseException as exc:  # re-raised by the main thread
            out[producer] = exc

    threads = [threading.Thread(target=main, args=(i,), name=f"bench-producer-{i}",
                                daemon=True) for i in ids]
    for thread in threads:
        thread.start()
    return threads


def join_threads(threads: Sequence[threading.Thread], out: Mapping[int, Any],
                 timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            msg = f"{thread.name} still sending {timeout:g} s after the end"
            raise TimeoutError(msg)
    for value in out.values():
        if isinstance(value, BaseException):
            raise value


def layout(p: Mapping[str, Any], rate_ref: float) -> dict[str, Any]:
    """Producer ids and per-producer rate for an overload run."""
    threads = list(range(p["threads"]))
    procs = list(range(p["threads"], p["threads"] + p["producer_procs"]))
    offered = p["offered_x"] * rate_ref
    return {"thread_ids": threads, "proc_ids": procs, "offered": offered,
            "rate_each": offered / (len(threads) + len(procs))}


def actorq_overload(p: Mapping[str, Any], rate_ref: float, adaptive: bool) -> dict[str, Any]:
    """Overload an actorq consumer; return the time series and the bookkeeping."""
    cost, duration = p["cost_us"] * 1e-6, p["overload_s"]
    lay = layout(p, rate_ref)
    ids = [*lay["thread_ids"], *lay["proc_ids"]]
    options = system_options(p)
    kwargs: dict[str, Any] = {}
    if adaptive:
        kwargs["actor_options"] = actorq.ActorOptions(window_target=p["adaptive_target_s"])
    with actorq.ActorSystem(**options) as system, recorder() as rec:
        window = system.config.window
        consumer = system.spawn(Consumer, rec.path, cost, name="consumer", **kwargs)
        producers = [system.spawn(Producer, name=f"producer-{i}") for i in lay["proc_ids"]]
        consumer_pid = consumer.pid().result(timeout=REPLY_TIMEOUT)
        producer_pids = [ref.pid().result(timeout=REPLY_TIMEOUT) for ref in producers]
        if system.pid_of(consumer) != consumer_pid:
            msg = f"pid_of(consumer) is {system.pid_of(consumer)}, the actor says {consumer_pid}"
            raise RuntimeError(msg)
        me = os.getpid()
        tell = consumer.tell
        # Open every channel while the consumer is idle (one message from each producer
        # process, ids after the producers'), so that the overload measures the steady
        # state: a channel opened while the consumer is busy is not read until it idles
        # (see the report's notes).
        openers = list(range(OPENER, OPENER + 1 + len(producers)))
        if p["open_channels_first"]:
            tell((openers[0], 0, time.time()))
            for ref, i in zip(producers, openers[1:], strict=True):
                ref.open(consumer, i).result(timeout=REPLY_TIMEOUT)
            wait_for(lambda: rec.count() >= len(openers), REPLY_TIMEOUT, "opening channels")
        opened = rec.count()

        def thread_send(producer: int, rate: float, seconds: float) -> dict[str, float]:
            return paced_send(lambda seq: tell((producer, seq, time.time())), rate, seconds)

        def read() -> dict[str, Any]:
            m = system.metrics()["actors"]["consumer"]
            return {"handled": rec.count(), "user_rss": rss(me), "consumer_rss": rss(consumer_pid),
                    "producers_rss": sum(rss(pid) for pid in producer_pids),
                    "by_producer": rec.handled_by(ids),
                    "queued": float(m.get("in_flight", math.nan)),
                    "window": float(m.get("window", math.nan)),
                    "waiting": float(m.get("waiting_producers", math.nan))}

        go, out = threading.Event(), dict[int, Any]()
        threads = start_threads(thread_send, lay["thread_ids"], (lay["rate_each"], duration),
                                go, out)
        meter = CpuMeter({"user": [me], "producers": producer_pids, "consumer": [consumer_pid]})
        t0 = time.time()
        go.set()
        replies = [ref.produce(consumer, i, lay["rate_each"], duration)
                   for ref, i in zip(producers, lay["proc_ids"], strict=True)]
        series = sample_series(t0, duration, p["interval_s"], read)
        cpu = meter.percent()
        join_threads(threads, out, REPLY_TIMEOUT)
        for i, reply in zip(lay["proc_ids"], replies, strict=True):
            out[i] = reply.result(timeout=REPLY_TIMEOUT)
        sent = {i: int(v["sent"]) for i, v in out.items()}
        admitted = sum(sent.values())
        wait_for(lambda: rec.count() >= admitted + opened, p["drain_timeout_s"],
                 "actorq consumer draining what was admitted")
        drain = time.time() - (t0 + duration)
        time.sleep(0.05)  # anything handled beyond what was admitted would show now
        flow = system.metrics()
        entry = flow["actors"]["consumer"]
        books = bookkeeping(rec, sent, out, opened)
        books.update(drain_s=drain, window=window, cpu=cpu, channels=1 + len(producers),
                     credit_waits=entry.get("waits"), wait_seconds=entry.get("wait_seconds"),
                     backpressure=entry.get("backpressure"),
                     lost_wakeups=entry.get("lost_wakeups", 0)
                     + flow["system"].get("lost_wakeups", 0),
                     consumer_restarts=entry.get("restarts"))
        records = rec.read()
    return {"series": series, "records": records, "t0": t0, "books": books, "layout": lay}


def bookkeeping(rec: Recorder, sent: Mapping[int, int],
                out: Mapping[int, Mapping[str, float]], opened: int = 0) -> dict[str, Any]:
    """Exactly-once check: per producer, handled (or discarded) == sent; in order.

    *opened*: messages before the overload (they opened the channels), not counted.
    """
    handled = {i: int(rec.slots[HANDLED + i]) for i in sent}
    return {"sent": sum(sent.values()), "handled": sum(handled.values()),
            "worked": rec.count() - opened, "discarded": int(rec.slots[DISCARDED]),
            "anomalies": int(rec.slots[ANOMALIES]),
            "mismatched_producers": sorted(i for i in sent if handled[i] != sent[i]),
            "refused": int(sum(v["refused"] for v in out.values())),
            "attempts": int(sum(v["attempts"] for v in out.values())),
            "scheduled": int(sum(v["scheduled"] for v in out.values()))}


def queue_overload(p: Mapping[str, Any], rate_ref: float) -> dict[str, Any]:
    """The same overload on an unbounded multiprocessing.Queue."""
    cost, duration = p["cost_us"] * 1e-6, p["overload_s"]
    lay = layout(p, rate_ref)
    ids = [*lay["thread_ids"], *lay["proc_ids"]]
    with recorder() as rec, QueuePeer(rec, cost) as peer:
        peer.start_producers(lay["proc_ids"], lay["rate_each"], duration)
        me, consumer_pid, producer_pids = os.getpid(), peer.consumer.pid, peer.pids()
        put = peer.queue.put

        def thread_send(producer: int, rate: float, seconds: float) -> dict[str, float]:
            return paced_send(lambda seq: put((producer, seq, time.time())), rate, seconds)

        def read() -> dict[str, Any]:
            return {"handled": rec.count(), "user_rss": rss(me), "consumer_rss": rss(consumer_pid),
                    "producers_rss": sum(rss(pid) for pid in producer_pids),
                    "by_producer": rec.handled_by(ids),
                    "queued": float(peer.queue.qsize())}

        go, out = threading.Event(), dict[int, Any]()
        threads = start_threads(thread_send, lay["thread_ids"], (lay["rate_each"], duration),
                                go, out)
        meter = CpuMeter({"user": [me], "producers": producer_pids, "consumer": [consumer_pid]})
        t0 = time.time()
        go.set()
        peer.go.set()
        series = sample_series(t0, duration, p["interval_s"], read)
        cpu = meter.percent()
        join_threads(threads, out, REPLY_TIMEOUT)
        peer.drain(p["drain_timeout_s"])
        drain = time.time() - (t0 + duration)
        for i in lay["proc_ids"]:
            out[i] = {"sent": rec.slots[SENT + i], "refused": 0, "attempts": rec.slots[SENT + i],
                      "scheduled": int(duration * lay["rate_each"])}
        sent = {i: int(v["sent"]) for i, v in out.items()}
        books = bookkeeping(rec, sent, out)
        books.update(drain_s=drain, cpu=cpu, peak_qsize=max(r["queued"] for r in series))
        records = rec.read()
    return {"series": series, "records": records, "t0": t0, "books": books, "layout": lay}


class RayConsumer:
    """Ray's consumer: the same work and records as ``Consumer``."""

    def __init__(self, path: str, cost: float) -> None:
        self.recorder = Recorder(path)
        self.recorder.touch()
        self.cost = cost

    def receive(self, message: tuple[int, int, float]) -> None:
        producer, seq, stamp = message
        burn(self.cost)
        self.recorder.record(producer, seq, stamp)

    def pid(self) -> int:
        return os.getpid()


def ray_missing() -> str | None:
    """Why the Ray case cannot run, or None if ray is importable."""
    if importlib.util.find_spec("ray") is None:
        return ("ray is not installed (pip install ray): the same overload against an actor "
                "with max_pending_calls was not measured")
    return None


def ray_overload(p: Mapping[str, Any], rate_ref: float) -> dict[str, Any]:
    """The overload against a Ray actor with ``max_pending_calls``: a caller past the
    limit gets ``PendingCallsLimitExceeded`` and retries after 0.5 ms (so it waits,
    like a blocked ``tell``). All producers are threads of this process.

    Never run by its author (ray was not installed); a failure is reported as a skip.
    """
    import ray

    cost, duration = p["cost_us"] * 1e-6, p["overload_s"]
    lay = layout(p, rate_ref)
    ids = [*lay["thread_ids"], *lay["proc_ids"]]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with recorder() as rec:
            handle = ray.remote(RayConsumer).options(
                max_pending_calls=p["ray_max_pending"]).remote(rec.path, cost)
            consumer_pid = ray.get(handle.pid.remote(), timeout=REPLY_TIMEOUT)
            me = os.getpid()
            limit = ray.exceptions.PendingCallsLimitExceeded

            def thread_send(producer: int, rate: float, seconds: float) -> dict[str, float]:
                def send(seq: int) -> None:
                    message = (producer, seq, time.time())
                    while True:
                        try:
                            handle.receive.remote(message)
                            return
                        except limit:
                            time.sleep(0.0005)

                return paced_send(send, rate, seconds)

            def read() -> dict[str, Any]:
                return {"handled": rec.count(), "user_rss": rss(me),
                        "consumer_rss": rss(consumer_pid), "producers_rss": 0.0,
                        "by_producer": rec.handled_by(ids), "queued": math.nan}

            go, out = threading.Event(), dict[int, Any]()
            threads = start_threads(thread_send, ids, (lay["rate_each"], duration), go, out)
            meter = CpuMeter({"user": [me], "producers": [], "consumer": [consumer_pid]})
            t0 = time.time()
            go.set()
            series = sample_series(t0, duration, p["interval_s"], read)
            cpu = meter.percent()
            join_threads(threads, out, REPLY_TIMEOUT)
            sent = {i: int(v["sent"]) for i, v in out.items()}
            wait_for(lambda: rec.count() >= sum(sent.values()), p["drain_timeout_s"],
                     "Ray consumer draining")
            drain = time.time() - (t0 + duration)
            books = bookkeeping(rec, sent, out)
            books.update(drain_s=drain, cpu=cpu)
            records = rec.read()
            ray.kill(handle)
    finally:
        ray.shutdown()
    return {"series": series, "records": records, "t0": t0, "books": books, "layout": lay}


# -- summaries -------------------------------------------------------------------------------

def summarize(run: Mapping[str, Any], rate_ref: float, p: Mapping[str, Any]) -> dict[str, Any]:
    """Throughput, memory and latency figures of one overload run (JSON-ready)."""
    series, t0 = run["series"], run["t0"]
    warm, duration, interval = p["warmup_s"], p["overload_s"], p["interval_s"]
    # per-interval throughput, stamped at the interval's end
    rates = [(b["t"], (b["handled"] - a["handled"]) / (b["t"] - a["t"]))
             for a, b in itertools.pairwise(series) if b["t"] > a["t"]]
    steady = [r for t, r in rates if t - interval >= warm - 1e-9]
    # memory: from the first sample at or after the warm-up to the last
    base = next((r for r in series if r["t"] >= warm - 1e-9), series[0])
    last = series[-1]

    def growth(key: str) -> float:
        return float(last[key] - base[key])

    def slope(key: str) -> float:  # least squares, MiB per s, over the steady part
        pts = [(r["t"], r[key]) for r in series
               if r["t"] >= warm - 1e-9 and math.isfinite(r[key])]
        if len(pts) < 2:
            return math.nan
        mt = sum(t for t, _ in pts) / len(pts)
        mv = sum(v for _, v in pts) / len(pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        return sum((t - mt) * (v - mv) for t, v in pts) / den if den else math.nan

    at_all, lat_all, who_all = run["records"]
    keep = [i for i, w in enumerate(who_all) if w < OPENER]  # not the channel openers
    at = [at_all[i] for i in keep]
    lat = [lat_all[i] for i in keep]
    who = [who_all[i] for i in keep]
    lo, hi = t0 + warm, t0 + duration
    window_lat = [x for a, x in zip(at, lat, strict=True) if lo <= a <= hi]
    quarter = t0 + duration - (duration - warm) / 4
    last_quarter = [x for a, x in zip(at, lat, strict=True) if quarter <= a <= hi]
    # p99 of the messages handled in each sampling interval, the drain included
    buckets: dict[int, list[float]] = {}
    for a, x in zip(at, lat, strict=True):
        if a >= t0:
            buckets.setdefault(int((a - t0) / interval), []).append(x)
    p99_series = [((k + 1) * interval, percentile(v, 99)) for k, v in sorted(buckets.items())]
    # every admitted message, also those handled after the overload (the backlog an
    # mp.Queue consumer drains without work has no latency: it is left out there)
    books = run["books"]
    complete = books["worked"] >= books["sent"]
    # per producer: its share of what was handled during the overload, its latencies
    ids = [*run["layout"]["thread_ids"], *run["layout"]["proc_ids"]]
    first = next((r for r in series if r["t"] >= warm - 1e-9), series[0])["by_producer"]
    during = [b - a for a, b in zip(first, series[-1]["by_producer"], strict=True)]
    total = sum(during) or 1
    per_producer = {}
    for k, i in enumerate(ids):
        mine = [x for x, w in zip(lat, who, strict=True) if w == i]
        per_producer[i] = {"share": during[k] / total, "handled_during": during[k],
                           "p99": percentile(mine, 99), "max": max(mine, default=math.nan),
                           "process": "user" if i in run["layout"]["thread_ids"] else "own"}
    queued = [r["queued"] for r in series if math.isfinite(r.get("queued", math.nan))]
    windows = [r["window"] for r in series if "window" in r and r["t"] >= warm - 1e-9]
    return {
        "rate_ref": rate_ref,
        "offered": run["layout"]["offered"],
        "throughput_samples": steady,
        "throughput_median": percentile(steady, 50),
        "throughput_p10": percentile(steady, 10),
        "throughput_p90": percentile(steady, 90),
        "throughput_pct": 100 * percentile(steady, 50) / rate_ref,
        "user_rss_start": series[0]["user_rss"], "user_rss_base": base["user_rss"],
        "user_rss_end": last["user_rss"], "user_rss_growth": growth("user_rss"),
        "user_rss_slope": slope("user_rss"),
        "producers_rss_growth": growth("producers_rss"),
        "consumer_rss_growth": growth("consumer_rss"),
        "latency_n": len(window_lat),
        "latency_p50": percentile(window_lat, 50), "latency_p99": percentile(window_lat, 99),
        "latency_max": max(window_lat, default=math.nan),
        "latency_p99_last_quarter": percentile(last_quarter, 99),
        "latency_p99_series": p99_series,
        "admitted_complete": complete,
        "admitted_p50": percentile(lat, 50) if complete else math.nan,
        "admitted_p99": percentile(lat, 99) if complete else math.nan,
        "admitted_max": max(lat, default=math.nan) if complete else math.nan,
        "per_producer": per_producer,
        "queued_max": max(queued, default=math.nan),
        "queued_end": queued[-1] if queued else math.nan,
        "window_min": min(windows, default=math.nan),
        "window_max": max(windows, default=math.nan),
        "series": series, "books": books,
    }


def latency_cap(s: Mapping[str, Any]) -> float:
    """Seconds an admitted message can wait at most by the credit window: every channel's
    largest window (the system's ``window``, which an adaptive window never exceeds) full
    ahead of it, handled at the unloaded rate; +10% and +0.25 s of slack for the
    producer's own wait for credit, which the stamp includes."""
    books = s["books"]
    return float(books["channels"] * books["window"] / s["rate_ref"] * 1.1 + 0.25)


# -- fast path ---------------------------------------------------------------------------------

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


# -- running everything --------------------------------------------------------------------------

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


def overload_results(summaries: Mapping[str, Mapping[str, Any]],
                     p: Mapping[str, Any]) -> list[BenchResult]:
    """Per case: throughput per interval (msg/s) and p99 latency per interval (ms)."""
    results = []
    for name, s in summaries.items():
        if "skipped" in s:
            results.append(BenchResult.skip(f"{name} throughput", s["skipped"], unit="msg/s",
                                            group="overload", higher_is_better=True))
            continue
        note = (f"per {p['interval_s']:g} s interval after {p['warmup_s']:g} s warm-up; "
                f"offered {s['offered']:,.0f} msg/s")
        results.append(BenchResult(f"{name} throughput", "msg/s",
                                   tuple(s["throughput_samples"]), higher_is_better=True,
                                   group="overload", note=note))
        p99s = tuple(v * 1e3 for t, v in s["latency_p99_series"]
                     if t - p["interval_s"] >= p["warmup_s"] - 1e-9
                     and t <= p["overload_s"] + 1e-9 and math.isfinite(v))
        results.append(BenchResult(f"{name} p99 latency", "ms", p99s, group="overload",
                                   note="p99 of the messages handled in each interval of "
                                        "the overload (after the warm-up)"))
    return results


def spread_ratio(ours: BenchResult, ref: BenchResult, scale: float = 1.0) -> tuple[float, float]:
    ends = [a / b * scale for a in (ours.p10, ours.p90) for b in (ref.p10, ref.p90) if b]
    return min(ends, default=math.nan), max(ends, default=math.nan)


def verdicts(summaries: Mapping[str, Mapping[str, Any]], results: Sequence[BenchResult],
             p: Mapping[str, Any]) -> list[Verdict]:
    """Targets: throughput ≥ 90% of R, flat producer memory, bounded p99, exactly once,
    fast path within 10%; the peers' figures for information."""
    by = {r.name: r for r in results}
    out = []
    for name, s in summaries.items():
        if "skipped" in s:
            out.append(Verdict(f"{name}: throughput under overload", math.nan, "%", None,
                               "at_least", detail=f"skipped: {s['skipped']}"))
            continue
        ours = name in (FIXED, ADAPTIVE)
        ref = by.get(UNLOADED_ACTORQ if name != MPQ else UNLOADED_MPQ)
        thr = by[f"{name} throughput"]
        low, high = spread_ratio(thr, ref, 100) if ref is not None else (math.nan, math.nan)
        out.append(Verdict(f"{name}: throughput under overload / unloaded R",
                           s["throughput_pct"], "%", 90.0 if ours else None, "at_least",
                           low=low, high=high,
                           detail="median per-interval rate "
                                  f"{format_value(s['throughput_median'])} / R "
                                  f"{format_value(s['rate_ref'])} msg/s"))
        out.append(Verdict(f"{name}: user-process RSS growth", s["user_rss_growth"], "MiB",
                           p["rss_growth_mib"] if ours else None, "at_most",
                           detail=f"{s['user_rss_base']:.1f} → {s['user_rss_end']:.1f} MiB from "
                                  f"t={p['warmup_s']:g} s to the end; slope "
                                  f"{s['user_rss_slope']:.3f} MiB/s"))
        worst = max(s["per_producer"].values(), key=lambda v: v["max"])
        if ours:
            cap = latency_cap(s)
            out.append(Verdict(f"{name}: p99 latency of every admitted message",
                               s["admitted_p99"] * 1e3, "ms", cap * 1e3, "at_most",
                               detail=f"bound: {s['books']['channels']} channels x window "
                                      f"{s['books']['window']} / R, +10% +0.25 s. Handled "
                                      "during the overload: p99 "
                                      f"{format_value(s['latency_p99'] * 1e3)} ms; worst "
                                      f"producer's max {format_value(worst['max'] * 1e3)} ms"))
        else:
            out.append(Verdict(f"{name}: p99 latency of messages handled during the overload",
                               s["latency_p99"] * 1e3, "ms", None, "at_most",
                               detail="last quarter "
                                      f"{format_value(s['latency_p99_last_quarter'] * 1e3)} "
                                      f"ms; {s['books']['discarded']:,} more were admitted and "
                                      "never worked on (drained without work)"))
        books = s["books"]
        wrong = abs(books["handled"] - books["sent"]) + books["anomalies"]
        out.append(Verdict(f"{name}: admitted but not handled exactly once", float(wrong),
                           "msgs", 0.0, "at_most",
                           detail=f"sent {books['sent']:,}, handled {books['handled']:,}, "
                                  f"sequence anomalies {books['anomalies']}"))
    on, off = by.get(FAST_ON), by.get(FAST_OFF)
    if on is not None and off is not None and on.samples and off.samples:
        ratio = on.median / off.median
        low, high = spread_ratio(on, off)
        devs = [abs(low - 1) * 100, abs(high - 1) * 100]
        out.append(Verdict("fast path: |ON / OFF - 1|", abs(ratio - 1) * 100, "%", 10.0,
                           "at_most", low=0.0 if low <= 1 <= high else min(devs),
                           high=max(devs),
                           detail=f"tell throughput ON / OFF = {ratio:.3f} (spread "
                                  f"{low:.3f} .. {high:.3f})"))
    return out


# -- report ------------------------------------------------------------------------------------

def by_process(s: Mapping[str, Any], key: str,
               combine: Callable[[list[float]], float]) -> list[float]:
    """*key* of the user process's producer threads combined, then of each producer
    process (actor), in order."""
    per = list(s["per_producer"].values())
    threads = [float(v[key]) for v in per if v["process"] == "user"]
    return [combine(threads), *(float(v[key]) for v in per if v["process"] == "own")]


def overload_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    def f(value: float, unit: str = "") -> str:
        return format_value(value, unit)

    rows: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
            ("Offered load", lambda s: f"{f(s['offered'])} msg/s"),
            ("Unloaded rate R", lambda s: f"{f(s['rate_ref'])} msg/s"),
            ("Throughput, median (p10 .. p90)",
             lambda s: f"{f(s['throughput_median'])} ({f(s['throughput_p10'])} .. "
                       f"{f(s['throughput_p90'])}) msg/s"),
            ("Throughput / R", lambda s: f(s["throughput_pct"], "%")),
            ("User-process RSS: start → warm → end",
             lambda s: f"{s['user_rss_start']:.1f} → {s['user_rss_base']:.1f} → "
                       f"{s['user_rss_end']:.1f} MiB"),
            ("User-process RSS growth (slope)",
             lambda s: f"{s['user_rss_growth']:+.1f} MiB ({s['user_rss_slope']:+.3f} MiB/s)"),
            ("Producer processes RSS growth", lambda s: f"{s['producers_rss_growth']:+.1f} MiB"),
            ("Consumer RSS growth", lambda s: f"{s['consumer_rss_growth']:+.1f} MiB"),
            ("Messages waiting, max (end)",
             lambda s: f"{f(s['queued_max'])} ({f(s['queued_end'])})"),
            ("Credit window min .. max", lambda s: f"{f(s['window_min'])} .. {f(s['window_max'])}"),
            ("Latency p50 / p99 / max, handled during the overload",
             lambda s: f"{f(s['latency_p50'] * 1e3)} / {f(s['latency_p99'] * 1e3)} / "
                       f"{f(s['latency_max'] * 1e3)} ms"),
            ("Latency p99, handled in the last quarter",
             lambda s: f(s["latency_p99_last_quarter"] * 1e3, "ms")),
            ("Latency p50 / p99 / max, every admitted message",
             lambda s: f"{f(s['admitted_p50'] * 1e3)} / {f(s['admitted_p99'] * 1e3)} / "
                       f"{f(s['admitted_max'] * 1e3)} ms" if s["admitted_complete"]
             else "- (backlog drained without work)"),
            ("Share of the throughput: user threads / each producer process",
             lambda s: " / ".join(f"{x:.0%}" for x in by_process(s, "share", sum))),
            ("Worst latency: user threads / each producer process",
             lambda s: " / ".join(f(x * 1e3) for x in by_process(s, "max", max)) + " ms"),
            ("Sent (admitted) / handled",
             lambda s: f"{s['books']['sent']:,} / {s['books']['handled']:,}"),
            ("Sequence anomalies", lambda s: str(s["books"]["anomalies"])),
            ("Backpressure raised", lambda s: str(s["books"]["refused"])),
            ("Producer waits for credit (time)",
             lambda s: "-" if s["books"].get("credit_waits") is None
             else f"{s['books']['credit_waits']:,} ({s['books']['wait_seconds']:.1f} s)"),
            ("CPU during the overload: this process / producer processes / consumer",
             lambda s: " / ".join(f"{s['books']['cpu'][k]:.0f}"
                                  for k in ("user", "producers", "consumer")) + " % of a core"),
            ("Drain after the overload", lambda s: f(s["books"]["drain_s"], "s")),
            ("Drained without work (discarded)", lambda s: f"{s['books']['discarded']:,}"),
            ("Lost wake-ups",
             lambda s: "-" if s["books"].get("lost_wakeups") is None
             else str(s["books"]["lost_wakeups"]))]
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, fn in rows:
        cells = []
        for name in names:
            s = summaries[name]
            cells.append("skipped" if "skipped" in s else fn(s))
        lines.append(f"| {label} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    skipped = [f"- {name}: {s['skipped']}" for name, s in summaries.items() if "skipped" in s]
    return "\n".join(lines + (["", *skipped] if skipped else []))


def plot(summaries: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> str | None:
    """Draw throughput, memory, backlog and latency over time; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed (pip install matplotlib): {exc}"
    shown = {n: s for n, s in summaries.items() if "skipped" not in s}
    fig, axes = plt.subplots(4, 1, figsize=(9, 12.5), sharex=True)
    ax_thr, ax_mem, ax_q, ax_lat = axes
    end = max((s["series"][-1]["t"] for s in shown.values()), default=0.0)
    for name, s in shown.items():
        color = COLORS.get(name, "black")
        series = s["series"]
        t = [r["t"] for r in series]
        rates = [(b_t, (b["handled"] - a["handled"]) / (b_t - a_t) / s["rate_ref"] * 100)
                 for (a_t, a), (b_t, b) in itertools.pairwise(zip(t, series, strict=True))
                 if b_t > a_t]
        ax_thr.plot([x for x, _ in rates], [y for _, y in rates], color=color, label=name)
        ax_mem.plot(t, [r["user_rss"] - series[0]["user_rss"] for r in series], color=color,
                    label=name)
        prod = [r["user_rss"] + r["producers_rss"] - series[0]["user_rss"]
                - series[0]["producers_rss"] for r in series]
        ax_mem.plot(t, prod, color=color, linestyle="--", alpha=0.8)
        ax_mem.plot(t, [r["consumer_rss"] - series[0]["consumer_rss"] for r in series],
                    color=color, linestyle=":", alpha=0.8)
        queued = [(x, r["queued"]) for x, r in zip(t, series, strict=True)
                  if math.isfinite(r.get("queued", math.nan))]
        if queued:
            label = f"{name}: " + ("qsize()" if name == MPQ else "in flight (credit used)")
            ax_q.plot([x for x, _ in queued], [max(1.0, y) for _, y in queued], color=color,
                      label=label)
        lat = s["latency_p99_series"]
        ax_lat.plot([x for x, _ in lat], [v * 1e3 for _, v in lat], color=color, label=name)
    ax_thr.axhline(90, color="grey", linestyle=":", linewidth=1, label="target: 90%")
    ax_thr.set_ylim(0, 125)
    ax_thr.set_ylabel("consumer throughput\n(% of its unloaded rate)")
    ax_thr.legend(loc="lower right", fontsize=8)
    ax_mem.set_ylabel("RSS growth since start (MiB)")
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="grey", linestyle=style, label=label)  # type: ignore[arg-type]
              for style, label in (("-", "user process (4 producer threads)"),
                                   ("--", "user process + producer processes"),
                                   (":", "consumer"))]
    cases = ax_mem.legend(loc="upper left", fontsize=8)
    ax_mem.add_artist(cases)
    ax_mem.legend(handles=styles, loc="center left", fontsize=8)
    ax_q.set_yscale("log")
    ax_q.set_ylabel("messages waiting")
    ax_q.legend(loc="upper left", fontsize=8)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p99 latency of messages\nhandled per interval (ms)")
    ax_lat.set_xlabel("time since the overload started (s)")
    ax_lat.legend(loc="upper left", fontsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.axvline(end, color="black", linewidth=0.8, alpha=0.5)
    ax_lat.text(end, ax_lat.get_ylim()[0], " overload ends:\n what was admitted\n is drained",
                fontsize=7, va="bottom", ha="left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def observations(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the figures show beyond the targets, in sentences (from the data)."""
    notes = []
    for name, s in summaries.items():
        if "skipped" in s:
            continue
        shares = by_process(s, "share", sum)
        worst = by_process(s, "max", max)
        fair = 1 / len(shares)
        for k, share in enumerate(shares[1:], start=1):
            if share < 0.1 * fair:
                notes.append(
                    f"{name}: producer process {k} got {share:.0%} of the consumer's "
                    f"throughput during the overload (a fair share is {fair:.0%}); its "
                    f"admitted messages waited up to {format_value(worst[k])} s, most of them "
                    "handled only after the overload ended.")
        books = s["books"]
        if name in (FIXED, ADAPTIVE):
            cpu = books["cpu"]
            notes.append(
                f"{name}: the user process used {cpu['user']:.0f}% of a core while its "
                f"producer threads mostly waited for credit ({books['credit_waits']:,} "
                f"waits on the consumer's channels in all); the consumer got "
                f"{cpu['consumer']:.0f}% of a core.")
        if name == ADAPTIVE and math.isfinite(s["window_max"]):
            peak = s["queued_max"]
            bound = books["channels"] * s["window_max"]
            if peak > 2 * bound:
                notes.append(
                    f"{name}: {format_value(peak)} messages were in flight at the peak, though "
                    f"the window stayed ≤ {s['window_max']:.0f} per channel after the "
                    "warm-up: the window starts at its maximum, so the first burst is "
                    "admitted in full before the controller shrinks it.")
        if name == MPQ:
            notes.append(
                f"{name}: the backlog reached {format_value(s['queued_max'])} messages "
                f"({format_value(s['queued_max'] / s['rate_ref'])} s of work); the producer "
                f"side grew by {s['user_rss_growth'] + s['producers_rss_growth']:.1f} MiB "
                f"(user process {s['user_rss_slope']:+.2f} MiB/s).")
    return notes


def json_ready(value: Any) -> Any:
    """nan/inf → None, tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def for_report(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The summaries without the bulky per-message data, with the time series."""
    return {name: {k: v for k, v in s.items() if k not in ("records",)}
            for name, s in summaries.items()}


def overload_sections(summaries: Mapping[str, Mapping[str, Any]],
                      waits: Mapping[str, list[int]]) -> list[str]:
    """The Markdown sections: the overload table, observations, the fast path."""
    section = [
        "## Overload", "",
        "Producers offer the load below to one consumer (4 threads of the user process and "
        "2 producer processes, actors for actorq); it handles what it can. Before the "
        "overload each actorq producer process sends one message, handled while the "
        "consumer is idle, so that every channel is open. Throughput is per sampling "
        "interval after the warm-up; RSS from psutil; latency from the send call (the "
        "producer's wait for credit included) to the end of the handler: over the messages "
        "handled during the overload after the warm-up, and over every admitted message "
        "(also those handled after the overload ended). \"Messages waiting\": actorq's "
        "messages in flight (sent, not yet handled: what the credit window bounds), "
        "mp.Queue's qsize().",
        "", overload_table(summaries), ""]
    notes = observations(summaries)
    if notes:
        section += ["Observations:", "", *(f"- {n}" for n in notes), ""]
    fast = ["## Fast path", "",
            f"Credit waits during the timed tells, per repeat: ON {waits.get(FAST_ON)}, "
            f"OFF {waits.get(FAST_OFF)}.", ""]
    return ["\n".join(section), "\n".join(fast)]


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

# Ship this module's actor classes by value (as for a script's own classes), so that an
# actor process (a warm spare, a restart) does not import this module and actorq.bench
# first: that import would be counted in the restart times and the idle actor's memory.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
