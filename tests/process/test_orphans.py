"""No process outlives its owner: a SIGKILLed user program takes every descendant down.

Each test runs a small user program in a subprocess, collects every descendant of it
with psutil (warm spares, the fork server, actor processes, the processes the fork
server started for it: grandchildren that are reparented once it dies), SIGKILLs the
program, and waits (bounded) until every one of them is gone. The ~100 ms target of
docs/concepts.md is a figure for the docs, not asserted here: the bound is generous.

Two situations, under every start method:

* ``slow``: every new process is slowed down at its very start (``ACTORQ_TEST_START_DELAY``,
  before it arms its death signal), and the owner dies inside that window. This is the
  race of a spare whose parent is gone before it could ask to die with it.
* ``busy``: an actor runs a long CPU-bound handler (it holds the GIL) with a backlog of
  messages behind it, next to idle actors and warm spares.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from actorq._transport.shm import list_segments, sweep
from actorq.testing import wait_until

OWNER = textwrap.dedent(
    """
    import json, os, sys, time
    import psutil
    import actorq

    class Busy(actorq.Actor):
        def pid(self):
            return os.getpid()

        def spin(self, seconds):
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:  # pure Python: holds the GIL
                n += 1
            return n

        def receive(self, seconds):
            self.spin(seconds)

    class Idle(actorq.Actor):
        def pid(self):
            return os.getpid()

    class Parent(actorq.Actor):
        def on_start(self):
            self.kid = self.context.spawn(Idle)

        def pids(self):
            return [os.getpid(), self.kid.pid().result(timeout=60)]

    def helpers():
        import multiprocessing.forkserver as fs, multiprocessing.resource_tracker as rt
        server = fs._forkserver
        fd = server._forkserver_alive_fd
        return {"alive_pipe": os.readlink(f"/proc/self/fd/{fd}") if fd is not None else None,
                "forkserver": server._forkserver_pid, "tracker": rt._resource_tracker._pid}

    if __name__ == "__main__":
        import faulthandler
        faulthandler.dump_traceback_later(40)  # stuck before printing: say where, on stderr
        method, scenario = sys.argv[1], sys.argv[2]
        s = actorq.ActorSystem(start_method=method, warm_spares=2, stop_timeout=30)
        if scenario == "slow":
            busy = s.spawn(Busy)  # boots only after its start-up delay
            # its process and a spare exist (forked) and sit in their start-up delay (the
            # starter thread forks Busy's process after spawn() returned: wait for both)
            while (len(s._runtime._launch.spares._spares) < 1
                   or s._runtime.pid_of(busy.actor_id) is None):
                time.sleep(0.01)
            faulthandler.cancel_dump_traceback_later()
            print(json.dumps({"run_id": s.run_id, "busy": [], **helpers()}), flush=True)
        else:
            busy = s.spawn(Busy)
            parent = s.spawn(Parent)
            pids = [busy.pid().result(timeout=60), *parent.pids().result(timeout=60)]
            busy.spin(120)
            for _ in range(200):  # a backlog it would go on draining for nobody
                busy.tell(0.5)
            while s.metrics()["actors"][busy.name]["handled"] < 1:
                time.sleep(0.01)  # the pid() call is handled, spin is next
            while len(s._runtime._launch.spares._spares) < 2:
                time.sleep(0.01)
            info = {"run_id": s.run_id, "busy": pids, **helpers()}
            if scenario == "held":
                # a user's own fork child: it inherits the fork server's keep-alive pipe,
                # so the fork server (not ours to kill) outlives the owner
                child = os.fork()
                if child == 0:
                    time.sleep(600)
                    os._exit(0)
                info["user_child"] = child
            faulthandler.cancel_dump_traceback_later()
            print(json.dumps(info), flush=True)
        time.sleep(600)
    """
)


# Seconds the owner program may take to start its actors and print what it started
# (seconds when all is well; below the test's timeout, so that a hang fails with output)
OWNER_READY_WAIT = 45


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run_owner(tmp_path, method: str, scenario: str, delay: float):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    env = dict(os.environ, ACTORQ_TEST_START_DELAY=str(delay))
    proc = subprocess.Popen([sys.executable, str(script), method, scenario],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:  # bounded below the test's own timeout: the owner's stderr says where it hung
        ready, _, _ = select.select([proc.stdout], [], [], OWNER_READY_WAIT)
        line = proc.stdout.readline() if ready else ""
    except BaseException:
        _kill_session(proc)
        raise
    if not line:
        _kill_session(proc)
        pytest.fail(f"the owner program did not start: {proc.communicate()[1]}")
    return proc, json.loads(line)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the owner and whatever it started (its own session), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.kill()
    proc.communicate()


def _pipes(pid: int) -> set[str]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    out = set()
    for fd in fds:
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def _kill_all(proc: subprocess.Popen[str], family: dict[int, psutil.Process]) -> None:
    """Kill the owner program and every process collected from its family."""
    for p in family.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.kill()
    proc.communicate()


def _kill_owner_and_check(proc, info, expect: int, spared: tuple[str, ...] = ()) -> None:
    owner = psutil.Process(proc.pid)
    # every descendant, collected before the kill: spares, the fork server, actors,
    # grandchildren under the fork server, the resource tracker
    family = {p.pid: p for p in owner.children(recursive=True)}
    try:
        assert len(family) >= expect, family
        for pid in info["busy"]:
            assert pid in family
        if info["alive_pipe"] and info["busy"] and "user_child" not in info:
            # only the owner holds the fork server's keep-alive pipe (the fork server
            # reads its other end): else the fork server could not notice its death
            # (a spare forked a moment ago holds it until it has armed itself)
            def held_by_others():
                holders = {pid for pid in family if info["alive_pipe"] in _pipes(pid)}
                return not (holders - {info["forkserver"]})

            wait_until(held_by_others, timeout=10,
                       message="the keep-alive pipe held by the owner alone")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        ours = {pid: p for pid, p in family.items()
                if pid not in {info.get(k) for k in spared}}
        left = lambda: [p.pid for p in ours.values() if not _gone(p)]  # noqa: E731
        try:
            wait_until(lambda: not left(), timeout=10,
                       message="every descendant gone after its owner was SIGKILLed")
        except TimeoutError:
            survivors = []
            for p in ours.values():
                if not _gone(p):
                    try:
                        survivors.append((p.pid, p.ppid(), p.cmdline()[-3:]))
                    except psutil.Error:
                        pass
            pytest.fail(f"processes outlived their owner: {survivors}")
    finally:
        _kill_all(proc, family)  # never leave one behind, whatever happened
    sweep()  # the owner is dead: its segments are swept
    assert list_segments(info["run_id"]) == []


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_processes_slow_to_start_die_with_their_owner(tmp_path, method):
    proc, info = _run_owner(tmp_path, method, "slow", delay=3.0)
    _kill_owner_and_check(proc, info, expect=2)


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_busy_actor_and_its_backlog_die_with_their_owner(tmp_path, method):
    proc, info = _run_owner(tmp_path, method, "busy", delay=0.0)
    _kill_owner_and_check(proc, info, expect=5)


def test_actors_die_with_their_owner_while_its_own_fork_child_keeps_the_fork_server(
        tmp_path):
    # The user's program forked a child of its own: it holds the fork server's pipe, so
    # the fork server never reads its end-of-file. The fork server watches the owner
    # itself (deathsig.serve_owner: one thread for all, none in each actor), exits, and
    # every actor and spare dies with it.
    proc, info = _run_owner(tmp_path, "forkserver", "held", delay=0.0)
    _kill_owner_and_check(proc, info, expect=6, spared=("user_child", "tracker"))


def test_a_child_whose_parent_is_not_the_one_read_before_the_fork_exits():
    # The parent's pid comes from before the fork: a child that finds another parent
    # (its own died first, and it was reparented) must not stay, orphaned.
    not_my_parent = psutil.Process().ppid()  # alive, but not the child's parent
    code = ("from actorq._process.deathsig import set_pdeathsig; "
            f"set_pdeathsig({not_my_parent}); print('stayed')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 4, run.stderr
    assert "stayed" not in run.stdout
    code = ("import os; from actorq._process.deathsig import set_pdeathsig; "
            "set_pdeathsig(os.getppid()); print('stayed')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert run.stdout.strip() == "stayed"  # its real parent: armed, and it goes on


def test_a_fork_started_spare_sees_end_of_file_when_the_system_end_closes():
    # Under fork the child inherits both ends of its socket pair; it closes the system's,
    # so that closing ours (or our death) is an end-of-file in its boot read.
    from actorq._actorproc import host as _host
    from actorq._process.spares import WarmPool
    from actorq._process.spawn import get_context

    pool = WarmPool(get_context("fork"), _host.main, 1)
    proc, sock = pool.start_one()
    try:
        assert proc.is_alive()
        sock.close()  # no "quit" said: only the end-of-file tells it
        wait_until(lambda: not proc.is_alive(), timeout=20,
                   message="the spare exits on end-of-file")
        proc.join(5)
        assert proc.exitcode == 4  # EXIT_SYSTEM_GONE
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        proc.close()


SERVER_KILLED = textwrap.dedent(
    """
    import json, logging, os, sys, threading
    import multiprocessing.forkserver
    import actorq

    class Idle(actorq.Actor):
        def pid(self):
            return os.getpid()

        def threads(self):
            return [t.name for t in threading.enumerate()]

    class Said(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    if __name__ == "__main__":
        said = Said()
        logging.getLogger("actorq").addHandler(said)
        with actorq.ActorSystem(start_method="forkserver", warm_spares=1) as s:
            refs = [s.spawn(Idle) for _ in range(3)]
            pids = [r.pid().result(timeout=60) for r in refs]
            server = multiprocessing.forkserver._forkserver._forkserver_pid
            print(json.dumps({"run_id": s.run_id, "pids": pids, "forkserver": server}),
                  flush=True)
            sys.stdin.readline()  # the test killed the fork server
            again = [r.pid().result(timeout=60) for r in refs]  # restarted, answering
            crashes = [s.metrics()["actors"][r.name]["restarts"] for r in refs]
            threads = refs[0].threads().result(timeout=60)
            print(json.dumps({"pids": again, "restarts": crashes, "threads": threads,
                              "said": said.lines}), flush=True)
    """
)


def test_actors_die_with_a_killed_fork_server_and_are_restarted_leaving_nothing(tmp_path):
    # SIGKILL the fork server: every process it forked dies with it (PR_SET_PDEATHSIG),
    # the system attributes the deaths and restarts the actors (multiprocessing starts
    # a new fork server), and once the program ends nothing of it is left.
    script = tmp_path / "owner.py"
    script.write_text(SERVER_KILLED)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    family: dict[int, psutil.Process] = {}
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program did not start: {proc.communicate()[1]}")
        info = json.loads(line)
        first = {pid: psutil.Process(pid) for pid in info["pids"]}
        os.kill(info["forkserver"], signal.SIGKILL)
        wait_until(lambda: all(_gone(p) for p in first.values()), timeout=20,
                   message="the actors died with their fork server")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the owner program failed: {proc.communicate()[1]}")
        after = json.loads(line)
        assert not set(after["pids"]) & set(info["pids"])  # new processes answered
        assert all(n >= 1 for n in after["restarts"]), after
        # each death is reported as what it was, not as multiprocessing's "exit code
        # 255" for a status the dead fork server could not send, and names the fork
        # server whether its sentinel or its life lock told first
        crashes = [line for line in after["said"] if "restarting" in line]
        assert len(crashes) == 3, after["said"]
        server = f"its fork server (pid {info['forkserver']}) was killed by SIGKILL"
        for line in crashes:
            assert f"was killed by SIGKILL: {server}" in line, line
            assert "255" not in line, line
        # the new fork server was started as actorq starts one: it watches the owner
        assert "actorq-owner-watch" not in after["threads"]
        family = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        assert proc.wait(60) == 0, proc.stderr.read()
        wait_until(lambda: all(_gone(p) for p in family.values()), timeout=20,
                   message="every process of the program gone after it ended")
        assert list_segments(info["run_id"]) == []  # unlinked by the program itself
    finally:
        _kill_all(proc, family)


SERVER_KILLED_UNDER_A_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from actorq._process.lean import LeanProcess
    from actorq._process.spawn import fork_server_pid, get_context

    ARMED = (
        "import time\\n"
        "from actorq._process import deathsig\\n"
        "deathsig.set_pdeathsig(PARENT)\\n"
        "open(MARK, 'w').close()\\n"
        "time.sleep(600)\\n"
    )

    if __name__ == "__main__":
        get_context("forkserver")
        server = fork_server_pid()
        mark = sys.argv[1]
        code = f"PARENT = {server}\\nMARK = {mark!r}\\n" + ARMED
        proc = LeanProcess(target=exec, args=(code, {}), daemon=True)
        proc.start()
        while not os.path.exists(mark):  # its death signal is armed
            proc.join(0.01)
        os.kill(server, signal.SIGKILL)
        proc.join(60)
        print(json.dumps({"server": server, "code": proc.exitcode,
                          "why": proc.fork_server_death(proc.exitcode)}), flush=True)
        proc.close()
    """
)


def test_a_child_of_a_killed_fork_server_is_reported_killed_by_its_signal(tmp_path):
    # The fork server reports its children's exit statuses; killed, it reports none, and
    # multiprocessing's popen says 255 ("exited with code 255"). The child was killed by
    # its death signal (SIGKILL) as the fork server exited: that, and the fork server's
    # own end, are what the lean process reports.
    script = tmp_path / "owner.py"
    script.write_text(SERVER_KILLED_UNDER_A_CHILD)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "armed")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["code"] == -signal.SIGKILL
    assert info["why"] == f"its fork server (pid {info['server']}) was killed by SIGKILL"
