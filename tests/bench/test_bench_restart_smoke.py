"""benchmarks/bench_restart.py: a tiny actorq restart measurement runs and reports sanely.

The script is loaded from its path (benchmarks/ is not a package). It is deliberately
not put in ``sys.modules``: cloudpickle then ships its actor class by value, as it does
for a class defined in a script's ``__main__``. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_restart.py"
REPEATS = 2


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_restart_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    reason = bench.ray_missing()
    if reason is None:  # ray is installed: the case must have run
        assert by[bench.RAY].samples
        assert not by[bench.RAY].skipped
    else:  # not installed: a skip that says so
        assert by[bench.RAY].skipped
        assert reason in str(by[bench.RAY].skipped)

    checks = bench.verdicts(results)
    rows = bench.latency_rows(results, blocks)
    bench.write_report(results, checks, rows, tmp_path / "r.json", tmp_path / "r.md",
                       title="smoke", meta={"mode": "test"})
    page = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "## Restart latency" in page
    assert bench.FS_SPARE in page
