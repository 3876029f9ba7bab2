"""The overload suite in miniature (quick, smaller still): reports sanely, loses nothing.

Run through ``run_suite`` as ``actorq bench overload --quick --set ...`` runs it, so the
report files are checked too. No timing is asserted: only the structure of the figures
and exact message counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from actorq.bench.suite import SCHEMA, run_suite
from actorq.bench.suites import overload

# The module's run (the fixture below, timed with the first test) takes ~20 s on a quiet
# machine: three cases, each with its phases, its processes and its drain. Two other
# CPU-bound jobs stretched it past the default 60 s.
pytestmark = pytest.mark.timeout(300)

TINY = {"cost_us": 100.0, "overload_s": 1.0, "interval_s": 0.1, "warmup_s": 0.2,
        "unloaded_s": 0.1, "unloaded_repeats": 1, "window": 256, "threads": 2,
        "producer_procs": 1, "tells": 2000, "tell_warmup": 200, "fast_repeats": 1,
        "drain_timeout_s": 30.0}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return overload


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("overload")
    report = run_suite("overload", quick=True, params=TINY, out=out)
    return {"p": report.meta["parameters"], "results": report.results,
            "summaries": report.extra["overload"], "waits": report.extra[
                "fast_path_credit_waits"], "verdicts": report.verdicts, "out": out}


def test_every_admitted_message_is_handled_exactly_once(bench: ModuleType,
                                                          run: dict[str, Any]) -> None:
    for name in (bench.FIXED, bench.ADAPTIVE, bench.MPQ):
        books = run["summaries"][name]["books"]
        assert books["sent"] > 0, name
        assert books["handled"] == books["sent"], (name, books)
        assert books["anomalies"] == 0, (name, books)  # no gap, duplicate or reordering
        assert books["mismatched_producers"] == [], (name, books)
        assert books["worked"] + books["discarded"] == books["handled"], (name, books)
        assert books["attempts"] == books["sent"] + books["refused"], (name, books)
    for name in (bench.FIXED, bench.ADAPTIVE):  # actorq: all of it worked on, none dropped
        books = run["summaries"][name]["books"]
        assert books["discarded"] == 0
        assert books["channels"] == 1 + TINY["producer_procs"]


def test_time_series_and_summaries_have_their_shape(bench: ModuleType,
                                                    run: dict[str, Any]) -> None:
    summaries = run["summaries"]
    assert set(summaries) == set(bench.CASES)
    ray = summaries[bench.RAY]
    reason = bench.ray_missing()
    if reason is None:  # ray is installed: the case must have run
        assert "series" in ray, ray
    else:  # not installed: a skip that says so, and nothing else
        assert ray == {"skipped": reason}
    for name in (bench.FIXED, bench.ADAPTIVE, bench.MPQ):
        s = summaries[name]
        series = s["series"]
        assert len(series) >= 3
        times = [row["t"] for row in series]
        assert times == sorted(times)
        assert times[-1] >= TINY["overload_s"]
        handled = [row["handled"] for row in series]
        assert handled == sorted(handled)
        for row in series:
            assert row["user_rss"] > 0
            assert row["consumer_rss"] > 0
        assert s["throughput_samples"]
        assert all(x is not None and math.isfinite(x) and x >= 0
                   for x in s["throughput_samples"])
        assert s["latency_n"] > 0
        assert 0 <= s["latency_p50"] <= s["latency_p99"] <= s["latency_max"]
        per = s["per_producer"]
        assert len(per) == TINY["threads"] + TINY["producer_procs"]
        assert sum(v["share"] for v in per.values()) == pytest.approx(1.0)
        if name != bench.MPQ:  # every admitted message was worked on: all have a latency
            assert s["admitted_complete"]
            assert s["admitted_p99"] <= s["admitted_max"]
        assert s["rate_ref"] > 0
        # the same offered load for every case: a multiple of actorq's unloaded rate
        assert s["offered"] == pytest.approx(
            run["p"]["offered_x"] * summaries[bench.FIXED]["rate_ref"])


def test_results_verdicts_and_fast_path(bench: ModuleType, run: dict[str, Any]) -> None:
    by = {r.name: r for r in run["results"]}
    for name in (bench.UNLOADED_ACTORQ, bench.UNLOADED_MPQ, bench.FAST_ON, bench.FAST_OFF):
        assert len(by[name].samples) == TINY[
            "fast_repeats" if name in (bench.FAST_ON, bench.FAST_OFF) else "unloaded_repeats"]
        assert by[name].median > 0
    assert by[f"{bench.FIXED} throughput"].samples
    ray = by[f"{bench.RAY} throughput"]
    reason = bench.ray_missing()
    if reason is None:
        assert ray.samples
        assert not ray.skipped
    else:
        assert ray.skipped
        assert reason in str(ray.skipped)
        assert not ray.samples
    assert len(run["waits"][bench.FAST_ON]) == TINY["fast_repeats"]
    names = [c.name for c in run["verdicts"]]
    assert f"{bench.FIXED}: throughput under overload / unloaded R" in names
    assert "fast path: |ON / OFF - 1|" in names
    once = [c for c in run["verdicts"] if c.name.endswith("not handled exactly once")]
    assert len(once) == (4 if reason is None else 3)  # Ray's case when it ran
    assert all(c.value == 0 and c.met for c in once)


def test_report_files(bench: ModuleType, run: dict[str, Any]) -> None:
    out: Path = run["out"]
    page = (out / "overload.md").read_text(encoding="utf-8")
    assert "## Overload" in page
    assert "## Fast path" in page
    assert bench.MPQ in page
    doc = json.loads((out / "overload.json").read_text(encoding="utf-8"))
    assert doc["schema"] == SCHEMA
    assert doc["suite"] == "overload"
    assert set(doc["overload"]) == set(bench.CASES)
    assert doc["overload"][bench.FIXED]["series"]
    assert doc["verdicts"]
    if isinstance(doc["meta"]["plots"], list):  # matplotlib present: the plot is drawn
        assert (out / "overload.png").stat().st_size > 0
        assert "(overload.png)" in page
    else:
        assert "matplotlib" in doc["meta"]["plots"]
