"""What a SIGKILLed fork server does to the processes it started, and how it is told.

The fork server's status is set as it starts to exit; then it closes its files (each of
its children's status pipes: the system's sentinel reads end-of-file); then the kernel
sends its children their death signal (PR_SET_PDEATHSIG, armed first thing in each).
Each test runs a small owner program in a subprocess (the fork server is its child, and
killing it touches no other test), kills the fork server with SIGKILL, and checks:

* a child that has not armed its death signal yet (it would run on until it looks) is
  killed at once when its sentinel says end-of-file, and reported as its fork server's
  death: the look never waits for it (it ran on the system's loop thread, up to 5 s);
* an actor whose death its life lock sees first (its sentinel held open here, so that
  nothing else can see it) is reported as its fork server's death too, as one seen on
  its sentinel is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from actorq._transport.shm import list_segments
from actorq.testing import wait_until


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_if_left(pid: int | None) -> None:
    """The test's own safety net: a process the code under test should have ended."""
    if pid is not None and not _gone(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


UNARMED_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from actorq._process.lean import LeanProcess
    from actorq._process.spawn import fork_server_pid, get_context

    NOT_ARMED = "import time\\nopen(MARK, 'w').close()\\ntime.sleep(600)\\n"

    if __name__ == "__main__":
        get_context("forkserver")
        server = fork_server_pid()
        mark = sys.argv[1]
        proc = LeanProcess(target=exec, args=(f"MARK = {mark!r}\\n" + NOT_ARMED, {}),
                           daemon=True)
        proc.start()
        print(json.dumps({"child": proc.pid}), flush=True)
        while not os.path.exists(mark):  # it runs (and never arms its death signal)
            proc.join(0.01)
        os.kill(server, signal.SIGKILL)
        began = time.monotonic()
        proc.join(60)  # its sentinel: end-of-file, no status
        print(json.dumps({"server": server, "code": proc.exitcode,
                          "why": proc.fork_server_death(proc.exitcode),
                          "join_s": time.monotonic() - began}), flush=True)
        proc.close()
    """
)


def test_a_child_not_armed_when_its_fork_server_dies_is_killed_not_waited_for(tmp_path):
    # A child forked a moment before its fork server died has not armed its death
    # signal (deathsig.arm): it is not killed with the server, and runs on until it
    # looks. The old code waited for it (up to 5 s, on the system's loop thread when
    # an actor's sentinel fired), then called it "exit code 255" and left it running.
    script = tmp_path / "owner.py"
    script.write_text(UNARMED_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "running")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = None
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program did not start: {proc.communicate()[1]}")
        child = json.loads(line)["child"]
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program failed: {proc.communicate()[1]}")
        info = json.loads(line)
        assert info["code"] == -signal.SIGKILL, info
        assert info["why"] == f"its fork server (pid {info['server']}) was killed by SIGKILL"
        # killed, not left to run on (it is not the owner's child: its new parent reaps it)
        wait_until(lambda: _gone(child), timeout=30,
                   message="the child of the dead fork server is gone")
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        _kill_if_left(child)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# What both programs below define: an idle actor, and a handler keeping what actorq logs.
IDLE_AND_SAID = textwrap.dedent(
    """
    class Idle(actorq.Actor):
        def pid(self):
            return os.getpid()

    class Said(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())
    """
)

STARTING_ACTOR = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import psutil
    import actorq
    from actorq._process.spawn import fork_server_pid
    from actorq.testing import wait_until
    """
) + IDLE_AND_SAID + textwrap.dedent(
    """

    if __name__ == "__main__":
        said = Said()
        logging.getLogger("actorq").addHandler(said)
        # every process sleeps before it arms its death signal (ACTORQ_TEST_START_DELAY)
        with actorq.ActorSystem(start_method="forkserver", warm_spares=0,
                                stop_timeout=2) as s:
            server = fork_server_pid()
            # its process sleeps, not armed; not restarted (a new one would sleep too)
            ref = s.spawn(Idle, restart="temporary")
            first = []
            def forked():
                first[:] = [p.pid for p in psutil.Process(server).children()]
                return len(first) == 1
            wait_until(forked, timeout=60, message="the actor's process forked")
            print(json.dumps({"run_id": s.run_id, "child": first[0]}), flush=True)
            os.kill(server, signal.SIGKILL)
            child = first[0]
            wait_until(lambda: any(f"(pid {child})" in line for line in said.lines),
                       timeout=60, message="the death reported")
            print(json.dumps({"server": server, "said": said.lines}), flush=True)
    """
)


def test_a_starting_actor_whose_fork_server_dies_is_reported_so_at_once(tmp_path):
    # The same on the system's loop thread: an actor whose process has not armed its
    # death signal when its fork server is killed. Its sentinel reads end-of-file; the
    # loop thread ends it and reports the fork server (before: it waited 5 s for the
    # process, then reported "exit code 255" and left it running).
    script = tmp_path / "owner.py"
    script.write_text(STARTING_ACTOR)
    env = dict(os.environ, ACTORQ_TEST_START_DELAY="600")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    child = None
    family: list[psutil.Process] = []
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program did not start: {proc.communicate()[1]}")
        first = json.loads(line)
        child = first["child"]
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program failed: {proc.communicate()[1]}")
        info = json.loads(line)
        family = psutil.Process(proc.pid).children(recursive=True)
        crashes = [line for line in info["said"] if f"(pid {child})" in line]
        assert len(crashes) == 1, info["said"]
        server = f"its fork server (pid {info['server']}) was killed by SIGKILL"
        assert f"(pid {child}) was killed by SIGKILL: {server}" in crashes[0], crashes[0]
        wait_until(lambda: _gone(child), timeout=30,
                   message="the process of the dead fork server is gone")
        assert proc.wait(120) == 0, proc.stderr.read()
        assert list_segments(first["run_id"]) == []
    finally:
        _kill_if_left(child)
        for p in family:
            _kill_if_left(p.pid)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


SEEN_BY_LIFE_LOCKS = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import actorq
    from actorq._process.spawn import fork_server_pid
    from actorq.testing import wait_until
    """
) + IDLE_AND_SAID + textwrap.dedent(
    """

    def write_end(server, read_fd):
        # a write end of the status pipe whose read end is read_fd (the sentinel): the
        # fork server's copy, opened again through /proc
        pipe = os.readlink(f"/proc/self/fd/{read_fd}")
        for fd in os.listdir(f"/proc/{server}/fd"):
            try:
                if os.readlink(f"/proc/{server}/fd/{fd}") == pipe:
                    return os.open(f"/proc/{server}/fd/{fd}", os.O_WRONLY)
            except OSError:
                continue
        raise LookupError(pipe)

    def crashes(said):
        return [line for line in said.lines if "restarting" in line]

    if __name__ == "__main__":
        said = Said()
        logging.getLogger("actorq").addHandler(said)
        with actorq.ActorSystem(start_method="forkserver", warm_spares=0) as s:
            refs = [s.spawn(Idle) for _ in range(3)]
            pids = [r.pid().result(timeout=60) for r in refs]
            runtime = s._runtime
            wait_until(lambda: runtime._deaths.life.armed == 3, timeout=60,
                       message="the three life locks watched")
            server = fork_server_pid()
            held = [write_end(server, runtime._s.cells[r.actor_id].proc.sentinel)
                    for r in refs]
            os.kill(server, signal.SIGKILL)
            # held open here, no sentinel reads end-of-file: the life locks tell
            wait_until(lambda: len(crashes(said)) == 3, timeout=60,
                       message="three deaths reported")
            seen = crashes(said)
            for fd in held:
                os.close(fd)
            again = [r.pid().result(timeout=60) for r in refs]  # restarted, answering
            print(json.dumps({"server": server, "pids": pids, "again": again,
                              "said": seen}), flush=True)
    """
)


def test_deaths_seen_first_by_the_life_lock_name_the_fork_server(tmp_path):
    # Seen on its sentinel, an actor killed with its fork server was reported as
    # "killed by SIGKILL: its fork server (pid N) was killed by SIGKILL"; seen first by
    # its life lock, as "killed by SIGKILL" alone. Here only the life locks can see the
    # deaths (the test holds each status pipe open): each report names the fork server.
    script = tmp_path / "owner.py"
    script.write_text(SEEN_BY_LIFE_LOCKS)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, check=False, start_new_session=True)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert not set(info["again"]) & set(info["pids"])
    server = f"its fork server (pid {info['server']}) was killed by SIGKILL"
    for pid in info["pids"]:
        said = [line for line in info["said"] if f"(pid {pid})" in line]
        assert len(said) == 1, info["said"]
        assert f"(pid {pid}) was killed by SIGKILL: {server}" in said[0], said[0]
