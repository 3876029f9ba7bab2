"""Fault injection: plans, what a fault costs (from crafted records), and the faults suite.

The suite runs a small workload under a real SIGKILL, SIGSTOP, raise and max_rss
overrun; work lost and duplicated are counted from the workload's own side effects
(the ledger) and must be 0 for actorq. Recovery times are reported, never asserted.
"""

from __future__ import annotations

import math

import pytest

from actorq.bench import BenchError, FaultPlan, run_suite
from actorq.bench.faults import CallRecord, FaultEvent, fault_effects, throughput_series
from actorq.bench.suites import faults as suite


def test_a_plan_parses_times_rates_and_stalls():
    plan = FaultPlan.parse("kill@1.5, stop@3+0.25,raise~2,oom@.5")
    kinds = [(i.kind, i.at, i.rate, i.stall) for i in plan.items]
    assert kinds == [("kill", 1.5, None, 0.5), ("stop", 3.0, None, 0.25),
                     ("raise", None, 2.0, 0.5), ("oom", 0.5, None, 0.5)]
    assert plan.kinds() == {"kill", "stop", "raise", "oom"}


@pytest.mark.parametrize(("text", "message"), [
    ("", "names no fault"),
    ("kill", "bad fault 'kill'"),
    ("explode@1", "bad fault 'explode@1'"),
    ("kill@x", "bad fault 'kill@x'"),
    ("kill~0", "rate must be positive"),
])
def test_bad_plans_are_refused(text, message):
    with pytest.raises(BenchError, match=message):
        FaultPlan.parse(text)


def test_a_schedule_is_sorted_bounded_and_seeded():
    plan = FaultPlan.parse("kill~5,stop@0.5,raise@99", seed=3)
    first = plan.schedule(2.0)
    assert first == plan.schedule(2.0)  # the same seed, the same times
    times = [t for t, _ in first]
    assert times == sorted(times)
    assert all(t < 2.0 for t in times)
    assert ("stop", 0.5) in [(i.kind, t) for t, i in first]
    assert "raise" not in {i.kind for _, i in first}  # after the end: dropped
    assert first != FaultPlan.parse("kill~5,stop@0.5", seed=4).schedule(2.0)


def _steady(member: str, pid: int, start: float, end: float, step: float) -> list[CallRecord]:
    out, t = [], start
    while t < end:
        out.append(CallRecord(member, t - 0.002, t, True, pid))
        t += step
    return out


def test_fault_effects_from_crafted_records():
    # two members answer every 10 ms; member a is killed at 1.0 s and its replacement
    # (pid 11) answers from 1.3 s on; b goes on throughout
    records = (_steady("a", 10, 0.01, 1.0, 0.01) + _steady("a", 11, 1.3, 2.0, 0.01)
               + _steady("b", 20, 0.01, 2.0, 0.01))
    records.append(CallRecord("a", 0.99, 1.3, False, None))  # the call the kill failed
    event = FaultEvent(1.0, "kill", "a", 10, before=(10, 20))
    effects = fault_effects([event], records, interval=0.1, end=2.0, warmup=0.2)
    assert effects["baseline"] == pytest.approx(200, rel=0.06)
    (row,) = effects["faults"]
    assert row["recovery_s"] == pytest.approx(0.3, abs=0.011)
    assert row["dip_share"] == pytest.approx(0.5, rel=0.1)  # one member of two is gone
    assert row["dip_s"] == pytest.approx(0.3, abs=0.11)
    assert row["p99_window_s"] == pytest.approx(0.002)
    series = throughput_series(records, 0.1, 2.0)
    assert len(series) == 20


def test_a_stall_recovers_only_after_it_ends_and_from_the_same_process():
    records = _steady("a", 10, 0.01, 2.0, 0.01)
    records = [r for r in records if not 1.0 < r.done < 1.5]
    event = FaultEvent(1.0, "stop", "a", 10, stall=0.4, before=(10,))
    (row,) = fault_effects([event], records, interval=0.1, end=2.0)["faults"]
    assert row["recovery_s"] == pytest.approx(0.5, abs=0.011)
    nothing = fault_effects([FaultEvent(1.0, "kill", "a", 10, before=(10,))], records,
                            interval=0.1, end=2.0)["faults"][0]
    assert nothing["recovery_s"] is None  # no replacement ever answered


@pytest.fixture(scope="module")
def report():
    params = {"duration_s": 3.0, "warmup_s": 0.3, "plan": "kill@0.7,stop@1.2+0.2,raise@1.7,oom@2.1",
              "max_rss_mib": 96}
    return run_suite("faults", quick=True, params=params)


@pytest.mark.timeout(180)
def test_actorq_loses_and_duplicates_no_work_under_faults(report):
    (round_,) = report.extra["faults"]
    ours = round_[suite.ACTORQ]
    kinds = [f["kind"] for f in ours["faults"]]
    assert kinds == ["kill", "stop", "raise", "oom"]
    assert all(f["error"] is None for f in ours["faults"])
    books = ours["books"]
    assert books["lost"] == 0
    assert books["duplicated"] == 0
    assert books["failed"] == 0
    assert books["issued"] == books["ok"] + books["crashed"] + books["raised"]
    assert books["raised"] == 1  # the raise fault, reported to its caller
    assert books["crashed"] >= 1  # the call a kill or the overrun interrupted
    restarts = sum(ours["restarts"].values())
    assert restarts >= 2  # the kill and the memory overrun
    by = {r.name: r for r in report.results}
    assert by["actorq work lost"].samples == (0.0,)
    assert by["actorq work duplicated"].samples == (0.0,)


@pytest.mark.timeout(180)
def test_recovery_and_the_fault_window_are_reported(report):
    (round_,) = report.extra["faults"]
    kill = next(f for f in round_[suite.ACTORQ]["faults"] if f["kind"] == "kill")
    assert kill["recovery_s"] is not None  # reported, not judged
    assert kill["recovery_s"] > 0
    assert kill["p99_window_s"] is not None
    assert kill["window_calls"] > 0
    assert round_[suite.ACTORQ]["series"]
    assert round_[suite.ACTORQ]["memory"]
    peer = round_[suite.POOL]
    assert [f["kind"] for f in peer["faults"]] == ["kill", "stop"]  # what it can take
    names = [v.name for v in report.verdicts]
    assert f"recovery after kill / {suite.POOL}" in names
    assert all(math.isfinite(v.value) for v in report.verdicts if v.name.startswith("actorq"))
    assert "## Faults" in report.sections[0]


def test_a_plan_the_suite_cannot_inject_is_refused():
    with pytest.raises(BenchError, match="does not inject faults"):
        run_suite("restart", faults=FaultPlan.parse("kill@1"))
