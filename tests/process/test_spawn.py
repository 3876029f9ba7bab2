"""The fork server's preload, both ways: actorq preloaded, or the fork server started first.

multiprocessing has one fork server per interpreter, and its preload list is read when it
starts. Started by actorq, it imports actorq once and every actor is forked with it; started
first by another library, every actor imports actorq on start (slower), and actorq says so.
Each case runs in a fresh interpreter, so that the order is the program's, not the suite's
(tests/conftest.py starts the suite's own fork server with actorq preloaded, deliberately).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import logging, multiprocessing, os, sys
    import psutil
    import actorq

    class Probe(actorq.Actor):
        def parent(self):
            return " ".join(psutil.Process(os.getppid()).cmdline())

    if __name__ == "__main__":
        logging.basicConfig(level=logging.WARNING)
        if sys.argv[1] == "other-first":
            p = multiprocessing.get_context("forkserver").Process(target=os.getpid)
            p.start()
            p.join()
        with actorq.ActorSystem() as s:
            print("PARENT", s.spawn(Probe).parent().result(timeout=60), flush=True)
    """
)


def _run(tmp_path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    run = subprocess.run([sys.executable, str(script), mode], capture_output=True,
                         text=True, timeout=50)
    assert run.returncode == 0, run.stderr
    return run


def test_actors_start_from_a_fork_server_with_actorq_preloaded(tmp_path):
    run = _run(tmp_path, "actorq-first")
    parent = next(line for line in run.stdout.splitlines() if line.startswith("PARENT"))
    assert "multiprocessing.forkserver" in parent
    assert "actorq._actorproc.host" in parent  # the preload list the fork server was started with
    assert "could preload" not in run.stderr


def test_a_fork_server_started_first_by_another_library_still_runs_actors(tmp_path):
    run = _run(tmp_path, "other-first")
    parent = next(line for line in run.stdout.splitlines() if line.startswith("PARENT"))
    assert "multiprocessing.forkserver" in parent
    assert "actorq._actorproc.host" not in parent  # not preloaded: each actor imports actorq
    assert "the multiprocessing fork server was started before actorq could preload" in run.stderr


def test_a_childs_exit_is_seen_without_pidfd_open_as_with_it() -> None:
    """Where ``pidfd_open`` is missing (kernels before 5.3; valgrind answers ENOSYS),
    ``exits_within`` falls back to ``waitid(WNOWAIT)``: a live child is not taken for
    exited, an exited one is, and neither is reaped by the look."""
    import os

    from actorq._process import spawn

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert spawn._exits_within_by_waitid(child.pid, 0) is False
        assert spawn._exits_within_by_waitid(child.pid, 0.05) is False
        assert spawn.exits_within(child.pid, 0) is False
        assert child.stdin is not None
        child.stdin.close()  # the child reads end-of-file and exits
        assert spawn._exits_within_by_waitid(child.pid, 60) is True
        assert spawn.exits_within(child.pid, 0) is True
        # not reaped by either look: its status is still there for its owner
        assert os.waitpid(child.pid, 0)[0] == child.pid
        child.returncode = 0
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
