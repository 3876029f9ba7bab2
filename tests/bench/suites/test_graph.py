"""The graph suite's DAG part: the ≥ 97 % target is measured apart from the peers.

A tiny run (a 2 x 2 DAG, one repeat); no timing is asserted, only which cases were
measured together and which verdicts come out of them.
"""

from __future__ import annotations

import multiprocessing

from actorq.bench.suite import SuiteOptions
from actorq.bench.suites.graph import run_graph


def test_the_dag_target_is_measured_without_the_other_peers_alive():
    params = {"parts": "dag", "peers": "mp,ppe", "layers": 2, "width": 2, "task_ms": 0.5,
              "repeats": 1}
    report = run_graph(SuiteOptions(quick=True, params=params, ))
    groups: dict[str, set[str]] = {}
    for r in report.results:
        if r.skipped is None:
            groups.setdefault(r.group, set()).add(r.name)
    target = [g for g in groups if "with the peers alive" not in g]
    beside = [g for g in groups if "with the peers alive" in g]
    assert len(target) == len(beside) == 1
    # the target phase: actorq and the bare processes only, interleaved
    assert groups[target[0]] == {"actorq system.run", "two bare processes (no deps)"}
    # the peers' phase: actorq measured again beside them, the bare processes not
    assert groups[beside[0]] == {"actorq system.run", "PPE layer by layer"}
    verdicts = {v.name: v for v in report.verdicts}
    target_verdict = verdicts["DAG: actorq speed / bare processes' speed"]
    assert target_verdict.target == 0.97
    assert "median of 1 rounds'" in target_verdict.detail  # paired per round
    assert report.meta["busy_strays"] == {}  # no previous part's process was left busy
    assert "DAG: actorq speed / PPE layer by layer" in verdicts
    assert not multiprocessing.active_children()  # every peer's pool was stopped


def test_the_dag_notes_the_cpu_its_tasks_measured_and_takes_a_given_spin_count():
    params = {"parts": "dag", "peers": "mp", "layers": 2, "width": 2, "spin": 1000,
              "repeats": 1}
    report = run_graph(SuiteOptions(quick=True, params=params))
    notes = {r.name: r.note for r in report.results if r.skipped is None}
    for name in ("actorq system.run", "two bare processes (no deps)"):
        assert "spin(1000); CPU per task" in notes[name], notes
    assert report.meta["parameters"]["spin"] == 1000  # the count other runs can reuse


def test_a_peer_whose_cluster_did_not_start_is_skipped_with_the_reason():
    from actorq.bench.suites.graph import peer_missing

    failed = {"ray": "Exception: The current node timed out during startup."}
    why = peer_missing("ray", {"ray", "mp"}, failed)
    assert why is not None
    assert "did not start" in why
    assert "timed out during startup" in why
    assert peer_missing("mp", {"ray", "mp"}, failed) is None
    assert peer_missing("ray", {"mp"}, failed) == "not selected (--set peers=...)"
