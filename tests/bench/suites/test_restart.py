"""The restart suite: a tiny actorq restart measurement runs and reports sanely.

No timing is asserted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from actorq.bench.output import write_report
from actorq.bench.suite import SuiteReport
from actorq.bench.suites import restart

REPEATS = 2


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return restart


def test_forkserver_spare_restarts_are_measured(bench: ModuleType) -> None:
    block = bench.actorq_block("forkserver", 1, REPEATS, warmup=0, settle=0.05)

    samples = block["samples_ms"]
    assert len(samples) == REPEATS
    assert all(math.isfinite(s) and s > 0 for s in samples)
    # every kill restarted the actor, and the system counted each restart
    assert block["kills"] == REPEATS
    assert block["restarts"] == REPEATS


def test_results_and_report_from_a_tiny_run(bench: ModuleType, tmp_path: Path) -> None:
    params = {"repeats": REPEATS, "rounds": 1, "warmup": 0, "settle": 0.05}
    blocks = bench.run_cases(params, only=[bench.FS_SPARE])
    results = bench.to_results(blocks)
    by = {r.name: r for r in results}

    ours = by[bench.FS_SPARE]
    assert ours.unit == "ms"
    assert len(ours.samples) == REPEATS
    assert ours.median > 0
    assert blocks[bench.FS_SPARE]["restarts"] == REPEATS
    # only actorq's case was asked for: Ray's is a skip that says why (not installed, or
    # not run), never a figure
    reason = bench.ray_missing()
    assert by[bench.RAY].skipped
    assert not by[bench.RAY].samples
    assert (reason or "not run") in str(by[bench.RAY].skipped)

    checks = bench.verdicts(results)
    rows = bench.latency_rows(results, blocks)
    report = SuiteReport("restart", "smoke", results, checks, meta={"mode": "test"},
                         extra={"latency": rows}, sections=[bench.latency_section(rows)])
    write_report(report, tmp_path)
    page = (tmp_path / "restart.md").read_text(encoding="utf-8")
    assert "## Restart latency" in page
    assert bench.FS_SPARE in page
    doc = json.loads((tmp_path / "restart.json").read_text(encoding="utf-8"))
    assert [row["name"] for row in doc["latency"]] == [r.name for r in results]
