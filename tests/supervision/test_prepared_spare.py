"""A warm spare prepared for the actor that restarted last (issue 15).

After a restart, the next spare is told ahead what it would be told at boot: it maps the
actor's control block and rings and imports its class, and takes over on one short
message when that actor dies. What must hold: the new instance reads its mailbox from
where the dead one stopped (nothing handled twice, nothing lost), a spare prepared for one
actor still boots as another, and a mailbox that changed since the preparation (a new
sender's ring) is booted in full.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import actorq
from actorq._core.protocol import C_BUSY
from actorq._process import lifelock
from actorq._process.deathsig import Lineage
from actorq.testing import wait_until

BOUND = 60.0


class Noter(actorq.Actor):
    """Appends what it is told to a file (which outlives every instance)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def note(self, i: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{i}\n")

    def pid(self) -> int:
        return os.getpid()

    def restarts(self) -> int:
        return self.context.restarts

    def hold(self, path: str) -> int:
        """Answer once *path* exists (within BOUND)."""
        deadline = time.monotonic() + BOUND
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return os.getpid()


class Caller(actorq.Actor):
    def pid_of(self, ref: actorq.ActorRef[Noter]) -> int:
        return ref.pid().result(timeout=BOUND)


def _supervisor(system: actorq.ActorSystem) -> actorq.Supervisor:
    return system.supervisor(max_restarts=100, within=60.0,
                             backoff=actorq.Backoff(initial=0.0, maximum=0.0))


def _kill_and_wait_new(ref: actorq.ActorRef[Noter], pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return wait_until(lambda: (p := _pid_or_none(ref)) not in (None, pid) and p,
                      timeout=BOUND, message="a new process answers")


def _pid_or_none(ref: actorq.ActorRef[Noter]) -> int | None:
    try:
        return ref.pid().result(timeout=BOUND)
    except actorq.ActorCrashed:
        return None


def _prepared_for(system: actorq.ActorSystem, ref: actorq.ActorRef[Noter]) -> bool:
    return any(tag[0] == ref.actor_id for tag in system._runtime._launch.spares.tags())


def test_a_prepared_spare_takes_over_where_the_dead_instance_stopped(tmp_path: Path) -> None:
    log = tmp_path / "notes"
    with actorq.ActorSystem() as system:
        ref = _supervisor(system).spawn(Noter, str(log))
        pid = _kill_and_wait_new(ref, ref.pid().result(timeout=BOUND))
        wait_until(lambda: _prepared_for(system, ref), timeout=BOUND,
                   message="a spare prepared for the actor that restarted")
        spare = next(p.pid for p, _sock in system._runtime._launch.spares._spares)
        # handled by the live instance after the spare was prepared: the spare must not
        # read them again when it takes over
        for i in range(20):
            ref.note(i)
        assert ref.pid().result(timeout=BOUND) == pid
        new = _kill_and_wait_new(ref, pid)
        assert new == spare  # the prepared spare took over
        assert ref.restarts().result(timeout=BOUND) == 2
        for i in range(20, 30):
            ref.note(i)
        assert ref.pid().result(timeout=BOUND) == new
    assert log.read_text().split() == [str(i) for i in range(30)]  # each exactly once


def test_a_spare_prepared_for_one_actor_boots_as_another(tmp_path: Path) -> None:
    with actorq.ActorSystem() as system:
        sup = _supervisor(system)
        a = sup.spawn(Noter, str(tmp_path / "a"))
        b = sup.spawn(Noter, str(tmp_path / "b"))
        a_pid = _kill_and_wait_new(a, a.pid().result(timeout=BOUND))
        wait_until(lambda: _prepared_for(system, a), timeout=BOUND,
                   message="a spare prepared for a")
        spare = next(p.pid for p, _sock in system._runtime._launch.spares._spares)
        b_new = _kill_and_wait_new(b, b.pid().result(timeout=BOUND))
        assert b_new == spare
        b.note(1)
        assert b.restarts().result(timeout=BOUND) == 1
        assert a.pid().result(timeout=BOUND) == a_pid  # a is untouched
    assert (tmp_path / "b").read_text().split() == ["1"]


def test_a_mailbox_changed_since_the_preparation_is_booted_in_full(tmp_path: Path) -> None:
    with actorq.ActorSystem() as system:
        ref = _supervisor(system).spawn(Noter, str(tmp_path / "notes"))
        pid = _kill_and_wait_new(ref, ref.pid().result(timeout=BOUND))
        wait_until(lambda: _prepared_for(system, ref), timeout=BOUND,
                   message="a spare prepared for the actor that restarted")
        caller = system.spawn(Caller)
        assert caller.pid_of(ref).result(timeout=BOUND) == pid  # a new ring into it
        new = _kill_and_wait_new(ref, pid)
        assert caller.pid_of(ref).result(timeout=BOUND) == new  # its new ring is mapped


def test_a_restart_onto_its_prepared_spare_needs_no_start_on_the_starter_thread(
        tmp_path: Path) -> None:
    # The spare prepared for the actor is taken by the loop thread that handles the death
    # (one GO message); a start handed to the starter thread is counted in `_submitted`.
    with actorq.ActorSystem() as system:
        ref = _supervisor(system).spawn(Noter, str(tmp_path / "notes"))
        pid = _kill_and_wait_new(ref, ref.pid().result(timeout=BOUND))
        wait_until(lambda: _prepared_for(system, ref), timeout=BOUND,
                   message="a spare prepared for the actor that restarted")
        spare = next(p.pid for p, _sock in system._runtime._launch.spares._spares)
        submitted = system._runtime._launch.submitted
        assert _kill_and_wait_new(ref, pid) == spare
        assert system._runtime._launch.submitted == submitted
        # it locked the life lock it had mapped ahead: its own death is noticed early too
        ctl = system._runtime._cells[ref.actor_id].ctl.seg.buf
        word = int.from_bytes(ctl[lifelock.OFFSET:lifelock.OFFSET + 4], sys.byteorder)
        assert word & lifelock.FUTEX_TID_MASK == spare
        ref.note(1)
        assert ref.restarts().result(timeout=BOUND) == 2
    assert (tmp_path / "notes").read_text().split() == ["1"]


def test_a_restarted_actor_has_settled_only_once_what_waited_for_it_is_answered(
        tmp_path: Path) -> None:
    # After a restart the next spare is started once the new instance has settled (its
    # fork and boot would take the CPU its first answers need): not while a handler runs
    # or a call waits in its mailbox; then, once they are answered, the spare comes.
    with actorq.ActorSystem() as system:
        ref = _supervisor(system).spawn(Noter, str(tmp_path / "notes"))
        pid = _kill_and_wait_new(ref, ref.pid().result(timeout=BOUND))
        launch = system._runtime._launch
        cell = system._runtime._cells[ref.actor_id]
        wait_until(lambda: launch._settled(cell), timeout=BOUND, message="settled")
        wait_until(lambda: not launch.spares.missing(), timeout=BOUND,
                   message="the spare taken by the restart refilled")
        go = tmp_path / "go"
        held = ref.hold(str(go))
        queued = ref.pid()
        wait_until(lambda: cell.ctl.slots[C_BUSY], timeout=BOUND,
                   message="the held call is being handled")
        assert not launch._settled(cell)
        go.touch()
        assert held.result(timeout=BOUND) == pid
        assert queued.result(timeout=BOUND) == pid
        wait_until(lambda: launch._settled(cell), timeout=BOUND,
                   message="settled once both are answered")


def test_the_spare_pool_hands_out_a_spare_by_the_key_it_was_prepared_for() -> None:
    from actorq._actorproc import host as _host
    from actorq._process.spares import QUIT, WarmPool
    from actorq._process.spawn import get_context

    pool = WarmPool(get_context("forkserver"), _host.main, 3)
    taken = []
    try:
        pool.refill()
        order = [proc.pid for proc, _sock in pool._spares]
        # tags are tuples keyed by their first item (nothing is sent to these spares)
        assert pool.prepare(lambda _proc, _sock: (5, "for five"))
        assert pool.prepare(lambda _proc, _sock: (7, "for seven"))
        assert pool.unprepared() == 1
        assert pool.take(8, only_prepared=True) is None  # none prepared for 8
        assert pool.take(None, only_prepared=True) is None
        got = pool.take(7, only_prepared=True)
        assert got is not None
        taken.append(got)
        assert (got[0].pid, got[2]) == (order[1], (7, "for seven"))
        got = pool.take(9)  # none for 9: the unprepared one before a prepared one
        assert got is not None
        taken.append(got)
        assert (got[0].pid, got[2]) == (order[2], None)
        got = pool.take(9)  # then any
        assert got is not None
        taken.append(got)
        assert (got[0].pid, got[2]) == (order[0], (5, "for five"))
        assert pool.take(5) is None
        assert pool.tags() == []
    finally:
        pool.close()
        for proc, sock, _tag in taken:
            sock.send(QUIT)
            sock.close()
            proc.join(BOUND)
            proc.close()


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_a_spare_killed_while_it_waits_is_passed_over(method: str) -> None:
    from actorq._actorproc import host as _host
    from actorq._process.spares import WarmPool
    from actorq._process.spawn import get_context

    pool = WarmPool(get_context(method), _host.main, 2)
    try:
        pool.refill()
        (victim, _), (other, _) = list(pool._spares)
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not victim.is_alive(), timeout=BOUND,
                   message="the killed spare is seen dead")
        got = pool.take()
        assert got is not None
        assert got[0] is other  # the dead one was discarded, not handed out
        with pytest.raises(ValueError, match="closed"):
            victim.sentinel  # noqa: B018 (reaped and closed by the pool)
        got[1].close()
        got[0].join(BOUND)  # end-of-file: it exits
        assert got[0].exitcode == _host.EXIT_SYSTEM_GONE
        got[0].close()
        assert pool.take() is None
    finally:
        pool.close()


def spare_whose_child_outlives_it(sock: socket.socket, lineage: Lineage) -> None:
    """A spare target that forks a process of its own first: under fork, that process
    inherits the spare's end of its sentinel pipe and keeps it open after the spare died
    (it lives until the pool closes its end of the spare's socket)."""
    os.close(lineage.close_fd)  # the system's end, inherited: EOF must come from there
    if os.fork() == 0:
        try:
            sock.recv(1)
        finally:
            os._exit(0)
    sock.recv(1)
    os._exit(4)


def test_a_spare_whose_status_was_read_is_dead_whatever_its_sentinel_says() -> None:
    # Its exit status read (here by is_alive()), a dead spare's sentinel may still be
    # neither readable nor at end-of-file: under forkserver while the fork server, having
    # written the status, has not closed its end yet (the race that made the test above
    # fail under load, handing out the dead spare); here, for good, because the spare's
    # own child holds the pipe's write end. The pool must believe the status.
    from actorq._process.spares import WarmPool
    from actorq._process.spawn import get_context

    pool = WarmPool(get_context("fork"), spare_whose_child_outlives_it, 1)
    try:
        pool.refill()
        ((victim, _),) = list(pool._spares)
        wait_until(lambda: psutil.Process(victim.pid).children(), timeout=BOUND,
                   message="the spare has forked its child")
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not victim.is_alive(), timeout=BOUND,
                   message="the killed spare is seen dead")
        assert pool.take() is None  # not handed out: discarded, its socket closed
        with pytest.raises(ValueError, match="closed"):
            victim.sentinel  # noqa: B018 (reaped and closed by the pool)
    finally:
        pool.close()


def test_a_caller_stops_spinning_on_an_actor_whose_process_died() -> None:
    # While an actor's process is dead (its restart held back here), a caller waiting on
    # it must not spin on its ring: the GIL it would keep re-taking is what the death
    # notice and the restart wait for. With a spin of minutes, only that stop lets the
    # caller reach its sleep (where the reply's event is made) within the bound.
    with actorq.ActorSystem(spin_seconds=60.0) as system:
        sup = system.supervisor(max_restarts=10, within=60.0,
                                backoff=actorq.Backoff(initial=600.0, jitter="none"))
        ref = sup.spawn(Noter, os.devnull)
        pid = ref.pid().result(timeout=BOUND)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: system.pid_of(ref) is None, timeout=BOUND,
                   message="the death is handled (the restart waits for its backoff)")
        hub = system._runtime.hub
        reply = ref.pid()  # waits in its ring for the next instance
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                reply.result(timeout=BOUND * 2)
            except actorq.ActorqError as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        try:
            wait_until(lambda: reply._event is not None, timeout=BOUND,
                       message="the caller sleeps instead of spinning")
            assert ref.actor_id not in hub.ring_spinners
        finally:
            system.close()  # fails the call: its actor never came back
            waiter.join(BOUND)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], actorq.ActorStopped)
