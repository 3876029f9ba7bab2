"""The leak guard (``-p actorq.testing``) catches deliberate leaks, and only leaks.

Each case is a small test module run by a separate pytest (a subprocess) with the plugin,
so that its failures are the guard's verdicts, read from its report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from actorq._ids import RUN_TAG_ENV
from actorq._transport.shm import list_segments, unlink_prefix

CASES = {
    "test_grandchild.py": """
        import subprocess, sys

        def test_leaves_a_grandchild(tmp_path):
            # the child starts a grandchild and exits: the grandchild is reparented
            code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(120)'], stdout=subprocess.DEVNULL, "
                    "stderr=subprocess.DEVNULL); print(p.pid)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                 text=True, check=True).stdout
            (MARKS / "grandchild").write_text(out.strip())
        """,
    "test_other_pid.py": """
        import os, subprocess, sys
        from actorq._ids import process_stamp
        from actorq._transport.shm import Segment

        PROGRAM = ("import time, actorq; s = actorq.ActorSystem(warm_spares=0); "
                   "print(s.run_id, flush=True); time.sleep(120)")

        def test_a_subprocess_leaves_its_segments():
            # a user program run as a subprocess: its segments carry its own pid, and it
            # is alive (a dead one's would be swept by any new system on the machine)
            p = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE,
                                 text=True)
            (MARKS / "tagged").write_text(p.stdout.readline().strip())

        def test_another_program_is_not_ours():
            # a segment of another live program's run (here: init's pid and start time)
            name = f"aq_{process_stamp(1)}_f00d42_ctl0"
            (MARKS / "untagged").write_text(name)
            seg = Segment.create(name, 64)
            seg.close()  # left in /dev/shm, as another program would
        """,
    "test_module_fixture.py": """
        import subprocess, sys
        import pytest

        @pytest.fixture(scope="module")
        def server():
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            (MARKS / "module").write_text(str(p.pid))
            yield p  # never stopped

        def test_one(server):
            assert server.poll() is None

        def test_two(server):
            assert server.poll() is None
        """,
    "test_left_open.py": """
        import os
        import actorq
        from actorq._system import _live_systems

        class A(actorq.Actor):
            def pid(self):
                return os.getpid()

        def test_leaves_its_system_open():
            s = actorq.ActorSystem(warm_spares=0)
            (MARKS / "open").write_text(str(s.spawn(A).pid().result(timeout=30)))

        def test_the_next_test_starts_clean():
            assert not list(_live_systems)

        def test_a_clean_test_passes():
            with actorq.ActorSystem() as s:
                assert s.spawn(A).pid().result(timeout=30) > 0
        """,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("guarded")
    marks = root / "marks"
    marks.mkdir()
    for name, body in CASES.items():
        header = f"from pathlib import Path\nMARKS = Path({str(marks)!r})\n"
        (root / name).write_text(header + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != RUN_TAG_ENV}  # its own session
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "actorq.testing", "-rA",
                          "-p", "no:cacheprovider", "-q", *CASES], cwd=root, env=env,
                         capture_output=True, text=True, timeout=50)
    return run.stdout + run.stderr, marks


def _line(out: str, outcome: str, test: str) -> str:
    for line in out.splitlines():
        if line.startswith(outcome) and test in line:
            return line
    pytest.fail(f"no {outcome} line for {test} in:\n{out}")


def _verdict(out: str, test: str) -> str:
    """The guard's message: it fails the test at teardown (reported as an error)."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"ERROR at teardown of {test} " in line:
            return lines[i + 1]
    pytest.fail(f"no teardown error for {test} in:\n{out}")


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_reparented_grandchild_is_caught_and_killed(report):
    out, marks = report
    line = _verdict(out, "test_leaves_a_grandchild")
    assert "leak guard (test): child processes left running" in line
    pid = int((marks / "grandchild").read_text())
    assert str(pid) in line
    assert _dead(pid)


def test_segments_of_a_subprocess_with_another_pid_are_caught(report):
    out, marks = report
    line = _verdict(out, "test_a_subprocess_leaves_its_segments")
    run_id = (marks / "tagged").read_text()
    assert "shared-memory segments left in /dev/shm" in line
    assert run_id in line
    assert list_segments(run_id) == []  # and unlinked


def test_another_programs_segments_are_not_blamed(report):
    out, marks = report
    name = (marks / "untagged").read_text()
    try:
        _line(out, "PASSED", "test_other_pid.py::test_another_program_is_not_ours")
        assert "ERROR at teardown of test_another_program_is_not_ours" not in out
        assert list_segments(name) == [name]  # left alone
    finally:
        unlink_prefix(name)


def test_what_a_module_scoped_fixture_leaves_is_caught(report):
    out, marks = report
    assert "ERROR at teardown of test_one" not in out  # per test: it existed before
    line = _verdict(out, "test_two")
    assert "leak guard (module): child processes left running" in line
    assert _dead(int((marks / "module").read_text()))


def test_a_system_left_open_is_closed_before_the_next_test(report):
    out, marks = report
    line = _verdict(out, "test_leaves_its_system_open")
    assert "actor systems left open (now closed)" in line
    for test in ("test_the_next_test_starts_clean", "test_a_clean_test_passes"):
        _line(out, "PASSED", f"test_left_open.py::{test}")
        assert f"ERROR at teardown of {test}" not in out
    assert _dead(int((marks / "open").read_text()))
    # closed, not killed under a running supervisor: no crash loop in the logs
    assert "restart" not in out.lower()
