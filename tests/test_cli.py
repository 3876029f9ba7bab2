"""The actorq command: segments, sweep (of a fabricated dead run), demo, bench, -m actorq."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from actorq import cli
from actorq._ids import SEGMENT_PREFIX, process_stamp
from actorq._transport.shm import SHM_DIR, Segment, list_segments

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid():
    """The pid of a process that has exited and been reaped."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def fake_segments():
    """Segments named like three runs': a dead owner, a reused pid, and a live owner (us)."""
    run = secrets.token_hex(3)
    names = {
        # owner gone: its pid belongs to no process any more
        "dead": f"{SEGMENT_PREFIX}{_dead_pid()}_1f2e3d_{run}_ctl0",
        # pid reused: our pid, but with a start time that is not ours
        "reused": f"{SEGMENT_PREFIX}{os.getpid()}_1_{run}_a1_in0",
        # live: our own stamp, exactly as ActorSystem names its segments
        "live": f"{SEGMENT_PREFIX}{process_stamp(os.getpid())}_{run}_ctl0",
    }
    for name in names.values():
        Segment.create(name, 4096, prefault=False).close()
    try:
        yield names
    finally:
        for name in names.values():
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass


def test_sweep_removes_dead_runs_and_keeps_live_ones(fake_segments, capsys):
    assert cli.main(["sweep"]) == 0
    out = capsys.readouterr().out
    present = set(list_segments())
    for kind in ("dead", "reused"):
        assert f"removed {fake_segments[kind]}" in out
        assert fake_segments[kind] not in present
    assert fake_segments["live"] in present
    assert fake_segments["live"] not in out
    assert "swept" in out


def test_sweep_with_nothing_to_remove_says_so(capsys):
    cli.main(["sweep"])  # whatever earlier runs left
    capsys.readouterr()
    assert cli.main(["sweep"]) == 0
    assert "nothing to sweep" in capsys.readouterr().out


def test_segments_lists_each_with_its_state(fake_segments, capsys):
    assert cli.main(["segments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[-1]: line.split() for line in lines[1:-1]}
    assert by_name[fake_segments["live"]][:3] == ["live", str(os.getpid()), "4096"]
    assert by_name[fake_segments["reused"]][:2] == ["stale", str(os.getpid())]
    assert by_name[fake_segments["dead"]][0] == "stale"
    assert "actorq sweep" in lines[-1]


def test_owner_state_of_a_foreign_name():
    assert cli.owner_state("aq_not_ours") == (None, "unknown")


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["segments", "--bogus"])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "script"), [("demo", "examples/cpu_demo.py")])
def test_demo_says_where_to_find_a_missing_script(command, script, monkeypatch, tmp_path,
                                                  capsys):
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    assert cli.main([command]) == cli.EXIT_MISSING
    out = capsys.readouterr().out
    assert script in out
    assert "source repository" in out


def test_run_script_runs_it_as_python_would(monkeypatch, tmp_path):
    # argv goes to the script, its folder is importable, its exit code comes back
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "aq_cli_helper.py").write_text("OFFSET = 1\n")
    (tmp_path / "examples" / "cpu_demo.py").write_text(
        "import sys\nfrom aq_cli_helper import OFFSET\n"
        "if __name__ == '__main__':\n    sys.exit(int(sys.argv[1]) + OFFSET)\n")
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    monkeypatch.delitem(sys.modules, "aq_cli_helper", raising=False)
    path_before = list(sys.path)
    assert cli.main(["demo", "6"]) == 7
    assert cli.main(["demo", "-1"]) == 0
    assert sys.path == path_before
    sys.modules.pop("aq_cli_helper", None)


@pytest.mark.timeout(90)
def test_python_m_actorq_demo_runs_the_cpu_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "actorq", "demo", "--limit", "200000", "--no-baseline"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check: OK" in proc.stdout
    assert "17,984 primes below 200,000" in proc.stdout


def test_bench_needs_no_checkout(monkeypatch, tmp_path, capsys):
    # the suites ship in the package: no script is looked for beside it
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    assert cli.main(["bench", "--list"]) == 0
    assert "messaging" in capsys.readouterr().out


def test_python_m_actorq_segments():
    proc = subprocess.run([sys.executable, "-m", "actorq", "segments"], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stdout
