"""Fault injection for benchmarks: a plan, an injector thread, and what the faults cost.

A plan is text, items separated by commas (``--faults``)::

    kill@1.5            SIGKILL a random member 1.5 s into the measured phase
    stop@3+0.5          SIGSTOP a random member at 3 s, SIGCONT it 0.5 s later
    raise@4             make a member raise on its next message
    oom@5               make a member exceed its memory limit (ActorOptions.max_rss)
    kill~0.5            at a rate: on average 0.5 kills per second (Poisson, seeded)
    stop~0.2+0.3        rate and stall time together

The injector calls back into the workload for ``raise`` and ``oom`` (only the workload
can make its member do that); ``kill`` and ``stop`` need only a pid. Each fault becomes
a :class:`FaultEvent`, and :func:`fault_effects` turns the events and the workload's
per-call records into what the report shows: time to recover (fault to the next
successful reply from the member, or from its replacement after a kill), the
throughput dip and its duration, p99 latency in the fault window.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actorq._errors import BenchError
from actorq.bench.timing import percentile

__all__ = ["KINDS", "CallRecord", "FaultEvent", "FaultPlan", "InjectedFault", "Injector",
           "fault_effects", "throughput_series"]

KINDS = ("kill", "stop", "raise", "oom")
DEFAULT_STALL = 0.5  # seconds a ``stop`` lasts when the plan does not say
# A throughput bin at or above this share of the rate before the first fault counts
# as recovered: lower hides a lasting dip, higher calls ordinary noise a dip.
RECOVERED_SHARE = 0.9
_ITEM = re.compile(r"^(?P<kind>[a-z]+)(?:(?P<op>[@~])(?P<num>\d+(?:\.\d*)?|\.\d+))"
                   r"(?:\+(?P<stall>\d+(?:\.\d*)?|\.\d+))?$")


class InjectedFault(RuntimeError):
    """Raised by a workload's member told to fail (the ``raise`` fault).

    Defined here, not in a suite: a suite's classes travel by value, and an exception
    must be importable by name to come back to its caller as itself.
    """


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One item of a plan: a fault at a time (``at``) or at a rate (per second)."""

    kind: str
    at: float | None = None
    rate: float | None = None
    stall: float = DEFAULT_STALL


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which faults to inject, and when (see the module docstring for the syntax).

    Attributes:
        items: the parsed items.
        seed: seeds the choice of member and the rate-driven times.
    """

    items: tuple[FaultSpec, ...]
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> FaultPlan:
        """Parse a plan such as ``"kill@1,stop@2+0.5,oom@3"``.

        Raises:
            BenchError: an item that does not parse, an unknown kind, a rate <= 0.
        """
        items = []
        for raw in filter(None, (part.strip() for part in text.split(","))):
            match = _ITEM.match(raw)
            if match is None or match.group("kind") not in KINDS:
                msg = (f"bad fault {raw!r} in --faults {text!r}: write KIND@SECONDS or "
                       f"KIND~PER_SECOND, optionally +STALL_SECONDS, KIND one of "
                       f"{', '.join(KINDS)} (e.g. kill@1.5,stop@3+0.5,raise~0.5)")
                raise BenchError(msg)
            number = float(match.group("num"))
            stall = float(match.group("stall") or DEFAULT_STALL)
            if match.group("op") == "~" and number <= 0:
                msg = f"fault rate must be positive, not {number} in {raw!r}"
                raise BenchError(msg)
            if match.group("op") == "@":
                items.append(FaultSpec(match.group("kind"), at=number, stall=stall))
            else:
                items.append(FaultSpec(match.group("kind"), rate=number, stall=stall))
        if not items:
            msg = f"--faults {text!r} names no fault"
            raise BenchError(msg)
        return cls(tuple(items), seed)

    def kinds(self) -> set[str]:
        """The kinds of fault the plan uses."""
        return {item.kind for item in self.items}

    def schedule(self, duration: float) -> list[tuple[float, FaultSpec]]:
        """Return ``(seconds from the start, item)`` for every fault before *duration*."""
        rng = random.Random(self.seed)
        out: list[tuple[float, FaultSpec]] = []
        for item in self.items:
            if item.at is not None:
                if item.at < duration:
                    out.append((item.at, item))
                continue
            assert item.rate is not None
            t = rng.expovariate(item.rate)
            while t < duration:
                out.append((t, item))
                t += rng.expovariate(item.rate)
        return sorted(out, key=lambda pair: pair[0])


@dataclass(slots=True)
class FaultEvent:
    """One fault injected: when (seconds from the phase start), what, to whom."""

    t: float
    kind: str
    member: str
    pid: int | None
    stall: float = 0.0
    error: str | None = None
    before: tuple[int, ...] = ()  # every member's pid at the time (a replacement is new)

    def summary(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"t": round(self.t, 6), "kind": self.kind, "member": self.member,
                "pid": self.pid, "stall": self.stall, "error": self.error}


# A member of the workload: (name, pid or None when it has no process now).
Members = Callable[[], Sequence[tuple[str, int | None]]]
# Make member *name* raise / exceed its memory limit on its next message.
Hook = Callable[[str], None]


class Injector:
    """A thread that injects a plan's faults into a running workload.

    Args:
        plan: what to inject.
        members: returns the members that can be hit now, with their pids.
        hooks: ``{"raise": fn, "oom": fn}``: how the workload makes a member do that.
        duration: the measured phase's length; faults after it are dropped.
        clock: seconds clock (``time.monotonic``); *origin* is the phase start on it.
    """

    def __init__(self, plan: FaultPlan, members: Members, hooks: Mapping[str, Hook],
                 duration: float, *, origin: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        missing = sorted(plan.kinds() - {"kill", "stop"} - set(hooks))
        if missing:
            msg = (f"this workload cannot inject {', '.join(missing)} faults (only kill and "
                   "stop, which need nothing but a pid)")
            raise BenchError(msg)
        self._plan, self._members, self._hooks = plan, members, hooks
        self._rng = random.Random(plan.seed + 1)
        self._schedule = plan.schedule(duration)
        self._origin, self._clock = origin, clock
        self._stop = threading.Event()
        self._stopped: list[int] = []
        self.events: list[FaultEvent] = []
        self._thread = threading.Thread(target=self._run, name="actorq-bench-faults",
                                        daemon=True)

    def start(self) -> None:
        """Start injecting (the schedule counts from *origin*)."""
        self._thread.start()

    def close(self) -> None:
        """Stop injecting, resume every member still stopped, join the thread."""
        self._stop.set()
        self._thread.join(10.0)
        for pid in self._stopped:  # a SIGCONT never sent would leave a frozen process
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped.clear()

    def _run(self) -> None:
        for at, item in self._schedule:
            delay = self._origin + at - self._clock()
            if self._stop.wait(max(0.0, delay)):
                return
            self.events.append(self._inject(item))

    def _inject(self, item: FaultSpec) -> FaultEvent:
        now = self._clock() - self._origin
        choices = [(name, pid) for name, pid in self._members() if pid is not None]
        if not choices:
            return FaultEvent(now, item.kind, "-", None, error="no member with a process")
        name, pid = self._rng.choice(choices)
        event = FaultEvent(now, item.kind, name, pid,
                           before=tuple(p for _n, p in choices if p is not None))
        try:
            if item.kind == "kill":
                os.kill(pid, signal.SIGKILL)
            elif item.kind == "stop":
                event.stall = item.stall
                self._stall(pid, item.stall)
            else:
                self._hooks[item.kind](name)
        except (OSError, RuntimeError) as exc:
            event.error = f"{type(exc).__name__}: {exc}"
        return event

    def _stall(self, pid: int, seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        self._stopped.append(pid)
        try:
            self._stop.wait(seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._stopped.remove(pid)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call of a faulted workload (times in seconds from the phase start).

    Attributes:
        member: who handled it.
        sent: when it was sent.
        done: when its outcome came back.
        ok: it succeeded.
        pid: the process that answered (successes), or None.
    """

    member: str
    sent: float
    done: float
    ok: bool
    pid: int | None = None


def throughput_series(records: Sequence[CallRecord], interval: float,
                      end: float) -> list[tuple[float, float]]:
    """Return ``(bin start, successes per second)`` for bins of *interval* up to *end*."""
    bins = [0] * max(1, math.ceil(end / interval))
    for r in records:
        if r.ok and 0 <= r.done < end:
            bins[min(len(bins) - 1, int(r.done / interval))] += 1
    return [(i * interval, n / interval) for i, n in enumerate(bins)]


@dataclass(slots=True)
class _Effects:
    recovery: float = math.nan
    dip_share: float = math.nan
    dip_seconds: float = 0.0
    p99_window: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)


def _recovery(event: FaultEvent, records: Sequence[CallRecord]) -> float:
    """Seconds from *event* to the next success of its member that shows it recovered.

    After a kill or a memory overrun: a success from a replacement (a pid that no member
    had at the fault). After a stall: a success from the stalled process once resumed.
    After a raise: the member's next success.
    """
    start = event.t + (event.stall if event.kind == "stop" else 0.0)
    replaced = event.kind in ("kill", "oom")
    before = set(event.before) | ({event.pid} if event.pid is not None else set())
    times = [r.done for r in records
             if r.ok and r.member == event.member and r.done > start
             and ((r.pid not in before) if replaced else (r.pid == event.pid))]
    return min(times) - event.t if times else math.nan


def _dip(event: FaultEvent, series: Sequence[tuple[float, float]], baseline: float,
         interval: float) -> tuple[float, float]:
    """(lowest rate / baseline, seconds below RECOVERED_SHARE) from the fault's bin on."""
    first = int(event.t / interval)
    rest = [rate for _start, rate in series[first:]]
    if not rest or baseline <= 0:
        return math.nan, 0.0
    low = [i for i, rate in enumerate(rest[:3]) if rate < RECOVERED_SHARE * baseline]
    if not low:
        return min(rest[:3]) / baseline, 0.0
    start, end = low[0], low[0]
    while end < len(rest) and rest[end] < RECOVERED_SHARE * baseline:
        end += 1
    return min(rest[start:end]) / baseline, (end - start) * interval


def fault_effects(events: Sequence[FaultEvent], records: Sequence[CallRecord], *,
                  interval: float, end: float, warmup: float = 0.0) -> dict[str, Any]:
    """What each fault cost: recovery, throughput dip and its length, p99 in its window.

    The baseline is the median throughput between *warmup* and the first fault (or
    the whole phase without faults). A fault's window runs from the fault to the later
    of its recovery and the end of its dip (at least one *interval*).

    Returns:
        ``{"baseline": rate, "series": [[t, rate]...], "faults": [per event]}``, each
        event with ``recovery_s``, ``dip_share`` (lowest rate / baseline),
        ``dip_s`` and ``p99_window_s`` (nan → None in JSON).
    """
    series = throughput_series(records, interval, end)
    first = min((e.t for e in events), default=end)
    before = [rate for t, rate in series if warmup <= t and t + interval <= first]
    baseline = percentile(before, 50) if before else math.nan
    rows = []
    for event in events:
        recovery = _recovery(event, records)
        dip_share, dip_s = _dip(event, series, baseline, interval)
        closes = event.t + max(interval, dip_s, recovery if math.isfinite(recovery) else 0.0)
        window = [r.done - r.sent for r in records if r.ok and event.t <= r.done <= closes]
        rows.append({**event.summary(), "recovery_s": _num(recovery),
                     "dip_share": _num(dip_share), "dip_s": round(dip_s, 6),
                     "p99_window_s": _num(percentile(window, 99)),
                     "window_calls": len(window)})
    return {"baseline": _num(baseline), "interval": interval,
            "series": [[round(t, 6), round(rate, 3)] for t, rate in series], "faults": rows}


def _num(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None
