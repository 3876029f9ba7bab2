"""actorq.bench: measure(), ratios and limits, report writing, and the peer runners.

Timings are never asserted: an injected clock makes every sample known in advance.
"""

from __future__ import annotations

import json
import math

import pytest

from actorq.bench import (
    BenchResult,
    Case,
    check,
    compare,
    format_value,
    measure,
    measure_interleaved,
    percentile,
    render_markdown,
    results_table,
    write_results,
)
from actorq.bench.peers import (
    FasterFifoSink,
    PipeEcho,
    PipeSink,
    QueueSink,
    faster_fifo_missing,
)
from actorq.bench.timing import compare_paired


class FakeClock:
    """A timer that only moves when a benchmarked function says how long it 'took'."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def timed_fn(clock: FakeClock, durations: list[float]):
    steps = iter(durations)

    def fn() -> None:
        clock.now += next(steps)

    return fn


# -- percentile and BenchResult ------------------------------------------------------------

def test_percentile_interpolates_linearly_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 10) == pytest.approx(1.4)
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 25) == pytest.approx(2.0)
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_q_is_checked():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="within 0"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="within 0"):
        percentile([1.0], -1)


def test_bench_result_median_and_spreads():
    r = BenchResult("x", "s", (5.0, 1.0, 4.0, 2.0, 3.0))
    assert r.median == 3.0
    assert (r.p10, r.p90) == (pytest.approx(1.4), pytest.approx(4.6))
    assert (r.min, r.max) == (1.0, 5.0)
    assert r.rel_spread == pytest.approx((4.6 - 1.4) / 3.0)


def test_bench_result_even_count_median_is_the_mean_of_the_middle_two():
    assert BenchResult("x", "s", (4.0, 1.0, 3.0, 2.0)).median == 2.5


def test_skipped_result_has_no_figures():
    r = BenchResult.skip("ff", "faster_fifo is not installed", unit="msg/s")
    assert r.samples == ()
    assert r.skipped == "faster_fifo is not installed"
    assert all(math.isnan(v) for v in (r.median, r.p10, r.p90, r.min, r.max, r.rel_spread))
    summary = r.summary()
    assert summary["median"] is None
    assert summary["repeats"] == 0
    assert summary["skipped"] == "faster_fifo is not installed"


# -- measure ------------------------------------------------------------------------------

def test_measure_records_elapsed_time_and_drops_warmup():
    clock = FakeClock()
    fn = timed_fn(clock, [100.0, 3.0, 1.0, 5.0, 2.0, 4.0])  # the first run is warm-up
    r = measure(fn, repeats=5, warmup=1, timer=clock, name="sleepy")
    assert r.samples == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert r.median == 3.0
    assert r.unit == "s"
    assert r.higher_is_better is False
    assert r.name == "sleepy"


def test_measure_with_work_reports_a_rate():
    clock = FakeClock()
    fn = timed_fn(clock, [1.0, 2.0, 4.0, 1.0])
    r = measure(fn, repeats=3, warmup=1, work=100, unit="msg/s", timer=clock)
    assert r.samples == (50.0, 25.0, 100.0)
    assert r.median == 50.0
    assert (r.min, r.max) == (25.0, 100.0)
    assert r.higher_is_better is True
    assert r.unit == "msg/s"


def test_measure_passes_args_and_defaults_name_and_units():
    seen = []

    def work(a, b):
        seen.append((a, b))

    r = measure(work, 1, "two", repeats=2, warmup=0)
    assert seen == [(1, "two"), (1, "two")]
    assert r.name == "work"
    assert r.unit == "s"
    assert len(r.samples) == 2
    assert measure(work, 1, 2, repeats=1, warmup=0, work=10).unit == "1/s"


def test_measure_self_timed_takes_the_returned_number():
    values = iter([999.0, 12.0, 10.0, 11.0])

    r = measure(lambda: next(values), repeats=3, warmup=1, self_timed=True, unit="µs")
    assert r.samples == (12.0, 10.0, 11.0)
    assert r.median == 11.0


def test_measure_self_timed_rejects_non_numbers_and_mappings():
    with pytest.raises(TypeError, match="must return a number"):
        measure(lambda: "fast", repeats=1, warmup=0, self_timed=True)
    with pytest.raises(TypeError, match="measure_interleaved"):
        measure(lambda: {"p50": 1.0}, repeats=1, warmup=0, self_timed=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"), ({"work": 0}, "work"),
     ({"work": 5, "self_timed": True}, "not both")],
)
def test_measure_validates_its_options(kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        measure(lambda: calls.append(1), **kwargs)
    assert calls == []  # nothing ran


def test_a_timer_that_does_not_advance_cannot_give_a_rate():
    with pytest.raises(ValueError, match="did not advance"):
        measure(lambda: None, repeats=1, warmup=0, work=10, timer=lambda: 1.0)


def test_interleaved_runs_cases_in_turn_after_warmup():
    order = []
    cases = [Case("a", order.append, ("a",)), Case("b", order.append, ("b",))]
    results = measure_interleaved(cases, repeats=3, warmup=1)
    assert order == ["a", "b"] * 2 + ["b", "a"] + ["a", "b"]  # every other round reversed
    assert [r.name for r in results] == ["a", "b"]
    assert all(len(r.samples) == 3 for r in results)


def test_interleaved_mapping_case_gives_one_result_per_metric():
    runs = iter([{"p50": 0.0, "p99": 0.0},  # warm-up
                 {"p50": 10.0, "p99": 30.0}, {"p50": 12.0, "p99": 50.0},
                 {"p50": 11.0, "p99": 40.0}])
    case = Case("call", lambda: next(runs), unit="µs", self_timed=True, group="latency")
    p50, p99 = measure_interleaved([case], repeats=3, warmup=1)
    assert (p50.name, p50.samples, p50.median) == ("call p50", (10.0, 12.0, 11.0), 11.0)
    assert (p99.name, p99.samples, p99.median) == ("call p99", (30.0, 50.0, 40.0), 40.0)
    assert p50.unit == p99.unit == "µs"
    assert p50.group == "latency"
    assert p50.higher_is_better is False


def test_interleaved_mapping_case_must_keep_its_keys():
    runs = iter([{"p50": 1.0}, {"p99": 1.0}])
    case = Case("call", lambda: next(runs), self_timed=True)
    with pytest.raises(ValueError, match="same keys"):
        measure_interleaved([case], repeats=2, warmup=0)


# -- compare and check ------------------------------------------------------------------------

def test_compare_is_the_ratio_of_medians_with_a_crossed_spread():
    ours = BenchResult("ours", "msg/s", (90.0, 100.0, 110.0, 100.0, 100.0),
                       higher_is_better=True)
    peer = BenchResult("peer", "msg/s", (20.0, 20.0, 20.0, 18.0, 22.0),
                       higher_is_better=True)
    v = compare(ours, peer, at_least=5.0)
    assert v.value == pytest.approx(5.0)
    assert v.unit == "x"
    assert v.met is True
    assert v.low == pytest.approx(ours.p10 / peer.p90)
    assert v.high == pytest.approx(ours.p90 / peer.p10)
    assert v.low < v.value < v.high
    assert v.name == "ours / peer"
    assert compare(ours, peer, at_least=5.01).met is False


def test_compare_at_most_for_latencies():
    ours = BenchResult("ours p50", "µs", (20.0, 20.0, 20.0))
    peer = BenchResult("pipe p50", "µs", (50.0, 50.0, 50.0))
    v = compare(ours, peer, at_most=0.5, name="p50 ratio")
    assert v.value == pytest.approx(0.4)
    assert v.met is True
    assert v.name == "p50 ratio"
    assert compare(peer, ours, at_most=0.5).met is False


def test_compare_without_target_or_with_a_skipped_side_has_no_verdict():
    ours = BenchResult("ours", "msg/s", (10.0,))
    assert compare(ours, BenchResult("peer", "msg/s", (5.0,))).met is None
    v = compare(ours, BenchResult.skip("ff", "not installed", unit="msg/s"), at_least=5.0)
    assert math.isnan(v.value)
    assert v.met is None
    assert "not installed" in v.detail
    assert v.summary()["value"] is None


def test_compare_refuses_mixed_units_and_two_targets():
    a = BenchResult("a", "msg/s", (1.0,))
    with pytest.raises(ValueError, match="cannot compare"):
        compare(a, BenchResult("b", "µs", (1.0,)))
    with pytest.raises(ValueError, match="not both"):
        compare(a, a, at_least=1.0, at_most=2.0)


def test_check_against_an_absolute_limit():
    uss = BenchResult("idle USS", "MiB", (9.0, 9.5, 12.0))
    v = check(uss, at_most=10.0)
    assert (v.value, v.unit, v.goal, v.met) == (9.5, "MiB", "at_most", True)
    assert check(uss, at_most=9.0).met is False
    assert check(uss, at_least=9.5).met is True
    assert check(BenchResult.skip("x", "why", unit="MiB"), at_most=1.0).met is None


# -- report ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(1234567.8, "msg/s", "1,234,568 msg/s"), (123.4, "", "123"), (45.25, "µs", "45.2 µs"),
     (5.234, "x", "5.23x"), (0.01234, "s", "0.0123 s"), (0.0, "", "0.00"),
     (math.nan, "x", "-")],
)
def test_format_value(value, unit, text):
    assert format_value(value, unit) == text


def _sample_results() -> list[BenchResult]:
    return [
        BenchResult("actorq tell", "msg/s", (300.0, 100.0, 200.0), higher_is_better=True,
                    group="tell", note="N=3"),
        BenchResult("mp.Queue put", "msg/s", (50.0, 40.0, 60.0), higher_is_better=True,
                    group="tell"),
        BenchResult.skip("faster_fifo put", "faster_fifo is not installed", unit="msg/s",
                         group="tell"),
    ]


def test_results_table_shows_median_spread_and_skips():
    table = results_table(_sample_results())
    lines = table.splitlines()
    assert lines[0].startswith("| Group | Benchmark | Median |")
    assert len(lines) == 2 + 3
    assert "| tell | actorq tell | 200 | 120 .. 280 | 100 .. 300 | msg/s | 3 |" in lines[2]
    assert "higher is better; N=3" in lines[2]
    assert "| faster_fifo put | skipped |" in lines[4]
    assert "faster_fifo is not installed" in lines[4]


def test_results_table_escapes_pipes():
    table = results_table([BenchResult("a|b", "s", (1.0,), note="x | y")])
    assert "a\\|b" in table
    assert "x \\| y" in table


def test_write_results_writes_json_and_markdown(tmp_path):
    results = _sample_results()
    verdicts = [compare(results[0], results[1], at_least=5.0, name="tell / Queue"),
                compare(results[0], results[2], name="tell / faster_fifo")]
    machine = {"cpu_count": 2, "python": "3.11.7", "date": "2026-01-01T00:00:00+00:00"}
    path_json = tmp_path / "out" / "t.json"
    path_md = tmp_path / "out" / "t.md"

    doc = write_results(results, path_json, path_md, verdicts=verdicts, machine=machine,
                        title="demo", meta={"mode": "quick"})

    loaded = json.loads(path_json.read_text(encoding="utf-8"))
    assert loaded == doc
    assert loaded["machine"] == machine
    assert loaded["meta"] == {"mode": "quick"}
    first = loaded["results"][0]
    assert (first["name"], first["median"], first["min"], first["max"]) == (
        "actorq tell", 200.0, 100.0, 300.0)
    assert first["p10"] == pytest.approx(120.0)
    assert first["p90"] == pytest.approx(280.0)
    assert first["samples"] == [300.0, 100.0, 200.0]
    assert loaded["results"][2]["median"] is None
    assert loaded["results"][2]["skipped"] == "faster_fifo is not installed"
    ratio, skipped = loaded["verdicts"]
    assert ratio["value"] == pytest.approx(4.0)
    assert (ratio["target"], ratio["goal"], ratio["met"]) == (5.0, "at_least", False)
    assert skipped["value"] is None
    assert skipped["met"] is None

    md = path_md.read_text(encoding="utf-8")
    assert md.startswith("# demo\n")
    assert "- cpu_count: 2" in md
    assert "- python: 3.11.7" in md
    assert "- mode: quick" in md
    assert "| tell / Queue | 4.00x |" in md
    assert "| ≥ 5.00x | **NO** |" in md
    assert "| tell | actorq tell | 200 |" in md
    assert sorted(p.name for p in path_json.parent.iterdir()) == ["t.json", "t.md"]


def test_write_results_fills_in_the_machine(tmp_path):
    doc = write_results(_sample_results(), tmp_path / "a.json", tmp_path / "a.md")
    for key in ("cpu_count", "python", "date", "packages"):
        assert key in doc["machine"]
    assert "## Machine" in (tmp_path / "a.md").read_text(encoding="utf-8")


def test_render_markdown_leaves_out_empty_sections():
    md = render_markdown(_sample_results())
    assert "## Targets" not in md
    assert "## Machine" not in md
    assert "## Results" in md


# -- peers (they start processes; the leak guard checks that close() joins them) -----------

def test_queue_sink_counts_what_was_put():
    with QueueSink() as sink:
        assert sink.send_small(100) == 100
        assert sink.send_small(7) == 7  # the count starts again after each batch


def test_pipe_echo_and_round_trips():
    with PipeEcho() as echo:
        assert echo.echo(("x", 1)) == ("x", 1)
        times = echo.round_trips(50)
    assert len(times) == 50
    assert all(isinstance(t, int) and t > 0 for t in times)


def test_pipe_sink_replies_with_nbytes():
    np = pytest.importorskip("numpy")
    with PipeSink() as sink:
        assert sink.transfer(np.zeros(1000, dtype=np.float64)) == 8000
        assert sink.transfer(b"bytes have no nbytes") == 0


def test_faster_fifo_sink_counts_what_was_put():
    if faster_fifo_missing() is not None:
        with pytest.raises(ModuleNotFoundError, match="faster_fifo"):
            FasterFifoSink()
        return
    with FasterFifoSink() as sink:
        assert sink.send_small(1000) == 1000


def test_close_is_idempotent_and_joins_the_process():
    sink = QueueSink()
    proc = sink._proc
    sink.close()
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        proc.is_alive()  # Process.close() was called: the process is joined and released


def test_compare_paired_is_the_median_of_the_rounds_ratios():
    # the machine slowed during rounds 1 and 4: both sides were slow then, so the
    # rounds' ratios stay near 0.95 where the medians' ratio is pulled to 0.83
    bare = BenchResult("bare", "s", (1.50, 1.12, 1.13, 1.32, 1.47))
    ours = BenchResult("ours", "s", (1.56, 1.15, 1.22, 1.54, 1.54))
    v = compare_paired(bare, ours, at_least=0.97, name="speed")
    rounds = sorted(b / o for b, o in zip(bare.samples, ours.samples, strict=True))
    assert v.value == pytest.approx(rounds[2])
    assert (v.low, v.high) == (pytest.approx(rounds[0]), pytest.approx(rounds[-1]))
    assert v.met is False
    assert compare(bare, ours).value < v.value  # the medians came from different moments
    assert "median of 5 rounds" in v.detail
    assert f"{compare(bare, ours).value:.3f}" in v.detail  # the plain ratio is kept
    assert compare_paired(bare, ours, at_least=0.9).met is True


def test_compare_paired_refuses_samples_that_are_not_rounds_of_one_run():
    a = BenchResult("a", "s", (1.0, 2.0))
    with pytest.raises(ValueError, match="cannot pair"):
        compare_paired(a, BenchResult("b", "s", (1.0,)))
    with pytest.raises(ValueError, match="cannot compare"):
        compare_paired(a, BenchResult("b", "µs", (1.0, 2.0)))
    v = compare_paired(a, BenchResult.skip("b", "not installed", unit="s"), at_least=1.0)
    assert math.isnan(v.value)
    assert "not installed" in v.detail
