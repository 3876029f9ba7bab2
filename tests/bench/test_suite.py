"""Suites through ``actorq bench``: the registry, every suite's quick form, bad input.

Each suite runs in its ``--quick`` form (made smaller still with ``--set`` where a part
is slow) and must write a valid JSON document and a Markdown page. No timing is
asserted: figures are checked for presence and shape only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actorq.bench import BenchError
from actorq.bench.command import EXIT_BAD_INPUT, main
from actorq.bench.regress import load_result_file
from actorq.bench.suite import SCHEMA, SuiteOptions, find_suite, run_suite, suites

# Every suite but overload (tests/bench/suites/test_overload.py runs it): its quick form,
# with the slow parts cut down further for CI.
QUICK_SETS = {
    "messaging": ["--set", "task_peers=pool,executor,loky", "--set", "idle_settle=0.1",
                  "--set", "idle_window=0.2", "--set", "tells=5000", "--repeats", "2"],
    "restart": ["--repeats", "2"],
    "faults": ["--set", "duration_s=2.0", "--set", "plan=kill@0.6,stop@1.0+0.2"],
    "graph": ["--set", "noop_tasks=500", "--set", "big_nodes=4000", "--set", "arrays=4",
              "--set", "array_mib=1", "--set", "layers=4", "--set", "width=4"],
    "pool": ["--set", "fault_calls=1000", "--set", "map_items=5000", "--set", "call_batches=6",
             "--set", "calls_per_batch=100", "--set", "submit_tasks=1000"],
}


def test_the_registry_finds_every_suite_module():
    names = set(suites())
    assert {"messaging", "restart", "overload", "faults", "graph", "pool"} <= names
    # a suite added as a module must get its quick run here too
    assert names == set(QUICK_SETS) | {"overload"}
    for suite in suites().values():
        assert suite.summary
        assert suite.missing() is None or isinstance(suite.missing(), str)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(QUICK_SETS))
def test_every_suite_quick_writes_valid_json(name, tmp_path, capsys):
    assert main([name, "--quick", "--out", str(tmp_path), *QUICK_SETS[name]]) == 0
    doc = load_result_file(tmp_path / f"{name}.json")  # the checks --compare makes
    assert doc["schema"] == SCHEMA
    assert doc["suite"] == name
    assert doc["meta"]["mode"] == "quick"
    machine = doc["machine"]
    for key in ("cpu_count", "cpu_model", "load_average", "python", "packages", "code"):
        assert machine[key] is not None, key
    ran = [r for r in doc["results"] if r["skipped"] is None]
    assert ran
    for r in ran:
        assert r["repeats"] == len(r["samples"]) > 0
        assert all(s is None or math.isfinite(s) for s in r["samples"])
        assert r["median"] is None or r["min"] <= r["median"] <= r["max"]
    assert doc["verdicts"]  # ratios to a peer of the same run
    assert any(v["unit"] == "x" for v in doc["verdicts"])
    page = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    assert page.startswith("# ")
    out = capsys.readouterr()
    assert f"{name}.json" in out.out
    assert out.err  # the progress lines


def test_unknown_suite_is_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["nosuch", "--out", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown suite 'nosuch'" in err
    assert "messaging" in err
    assert not out.exists()


def test_unwritable_out_is_refused_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["restart", "--out", str(blocker / "sub")]) == EXIT_BAD_INPUT
    assert "cannot write the report" in capsys.readouterr().err
    with pytest.raises(BenchError, match="cannot write the report"):
        run_suite("restart", out=blocker)


@pytest.mark.parametrize(("argv", "message"), [
    (["restart", "--set", "nope=1"], "unknown parameter(s) nope"),
    (["restart", "--set", "repeats=many"], "expected a int"),
    (["restart", "--set", "novalue"], "write KEY=VALUE"),
    (["restart", "--faults", "kill@1"], "does not inject faults"),
    (["faults", "--faults", "explode@1"], "bad fault 'explode@1'"),
    (["restart", "mod:fn"], "not both"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_repeats_must_be_positive():
    with pytest.raises(BenchError, match="repeats must be at least 1"):
        run_suite("restart", repeats=0)


def test_options_merge_quick_repeats_and_params():
    full, quick = {"n": 10, "r": 5, "x": 1.5}, {"n": 1, "r": 2, "x": 0.5}
    opts = SuiteOptions(quick=True, repeats=7, params={"x": "2.5"})
    assert opts.parameters(full, quick, ("r",)) == {"n": 1, "r": 7, "x": 2.5}
    assert SuiteOptions().parameters(full, quick) == full


def test_find_suite_names_the_known_ones():
    assert find_suite("faults").supports_faults
    with pytest.raises(BenchError, match="faults, graph, messaging"):
        find_suite("pools")


def test_list_shows_every_suite(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in suites():
        assert name in out
    assert "module:fn" in out


def test_plots_are_drawn_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    report = run_suite("faults", quick=True, out=tmp_path,
                       params={"duration_s": 1.5, "plan": "kill@0.5"})
    assert report.meta["plots"] == ["faults.png"]
    assert (tmp_path / "faults.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(faults.png)" in Path(tmp_path / "faults.md").read_text(encoding="utf-8")
    doc = json.loads((tmp_path / "faults.json").read_text(encoding="utf-8"))
    assert doc["faults"][0]["actorq"]["faults"][0]["kind"] == "kill"
