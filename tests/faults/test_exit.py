"""A system left open at interpreter exit, and a new system sweeping dead runs' segments."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil

import actorq
from actorq._transport.shm import list_segments
from actorq.testing import wait_until

_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import actorq

    class Noter(actorq.Actor):
        def __init__(self, path):
            self.path = path

        def pid(self):
            return os.getpid()

        def on_stop(self):
            with open(self.path, "w") as f:
                f.write("stopped at exit")

    if __name__ == "__main__":
        s = actorq.ActorSystem()  # never closed by the program
        a = s.spawn(Noter, sys.argv[1])
        print(s.run_id, a.pid().result(timeout=30), flush=True)
        if sys.argv[2] == "sleep":
            time.sleep(120)
    """
)


def _run(tmp_path, mode):
    script = tmp_path / "prog.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "note"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    return proc, line[0], int(line[1])


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_system_left_open_is_closed_at_interpreter_exit(tmp_path):
    proc, run_id, pid = _run(tmp_path, "exit")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert (tmp_path / "note").read_text() == "stopped at exit"  # a graceful stop
    wait_until(lambda: _gone(pid))
    assert list_segments(run_id) == []


def test_a_new_system_sweeps_the_segments_of_dead_runs(tmp_path):
    proc, run_id, pid = _run(tmp_path, "sleep")
    proc.kill()  # SIGKILL: it cannot clean up
    proc.communicate(timeout=30)
    wait_until(lambda: _gone(pid))
    left = list_segments(run_id)
    assert left, "a SIGKILLed owner leaves its segments behind"
    with actorq.ActorSystem(warm_spares=0) as live:
        live_segments = list_segments(live.run_id)
        assert live_segments
        assert list_segments(run_id) == []  # swept when the new system started
        with actorq.ActorSystem(warm_spares=0):
            # a second system sweeps too, and leaves the live run's segments alone
            assert set(live_segments) <= set(list_segments(live.run_id))
    assert not (tmp_path / "note").exists()  # killed: on_stop never ran
