"""Warm-up, repeats, median and spread; ratios to a peer measured in the same run.

One benchmark is a callable run ``warmup`` times unrecorded, then ``repeats`` times
recorded. Each recorded run gives one *sample*:

    timed (default)       sample = elapsed seconds            (lower is better)
    timed, ``work=W``     sample = W / elapsed seconds          (a rate, higher is better)
    ``self_timed=True``   sample = what the callable returned   (e.g. its own p50 in µs)

A :class:`BenchResult` keeps every sample and reports the median with two spreads,
p10-p90 (linear interpolation, numpy's default) and min-max. Side-by-side runs
interleave the cases repeat by repeat (ours, peer, ours, peer, ...), so that a slow
drift of the machine (thermal throttling, a noisy neighbour) hits both sides alike.

This module imports nothing heavy (no ``statistics``, no numpy): multiprocessing imports
a script's main module again in every actor process, so what a benchmark script imports
at the top is paid for in each actor's memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BenchResult",
    "Case",
    "Verdict",
    "check",
    "compare",
    "compare_paired",
    "measure",
    "measure_interleaved",
    "percentile",
]

Timer = Callable[[], float]


def percentile(values: Sequence[float], q: float) -> float:
    """Return the *q*-th percentile (0-100) of *values*, by linear interpolation.

    This is numpy's default method (``"linear"``): the sorted values sit at ranks
    ``0 .. n-1`` and the percentile falls at rank ``q / 100 * (n - 1)``.

    Args:
        values: the data; need not be sorted.
        q: the percentile, from 0 to 100.

    Returns:
        The percentile, or ``nan`` for no values.

    Raises:
        ValueError: *q* is outside 0-100.
    """
    if not 0.0 <= q <= 100.0:
        msg = f"percentile q must be within 0..100, not {q!r}"
        raise ValueError(msg)
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Every sample of one benchmark, with its median and spread.

    Attributes:
        name: what was measured, e.g. ``"actorq tell"``.
        unit: unit of one sample, e.g. ``"msg/s"`` or ``"µs"``.
        samples: one value per recorded repeat, in the order they were taken.
        higher_is_better: True for rates, False for times and sizes.
        group: the benchmark this result belongs to (rows of a group are compared).
        note: free text shown next to the result (parameters, caveats).
        skipped: why the benchmark did not run (no samples then), or None.
        started: when each sample's run started, in seconds of the timer (the
            per-repeat timeline; empty when not recorded).
    """

    name: str
    unit: str
    samples: tuple[float, ...]
    higher_is_better: bool = False
    group: str = ""
    note: str = ""
    skipped: str | None = None
    started: tuple[float, ...] = ()

    @classmethod
    def skip(cls, name: str, reason: str, *, unit: str = "", group: str = "",
             higher_is_better: bool = False) -> BenchResult:
        """Return a result with no samples that says why the benchmark did not run."""
        return cls(name, unit, (), higher_is_better=higher_is_better, group=group,
                   skipped=reason)

    @property
    def median(self) -> float:
        """The median sample (``nan`` when skipped)."""
        return percentile(self.samples, 50)

    @property
    def p10(self) -> float:
        """The 10th percentile of the samples (linear interpolation)."""
        return percentile(self.samples, 10)

    @property
    def p90(self) -> float:
        """The 90th percentile of the samples (linear interpolation)."""
        return percentile(self.samples, 90)

    @property
    def min(self) -> float:
        """The smallest sample (``nan`` when skipped)."""
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        """The largest sample (``nan`` when skipped)."""
        return max(self.samples) if self.samples else math.nan

    @property
    def rel_spread(self) -> float:
        """``(p90 - p10) / median``: 0.05 means the middle 80% lie within 5% of the median."""
        median = self.median
        if not self.samples or median == 0:
            return math.nan
        return (self.p90 - self.p10) / abs(median)

    def summary(self) -> dict[str, Any]:
        """Return the result as plain JSON-ready data (``nan`` becomes ``None``)."""
        return {
            "name": self.name, "group": self.group, "unit": self.unit,
            "higher_is_better": self.higher_is_better, "median": _finite(self.median),
            "p10": _finite(self.p10), "p90": _finite(self.p90), "min": _finite(self.min),
            "max": _finite(self.max), "rel_spread": _finite(self.rel_spread),
            "repeats": len(self.samples), "samples": [_finite(s) for s in self.samples],
            "note": self.note, "skipped": self.skipped,
            "started": [round(t, 6) for t in self.started],
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark of a side-by-side run (see :func:`measure_interleaved`).

    Attributes:
        name: result name; a self-timed callable that returns a mapping yields one
            result per key, named ``f"{name} {key}"``.
        fn: the callable, run as ``fn(*args)``.
        args: positional arguments for *fn*.
        unit: unit of a sample (default: ``"s"``, or ``"1/s"`` with *work*).
        work: units of work one call does; the sample becomes ``work / elapsed``.
        self_timed: the sample is what *fn* returns (a float, or a mapping of floats).
        higher_is_better: default: True with *work*, else False.
        group: copied to the results.
        note: copied to the results.
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    unit: str | None = None
    work: float | None = None
    self_timed: bool = False
    higher_is_better: bool | None = None
    group: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.work is not None and self.self_timed:
            msg = f"case {self.name!r}: give work= or self_timed=True, not both"
            raise ValueError(msg)
        if self.work is not None and not self.work > 0:
            msg = f"case {self.name!r}: work must be positive, not {self.work!r}"
            raise ValueError(msg)

    def run_once(self, timer: Timer) -> dict[str, float]:
        """Run *fn* once and return its sample(s), keyed by metric (``""`` for one)."""
        start = timer()
        out = self.fn(*self.args)
        elapsed = timer() - start
        if self.self_timed:
            return _self_timed_samples(self.name, out)
        if self.work is not None:
            if elapsed <= 0:
                msg = f"case {self.name!r}: timer did not advance ({elapsed!r} s)"
                raise ValueError(msg)
            return {"": self.work / elapsed}
        return {"": elapsed}

    def result(self, key: str, samples: Sequence[float],
               started: Sequence[float] = ()) -> BenchResult:
        """Build the :class:`BenchResult` of metric *key* from its *samples*."""
        unit = self.unit or ("1/s" if self.work is not None else "s")
        better = self.higher_is_better
        if better is None:
            better = self.work is not None
        name = f"{self.name} {key}" if key else self.name
        return BenchResult(name, unit, tuple(samples), higher_is_better=better,
                           group=self.group, note=self.note, started=tuple(started))


def _self_timed_samples(name: str, out: Any) -> dict[str, float]:
    if isinstance(out, Mapping):
        return {str(k): float(v) for k, v in out.items()}
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return {"": float(out)}
    msg = (f"case {name!r} is self_timed, so it must return a number or a mapping of "
           f"numbers, not {type(out).__name__}")
    raise TypeError(msg)


def measure_interleaved(cases: Sequence[Case], *, repeats: int = 5, warmup: int = 1,
                        timer: Timer = time.perf_counter) -> list[BenchResult]:
    """Run *cases* side by side, one repeat of each in turn, and return their results.

    Every case runs *warmup* times unrecorded (in turn), then *repeats* rounds in which
    each case runs once, every other round in reverse order (a, b, c / c, b, a / ...), so
    that no case always runs right after the same other one (whose processes may still
    be winding down) or always first. Blocks for as long as the cases take; an exception
    raised by a case propagates at once.

    Args:
        cases: the benchmarks; their names (and metric keys) must not collide.
        repeats: recorded runs per case, at least 1.
        warmup: unrecorded runs per case first, at least 0.
        timer: seconds clock (injectable for tests).

    Returns:
        One result per case, in order (a mapping-returning case gives one per key).

    Raises:
        ValueError: bad *repeats* / *warmup*, or a case's metrics changed between runs.
    """
    _check_counts(repeats, warmup)
    for _ in range(warmup):
        for case in cases:
            case.run_once(timer)
    collected: list[dict[str, list[float]]] = [{} for _ in cases]
    starts: list[list[float]] = [[] for _ in cases]
    origin = timer()
    rows = list(zip(cases, collected, starts, strict=True))
    for round_ in range(repeats):
        for case, store, began in rows if round_ % 2 == 0 else reversed(rows):
            began.append(timer() - origin)
            _record(case, store, case.run_once(timer))
    return [case.result(key, samples, began)
            for case, store, began in zip(cases, collected, starts, strict=True)
            for key, samples in store.items()]


def _check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1:
        msg = f"repeats must be at least 1, not {repeats!r}"
        raise ValueError(msg)
    if warmup < 0:
        msg = f"warmup must be at least 0, not {warmup!r}"
        raise ValueError(msg)


def _record(case: Case, store: dict[str, list[float]], sample: dict[str, float]) -> None:
    if store and set(store) != set(sample):
        msg = (f"case {case.name!r} returned metrics {sorted(sample)} after "
               f"{sorted(store)}; a self-timed case must return the same keys every run")
        raise ValueError(msg)
    for key, value in sample.items():
        store.setdefault(key, []).append(value)


def measure(fn: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1,
            name: str | None = None, unit: str | None = None, work: float | None = None,
            self_timed: bool = False, higher_is_better: bool | None = None,
            group: str = "", note: str = "",
            timer: Timer = time.perf_counter) -> BenchResult:
    """Run ``fn(*args)`` *warmup* times, then *repeats* times recorded; return the result.

    Blocks for as long as the runs take. By default a sample is the elapsed time of one
    call in seconds; with ``work=W`` it is the rate ``W / elapsed`` (``work=n_messages``
    gives messages per second); with ``self_timed=True`` it is the number *fn*
    returns (for callables that time themselves, e.g. a latency percentile).

    Args:
        fn: the callable to measure.
        *args: positional arguments for *fn* (wrap keywords with ``functools.partial``).
        repeats: recorded runs, at least 1.
        warmup: unrecorded runs first, at least 0.
        name: result name (default: the callable's ``__name__``).
        unit: unit of a sample (default ``"s"``, or ``"1/s"`` with *work*).
        work: units of work per call, to report a rate.
        self_timed: the sample is *fn*'s return value.
        higher_is_better: default: True with *work*, else False.
        group: copied to the result, to group rows in a report.
        note: copied to the result.
        timer: seconds clock (injectable for tests).

    Returns:
        The :class:`BenchResult`, with every sample.

    Raises:
        ValueError: bad *repeats*, *warmup* or *work*.
        TypeError: a self-timed *fn* returned something other than a number (use
            :func:`measure_interleaved` for callables that return several metrics).
    """
    label = name or getattr(fn, "__name__", None) or repr(fn)
    case = Case(label, fn, args, unit=unit, work=work, self_timed=self_timed,
                higher_is_better=higher_is_better, group=group, note=note)
    results = measure_interleaved([case], repeats=repeats, warmup=warmup, timer=timer)
    if len(results) != 1 or results[0].name != label:
        msg = (f"measure({label!r}) needs one number per run; use measure_interleaved() "
               "for a callable that returns several metrics")
        raise TypeError(msg)
    return results[0]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A figure checked against a target: a ratio to a peer, or a limit.

    Attributes:
        name: what is checked, e.g. ``"tell throughput vs mp.Queue"``.
        value: the figure (``nan`` when it could not be computed).
        unit: ``"x"`` for a ratio, else the result's unit.
        target: the bound the figure should meet, or None for information only.
        goal: ``"at_least"`` or ``"at_most"``: which side of *target* is good.
        low: the pessimistic end of the figure's spread (p10/p90 crossed).
        high: the optimistic end of the figure's spread.
        detail: how it was computed, or why not.
    """

    name: str
    value: float
    unit: str
    target: float | None
    goal: str
    low: float = math.nan
    high: float = math.nan
    detail: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the median meets *target* (None: no target, or no value)."""
        if self.target is None or not math.isfinite(self.value):
            return None
        if self.goal == "at_least":
            return self.value >= self.target
        return self.value <= self.target

    def summary(self) -> dict[str, Any]:
        """Return the verdict as plain JSON-ready data (``nan`` becomes ``None``)."""
        return {"name": self.name, "value": _finite(self.value), "unit": self.unit,
                "target": self.target, "goal": self.goal, "met": self.met,
                "low": _finite(self.low), "high": _finite(self.high), "detail": self.detail}


def _goal(at_least: float | None, at_most: float | None) -> tuple[float | None, str]:
    if at_least is not None and at_most is not None:
        msg = "give at_least= or at_most=, not both"
        raise ValueError(msg)
    if at_most is not None:
        return at_most, "at_most"
    return at_least, "at_least"


def compare(ours: BenchResult, peer: BenchResult, *, at_least: float | None = None,
            at_most: float | None = None, name: str | None = None) -> Verdict:
    """Return the ratio of the medians ``ours / peer``, checked against a target.

    Both results should come from the same run (ideally :func:`measure_interleaved`).
    The spread of the ratio crosses the spreads of the two results: ``ours.p10 /
    peer.p90`` to ``ours.p90 / peer.p10``.

    Args:
        ours: the numerator.
        peer: the denominator, in the same unit.
        at_least: the ratio should be at least this (e.g. 5 for "5x faster").
        at_most: the ratio should be at most this (e.g. 0.5 for "half the latency").
        name: verdict name (default ``"<ours> / <peer>"``).

    Returns:
        The :class:`Verdict`; its value is ``nan`` when either side was skipped.

    Raises:
        ValueError: both *at_least* and *at_most*, or the units differ.
    """
    target, goal = _goal(at_least, at_most)
    label = name or f"{ours.name} / {peer.name}"
    if ours.unit != peer.unit and ours.samples and peer.samples:
        msg = f"cannot compare {ours.name!r} in {ours.unit} with {peer.name!r} in {peer.unit}"
        raise ValueError(msg)
    for side in (ours, peer):
        if not side.samples:
            reason = side.skipped or "no samples"
            return Verdict(label, math.nan, "x", target, goal,
                           detail=f"{side.name} skipped: {reason}")
    if peer.median == 0:
        return Verdict(label, math.nan, "x", target, goal, detail=f"{peer.name} median is 0")
    ends = [a / b for a in (ours.p10, ours.p90) for b in (peer.p10, peer.p90) if b]
    return Verdict(label, ours.median / peer.median, "x", target, goal,
                   low=min(ends, default=math.nan), high=max(ends, default=math.nan),
                   detail=f"median {ours.name} / median {peer.name}")


def compare_paired(ours: BenchResult, peer: BenchResult, *, at_least: float | None = None,
                   at_most: float | None = None, name: str | None = None) -> Verdict:
    """Return the median of the per-round ratios ``ours / peer``, checked against a target.

    For two results of one :func:`measure_interleaved` run: its round *k* ran sample *k*
    of each, one right after the other, so their ratio compares the two sides at one
    speed of the machine. The ratio of the medians (:func:`compare`) may take its two
    medians from different moments, and on a VM whose speed drifts over seconds (this
    one's: the same task's CPU time moved by 50 % between the repeats of one run) that
    drift, not the code, can decide it. The spread is the lowest and the highest
    per-round ratio; the ratio of the medians is kept in ``detail``.

    Args:
        ours: the numerator.
        peer: the denominator, in the same unit, with as many samples as *ours*.
        at_least: the ratio should be at least this.
        at_most: the ratio should be at most this.
        name: verdict name (default ``"<ours> / <peer>"``).

    Returns:
        The :class:`Verdict`; its value is ``nan`` when either side was skipped.

    Raises:
        ValueError: both *at_least* and *at_most*, the units differ, or the two sides
            have different numbers of samples (not the rounds of one run).
    """
    plain = compare(ours, peer, at_least=at_least, at_most=at_most, name=name)
    if not math.isfinite(plain.value):
        return plain
    if len(ours.samples) != len(peer.samples):
        msg = (f"cannot pair {ours.name!r} ({len(ours.samples)} samples) with "
               f"{peer.name!r} ({len(peer.samples)}): not the rounds of one interleaved run")
        raise ValueError(msg)
    ratios = [a / b for a, b in zip(ours.samples, peer.samples, strict=True) if b]
    if not ratios:
        return plain
    return Verdict(plain.name, percentile(ratios, 50), "x", plain.target, plain.goal,
                   low=min(ratios), high=max(ratios),
                   detail=(f"median of {len(ratios)} rounds' {ours.name} / {peer.name} "
                           f"(ratio of the medians {plain.value:.3f})"))


def check(result: BenchResult, *, at_least: float | None = None,
          at_most: float | None = None, name: str | None = None) -> Verdict:
    """Return *result*'s median checked against an absolute bound (e.g. at most 10 MiB).

    Args:
        result: the figure to check.
        at_least: the median should be at least this.
        at_most: the median should be at most this.
        name: verdict name (default: the result's name).

    Returns:
        The :class:`Verdict`, in the result's unit, its spread p10-p90.

    Raises:
        ValueError: both *at_least* and *at_most*.
    """
    target, goal = _goal(at_least, at_most)
    label = name or result.name
    if not result.samples:
        return Verdict(label, math.nan, result.unit, target, goal,
                       detail=f"{result.name} skipped: {result.skipped or 'no samples'}")
    return Verdict(label, result.median, result.unit, target, goal, low=result.p10,
                   high=result.p90, detail=f"median of {len(result.samples)} repeats")
