"""What every overload case shares: RSS and CPU probes, the sampling loop, the producer
threads and their layout, and the exactly-once bookkeeping."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil

from actorq.bench.suites.overload.params import MIB
from actorq.bench.suites.overload.record import ANOMALIES, DISCARDED, HANDLED, Recorder


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
