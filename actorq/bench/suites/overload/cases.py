"""Step 2, the overload cases: actorq (fixed or adaptive window), the unbounded
mp.Queue and Ray's ``max_pending_calls``. Each returns its time series, the per-message
records and the bookkeeping, for :mod:`.summary`."""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import actorq
from actorq.bench.suites.overload.actors import Consumer, Producer, RayConsumer
from actorq.bench.suites.overload.harness import (
    CpuMeter,
    bookkeeping,
    join_threads,
    layout,
    rss,
    sample_series,
    start_threads,
)
from actorq.bench.suites.overload.params import REPLY_TIMEOUT, system_options
from actorq.bench.suites.overload.peer import QueuePeer
from actorq.bench.suites.overload.record import OPENER, SENT, paced_send, recorder, wait_for


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
            handle: Any = ray.remote(RayConsumer).options(
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
