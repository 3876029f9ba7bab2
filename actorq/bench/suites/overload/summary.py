"""From runs to figures: one overload run summarized, the results per case, and the
verdicts against the targets."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from actorq.bench import BenchResult, Verdict, format_value, percentile
from actorq.bench.suites.overload.params import (
    ADAPTIVE,
    FAST_OFF,
    FAST_ON,
    FIXED,
    MPQ,
    UNLOADED_ACTORQ,
    UNLOADED_MPQ,
)
from actorq.bench.suites.overload.record import OPENER


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
    # counted from the last sample taken by the end of the warm-up (not the first one after
    # it: under heavy load the sampler may take its next sample only at the very end, and
    # every share came out 0)
    first = next((r for r in reversed(series) if r["t"] <= warm + 1e-9),
                 series[0])["by_producer"]
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
