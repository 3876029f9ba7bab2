"""``actorq bench --compare``: crafted result files, a real regression flagged, noise not."""

from __future__ import annotations

import json
import random

import pytest

from actorq.bench import BenchError, compare_files, compare_runs
from actorq.bench.command import EXIT_BAD_INPUT, EXIT_REGRESSION, main
from actorq.bench.regress import load_result_file


def _doc(results):
    return {"schema": "actorq.bench/1", "suite": "messaging", "title": "t", "machine": {},
            "meta": {}, "verdicts": [], "results": results}


def _result(name, samples, higher=True, unit="msg/s"):
    return {"name": name, "unit": unit, "higher_is_better": higher, "samples": samples}


def _noisy(center, spread, n, seed):
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_a_real_regression_is_flagged_and_noise_is_not(tmp_path):
    base = _doc([_result("tell", _noisy(100_000, 0.03, 7, 1)),
                 _result("call p50", _noisy(40.0, 0.03, 7, 2), higher=False, unit="µs"),
                 _result("noisy", _noisy(1000, 0.30, 7, 3))])
    new = _doc([_result("tell", _noisy(80_000, 0.03, 7, 4)),  # 20% slower: real
                _result("call p50", _noisy(40.5, 0.03, 7, 5), higher=False, unit="µs"),
                _result("noisy", _noisy(900, 0.30, 7, 6))])  # 10% lower, within its noise
    changes = {c.name: c for c in compare_runs(base, new, threshold=0.05)}
    assert changes["tell"].verdict == "worse"
    assert changes["tell"].ratio == pytest.approx(0.8, rel=0.05)
    assert changes["tell"].low <= changes["tell"].ratio <= changes["tell"].high < 1
    assert changes["call p50"].verdict == "same"
    assert changes["noisy"].verdict == "same"
    assert changes["noisy"].low < 1 < changes["noisy"].high  # the interval spans no change

    b, n = _write(tmp_path / "base.json", base), _write(tmp_path / "new.json", new)
    assert main(["--compare", str(b), str(n)]) == EXIT_REGRESSION
    # the same files with the regression gone: exit 0
    fixed = _doc([_result("tell", _noisy(101_000, 0.03, 7, 7)), new["results"][1]])
    assert main(["--compare", str(b), str(_write(tmp_path / "fixed.json", fixed))]) == 0


def test_lower_is_better_and_improvements(tmp_path):
    base = _doc([_result("p99", _noisy(10.0, 0.02, 5, 1), higher=False, unit="ms")])
    slower = _doc([_result("p99", _noisy(12.0, 0.02, 5, 2), higher=False, unit="ms")])
    faster = _doc([_result("p99", _noisy(8.0, 0.02, 5, 3), higher=False, unit="ms")])
    assert compare_runs(base, slower)[0].verdict == "worse"
    assert compare_runs(base, faster)[0].verdict == "better"
    # a 20% change under a 25% threshold is not a regression
    assert compare_runs(base, slower, threshold=0.25)[0].verdict == "same"


def test_the_same_files_give_the_same_answer():
    base = _doc([_result("x", _noisy(100, 0.1, 9, 1))])
    new = _doc([_result("x", _noisy(95, 0.1, 9, 2))])
    assert compare_runs(base, new) == compare_runs(base, new)


def test_too_few_repeats_never_fail(tmp_path):
    base = _doc([_result("x", [100.0, 101.0])])
    new = _doc([_result("x", [50.0, 51.0])])
    (change,) = compare_runs(base, new)
    assert change.verdict == "too few repeats"
    b, n = _write(tmp_path / "b.json", base), _write(tmp_path / "n.json", new)
    assert main(["--compare", str(b), str(n)]) == 0


def test_results_only_in_one_file_and_skips_are_left_out():
    base = _doc([_result("a", [1.0, 2.0, 3.0]), _result("gone", [1.0, 1.0, 1.0])])
    new = _doc([_result("a", [1.0, 2.0, 3.0]), _result("new", [1.0, 1.0, 1.0]),
                {**_result("skipped", []), "skipped": "not installed"}])
    assert [c.name for c in compare_runs(base, new)] == ["a"]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not JSON"),
    ("[1, 2]", "has no 'results' list"),
    ('{"results": {}}', "has no 'results' list"),
    ('{"schema": "actorq.bench/9", "results": []}', "schema 'actorq.bench/9'"),
    ('{"results": [{"name": "x"}]}', "result 0 has no name or no list of numeric samples"),
    ('{"results": [{"name": "x", "samples": ["a"]}]}', "numeric samples"),
])
def test_malformed_files_are_refused_clearly(tmp_path, content, message, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    good = _write(tmp_path / "good.json", _doc([_result("x", [1.0, 2.0, 3.0])]))
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        load_result_file(bad)
    assert main(["--compare", str(good), str(bad)]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_missing_file_and_nothing_in_common(tmp_path, capsys):
    good = _write(tmp_path / "good.json", _doc([_result("x", [1.0, 2.0, 3.0])]))
    other = _write(tmp_path / "other.json", _doc([_result("y", [1.0, 2.0, 3.0])]))
    assert main(["--compare", str(good), str(tmp_path / "none.json")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(BenchError, match="no result in common"):
        compare_files(good, other)
    with pytest.raises(BenchError, match="threshold"):
        compare_files(good, good, threshold=1.5)


def test_files_written_before_the_schema_field_are_read(tmp_path):
    old = {"title": "actorq transport benchmarks", "results": [_result("x", [1.0, 2.0, 3.0])]}
    assert load_result_file(_write(tmp_path / "old.json", old))["results"]
