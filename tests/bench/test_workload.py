"""Users' workloads: a temp module measured side by side, bad input, a hang, faults.

The workload module lives in a temp folder that becomes the current directory, as for
``actorq bench mymod:fn`` typed there. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import textwrap

import psutil
import pytest

from actorq._ids import SEGMENT_PREFIX
from actorq._transport.shm import list_segments
from actorq.bench import BenchError, FaultPlan, run_workload, write_report
from actorq.bench.command import EXIT_BAD_INPUT, main
from actorq.bench.workload import resolve

MODULE = textwrap.dedent('''
    import os
    import time

    import actorq

    class Counter(actorq.Actor):
        def __init__(self):
            self.n = 0

        def incr(self, k=1):
            self.n += k
            return self.n

    def calls(system):
        ref = system.spawn(Counter)
        for _ in range(50):
            ref.incr().result(timeout=30)
        system.stop(ref)
        return 50
    calls.unit = "calls/s"

    def plain(system):
        return sum(range(10_000)) and 10_000
    plain.unit = "calls/s"

    def unitless(system):
        return 1

    class Told:
        unit = "calls/s"

        def setup(self, system):
            self.ref = system.spawn(Counter, name="told")
            self.log = open(os.environ["AQ_WL_LOG"], "a")
            self.log.write("setup\\n")

        def run(self, system):
            for _ in range(20):
                self.ref.incr()
            self.ref.incr(0).result(timeout=30)
            self.log.write("run\\n")
            return 20

        def teardown(self, system):
            self.log.write("teardown\\n")
            self.log.close()

    class SurvivesKills:
        # a workload under --faults: its actor lives across the repeats; it handles
        # ActorCrashed (the call a kill interrupted) and counts what was done
        def setup(self, system):
            self.ref = system.spawn(Counter, name="victim")
            self.ref.incr(0).result(timeout=30)

        def run(self, system):
            done = 0
            for _ in range(60):
                try:
                    self.ref.incr().result(timeout=30)
                    done += 1
                except actorq.ActorCrashed:
                    pass
                time.sleep(0.005)
            return done

        def teardown(self, system):
            system.stop(self.ref)

    def hangs(system):
        system.spawn(Counter, name="stuck").incr().result(timeout=30)
        time.sleep(600)

    def raises(system):
        raise ValueError("boom from the workload")

    def says_text(system):
        return "a lot"

    NOT_CALLABLE = 42

    class NoRun:
        pass
''')


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "aq_user_wl.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AQ_WL_LOG", str(tmp_path / "log.txt"))
    return tmp_path


@pytest.mark.timeout(120)
def test_a_function_and_a_class_side_by_side(workdir):
    report = run_workload("aq_user_wl:calls", "aq_user_wl:Told", "aq_user_wl:plain",
                          repeats=3, warmup=1, timeout=60)
    by = {r.name: r for r in report.results}
    assert list(by) == ["aq_user_wl:calls", "aq_user_wl:Told", "aq_user_wl:plain"]
    for r in report.results:
        assert len(r.samples) == 3
        assert all(s > 0 for s in r.samples)
        assert len(r.started) == 3
        assert r.higher_is_better
    assert {r.unit for r in report.results} == {"calls/s"}
    # the first workload is ours: a ratio to each of the others, with its spread
    assert [v.name for v in report.verdicts] == [
        "aq_user_wl:calls / aq_user_wl:Told", "aq_user_wl:calls / aq_user_wl:plain"]
    assert all(v.unit == "x" and v.low <= v.value <= v.high for v in report.verdicts)
    # interleaved repeat by repeat, in order, each with its work
    timeline = report.extra["timeline"]
    assert [(e["repeat"], e["name"]) for e in timeline] == [
        (i, n) for i in range(3) for n in by]
    assert [e["work"] for e in timeline if e["name"] == "aq_user_wl:Told"] == [20, 20, 20]
    # setup once, warm-up + repeats runs, teardown once
    log = (workdir / "log.txt").read_text().split()
    assert log == ["setup", "run", "run", "run", "run", "teardown"]
    assert report.extra["memory"]


@pytest.mark.timeout(120)
def test_the_command_writes_into_the_current_directory(workdir, capsys):
    assert main(["aq_user_wl:calls", "aq_user_wl:plain", "--repeats", "2"]) == 0
    doc = json.loads((workdir / "workload.json").read_text())
    assert doc["schema"] == "actorq.bench/1"
    assert doc["suite"] == "workload"
    assert [r["name"] for r in doc["results"]] == ["aq_user_wl:calls", "aq_user_wl:plain"]
    assert len(doc["timeline"]) == 4
    assert (workdir / "workload.md").exists()
    assert "aq_user_wl:calls / aq_user_wl:plain" in capsys.readouterr().out


@pytest.mark.parametrize(("spec", "message"), [
    ("aq_user_wl", "is not module:function"),
    ("no_such_module_aq:fn", "cannot import 'no_such_module_aq'"),
    ("aq_user_wl:missing", "has no attribute 'missing'"),
    ("aq_user_wl:NOT_CALLABLE", "is a int, not callable"),
    ("aq_user_wl:NoRun", "class without a run(system) method"),
])
def test_bad_workloads_are_refused_before_anything_runs(workdir, spec, message, capsys):
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(spec)
    assert main([spec, "--repeats", "1"]) == EXIT_BAD_INPUT
    # without a colon the command takes it for a suite name
    assert (message if ":" in spec else "unknown suite") in capsys.readouterr().err
    assert not (workdir / "workload.json").exists()


def test_a_module_that_raises_on_import_is_reported(workdir):
    (workdir / "aq_broken_wl.py").write_text("raise RuntimeError('broken at import')\n")
    with pytest.raises(BenchError, match="RuntimeError: broken at import"):
        resolve("aq_broken_wl:fn")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("spec", "message"), [
    ("aq_user_wl:raises", "ValueError: boom from the workload"),
    ("aq_user_wl:says_text", "returned 'a lot': it must return the amount of work"),
])
def test_a_workload_that_fails_gives_a_clear_error(workdir, spec, message):
    with pytest.raises(BenchError, match=message):
        run_workload(spec, repeats=1, warmup=0, timeout=60)


def _processes_in_session(sid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.timeout(120)
def test_a_hanging_workload_is_killed_with_its_actors_and_segments(workdir, monkeypatch):
    started = []
    real_popen = __import__("subprocess").Popen

    def spy(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc.pid)
        return proc

    monkeypatch.setattr("actorq.bench.workload.subprocess.Popen", spy)
    with pytest.raises(BenchError, match="ran past --timeout 3 s"):
        run_workload("aq_user_wl:hangs", repeats=1, warmup=0, timeout=3)
    (child,) = started
    assert _processes_in_session(child) == []  # its actor and fork server too
    assert list_segments(f"{SEGMENT_PREFIX}{child}_") == []


@pytest.mark.timeout(120)
def test_kill_faults_during_a_workload_are_reported(workdir, tmp_path):
    report = run_workload("aq_user_wl:SurvivesKills", repeats=3, warmup=0, timeout=60,
                          faults=FaultPlan.parse("kill@0.3,kill@0.7,stop@0.5+0.05"))
    faults = report.extra["faults"]
    assert [f["kind"] for f in faults] == ["kill", "stop", "kill"]
    hit = [f for f in faults if f["error"] is None]
    assert hit
    assert all(isinstance(f["pid"], int) for f in hit)
    # when the member ran again is reported (a replacement after a kill), not judged
    assert any(f["running_again_s"] is not None for f in hit if f["kind"] == "kill")
    assert len(report.results[0].samples) == 3
    paths = write_report(report, tmp_path / "out")
    page = (tmp_path / "out" / "workload.md").read_text()
    assert "## Faults" in page
    assert any(p.suffix == ".json" for p in paths)


def test_raise_and_oom_faults_need_the_faults_suite(workdir):
    with pytest.raises(BenchError, match="kill and stop faults only"):
        run_workload("aq_user_wl:calls", faults=FaultPlan.parse("raise@1"))


def test_workloads_with_different_units_are_refused(workdir):
    with pytest.raises(BenchError, match="different units"):
        run_workload("aq_user_wl:calls", "aq_user_wl:unitless")


def test_counts_are_checked(workdir):
    with pytest.raises(BenchError, match="repeats >= 1"):
        run_workload("aq_user_wl:calls", repeats=0)
    with pytest.raises(BenchError, match="at least one workload"):
        run_workload()
    with pytest.raises(BenchError, match="named twice"):
        run_workload("aq_user_wl:calls", "aq_user_wl:calls")
