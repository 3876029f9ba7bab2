"""The lean start under the fork server (``actorq/_process/lean.py``): a child started
without multiprocessing's per-child bootstrap still runs its target with the parent's
authkey, working directory and ``sys.path``, reports its exit code and its exceptions as
multiprocessing does, and runs its finalizers at exit.

The targets are builtins (``exec`` of a small program), so that the fork server's child
can unpickle them whatever this test module is called.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading

import pytest

import actorq
from actorq._process.lean import LeanProcess, close_all
from actorq._process.spawn import get_context

CHILD = """
import multiprocessing, multiprocessing.util, os, sys, threading
def done(path):
    with open(path + ".final", "w") as f:
        f.write("finalized")
multiprocessing.util.Finalize(None, done, (PATH,), exitpriority=1)
with open(PATH, "w") as f:
    f.write("\\n".join([
        multiprocessing.current_process().authkey.hex(),
        multiprocessing.current_process().name,
        os.getcwd(),
        repr(EXTRA in sys.path),
        multiprocessing.get_start_method(),
        repr([t.name for t in threading.enumerate()]),
        repr(multiprocessing.current_process().daemon),
    ]))
"""


def _run(code: str, name: str = "actorq:lean-test") -> int:
    get_context("forkserver")  # the fork server this suite started, actorq preloaded
    proc = LeanProcess(target=exec, args=(code, {}), name=name, daemon=True)
    proc.start()
    try:
        proc.join(60)
        assert proc.exitcode is not None, "the child did not finish in 60 s"
        return proc.exitcode
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join(5)
        proc.close()


def test_a_lean_child_runs_with_the_parents_authkey_cwd_and_path(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    extra = str(tmp_path / "extra-path-entry")
    monkeypatch.chdir(tmp_path)  # after the fork server started: the child follows
    monkeypatch.setattr(sys, "path", [*sys.path, extra])
    code = f"PATH = {str(out)!r}\nEXTRA = {extra!r}\n" + CHILD
    assert _run(code) == 0
    authkey, name, cwd, has_extra, method, threads, daemon = out.read_text().splitlines()
    assert authkey == multiprocessing.current_process().authkey.hex()
    assert name == "actorq:lean-test"
    assert cwd == str(tmp_path)
    assert has_extra == "True"
    assert method == "forkserver"  # a process it starts goes through a fork server too
    assert threads == "['MainThread']"  # the fork server's owner watch stayed there
    assert daemon == "True"  # as the Process was made: it may not start processes
    assert (tmp_path / "out.txt.final").read_text() == "finalized"  # ran at its exit


def test_a_lean_childs_exit_code_and_exception_are_reported():
    assert _run("import sys; sys.exit(3)") == 3
    assert _run("import sys; sys.exit()") == 0
    assert _run("raise ValueError('boom')") == 1  # multiprocessing's code for an exception
    assert _run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)") == -9


class WhoAmI(actorq.Actor):
    def threads(self) -> list[str]:
        return [t.name for t in threading.enumerate()]

    def ppid(self) -> int:
        return os.getppid()

    def pipes(self) -> set[str]:
        return _pipes(os.getpid())

    def signals(self) -> list[object]:
        return [signal.getsignal(signal.SIGCHLD), signal.getsignal(signal.SIGINT)]


def _pipes(pid: int) -> set[str]:
    """The pipes *pid* holds open beyond its standard streams ("pipe:[inode]")."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if int(fd) > 2 and target.startswith("pipe:"):
            found.add(target)
    return found


def test_an_actor_started_the_lean_way_has_no_owner_watch_thread_of_its_own():
    # the fork server actorq started watches the owner for all of them (deathsig.py)
    import multiprocessing.forkserver

    with actorq.ActorSystem(start_method="forkserver") as system:
        ref = system.spawn(WhoAmI)
        threads = ref.threads().result(timeout=60)
        assert "actorq-owner-watch" not in threads
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        assert ref.ppid().result(timeout=60) == server


def test_a_lean_child_gets_back_the_signal_handlers_the_fork_server_replaced(tmp_path):
    # the fork server handles SIGCHLD and ignores SIGINT; its child has them as the
    # fork server had them before (lean.set_handler, as multiprocessing's child does)
    out = tmp_path / "signals.txt"
    code = f"""
import signal
with open({str(out)!r}, "w") as f:
    f.write(repr([signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                  signal.getsignal(signal.SIGINT) is signal.default_int_handler]))
"""
    assert _run(code) == 0
    assert out.read_text() == "[True, True]"


def test_an_actor_ignores_sigint_and_leaves_sigchld_at_its_default():
    with actorq.ActorSystem(start_method="forkserver") as system:
        ref = system.spawn(WhoAmI)
        assert ref.signals().result(timeout=60) == [signal.SIG_DFL, signal.SIG_IGN]


def test_multiprocessings_own_forkserver_process_is_served_as_before(tmp_path):
    # another user of this interpreter's fork server: its requests are multiprocessing's
    # two pickles, not actorq's lean request (lean.serve_one reads its first bytes)
    ctx = get_context("forkserver")
    out = tmp_path / "out.txt"
    code = f"open({str(out)!r}, 'w').write('ran')"
    proc = ctx.Process(target=exec, args=(code, {}), daemon=True)
    proc.start()
    try:
        proc.join(60)
        assert proc.exitcode == 0
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join(5)
    assert out.read_text() == "ran"
    proc = ctx.Process(target=sys.exit, args=(7,), daemon=True)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 7


def test_close_all_closes_runs_and_single_fds_and_nothing_else():
    pipes = [os.pipe() for _ in range(6)]
    fds = sorted(fd for pair in pipes for fd in pair)
    keep = fds[3]  # a gap in the middle of a run
    try:
        close_all([fd for fd in fds if fd != keep])
        for fd in fds:
            if fd == keep:
                os.fstat(fd)  # still open
            else:
                with pytest.raises(OSError, match="Bad file descriptor"):
                    os.fstat(fd)
    finally:
        os.close(keep)


def test_an_actor_shares_no_pipe_with_its_fork_server():
    # the fork server holds the write end of every child's status pipe, the pipes of
    # its own loop, and libuv's signal lock (made by the rehearsal's event loops,
    # warmup.rehearse_loop): a child closes the first two and libuv replaces the third
    # in it at fork, so that no process shares that lock with another
    import multiprocessing.forkserver

    with actorq.ActorSystem(start_method="forkserver") as system:
        refs = [system.spawn(WhoAmI) for _ in range(3)]
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        for ref in refs:
            mine = ref.pipes().result(timeout=60)
            assert not mine & _pipes(server)


def test_a_burst_of_starts_checks_the_resource_tracker_at_most_once_a_second(monkeypatch):
    # multiprocessing checks it three times per start, with a message the tracker
    # process wakes up to read (lean.tracker_fd)
    import multiprocessing.resource_tracker
    import time

    from actorq._process import lean

    checks = []
    tracker = multiprocessing.resource_tracker.ResourceTracker
    real = tracker._check_alive
    monkeypatch.setattr(tracker, "_check_alive",
                        lambda self: checks.append(1) or real(self))
    with actorq.ActorSystem(start_method="forkserver") as system:
        t0 = time.monotonic()
        refs = [system.spawn(WhoAmI) for _ in range(12)]
        for ref in refs:
            system.wait_ready(ref, timeout=60)
        elapsed = time.monotonic() - t0
    # (each start checked it three times before: 36 here)
    assert len(checks) <= 2 + elapsed / lean.TRACKER_CHECK_EVERY


def test_a_lineage_pickles_every_field():
    # Lineage.__reduce__ lists its fields itself (a cheaper unpickling in each child):
    # a field added later and left out of it would come back as its default
    import dataclasses
    import pickle

    from actorq._process.deathsig import Lineage

    values = {f.name: 1000 + i for i, f in enumerate(dataclasses.fields(Lineage))}
    lineage = Lineage(**values)
    assert pickle.loads(pickle.dumps(lineage)) == lineage
