"""``ActorOptions.restart_on`` in a real system, and the ``"lost"`` cause."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import actorq
from actorq.testing import wait_until


class Worker(actorq.Actor):
    def pid(self):
        return os.getpid()

    def restarts(self):
        return self.context.restarts

    def hold(self, marker):
        with open(marker + ".started", "w"):
            pass
        while os.path.exists(marker):
            time.sleep(0.001)
        return "released"

    def raise_system_exit(self):
        raise SystemExit(3)


def _hold(tmp_path, ref):
    marker = tmp_path / "hold"
    marker.write_text("x")
    reply = ref.hold(str(marker))
    wait_until(lambda: (tmp_path / "hold.started").exists())
    return reply


def test_a_cause_outside_restart_on_stops_the_actor_for_good(tmp_path):
    only_exceptions = actorq.ActorOptions(restart_on={"exception"})
    with actorq.ActorSystem() as s:
        a = s.spawn(Worker, name="a", actor_options=only_exceptions)
        pid = a.pid().result()
        held = _hold(tmp_path, a)
        queued = a.pid()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(actorq.ActorCrashed, match="SIGKILL") as info:
            held.result(timeout=20)
        assert info.value.cause == "signal"
        with pytest.raises(actorq.ActorqError) as queued_info:  # gone for good
            queued.result(timeout=20)
        assert isinstance(queued_info.value, (actorq.ActorCrashed, actorq.ActorStopped))
        with pytest.raises(actorq.ActorStopped, match="was not restarted"):
            a.pid()
        m = s.metrics()["actors"]["a"]
        assert (m["state"], m["restarts"], m["crashes"]) == ("stopped", 0, {"signal": 1})
        assert any(d.reason.startswith("not delivered") for d in s.dead_letters())


def test_a_cause_in_restart_on_restarts_the_actor():
    only_exceptions = actorq.ActorOptions(restart_on={"exception"})
    with actorq.ActorSystem() as s:
        a = s.spawn(Worker, name="a", actor_options=only_exceptions)
        with pytest.raises(actorq.ActorCrashed) as info:
            a.raise_system_exit().result(timeout=20)
        assert info.value.cause == "exception"
        assert a.restarts().result(timeout=20) == 1
        assert s.metrics()["actors"]["a"]["crashes"] == {"exception": 1}


def test_a_process_reaped_by_someone_else_is_lost_and_restarted(tmp_path):
    # Under fork the actor is a child of this process: code of ours that reaps children
    # (os.wait(), a SIGCHLD handler) takes its exit status, and actorq sees the process
    # gone without one: cause "lost". The hub loop is held while we reap, so that we
    # are first.
    with actorq.ActorSystem(start_method="fork", warm_spares=0) as s:
        a = s.spawn(Worker, name="a")
        pid = a.pid().result()
        held = _hold(tmp_path, a)
        loop_held, release = threading.Event(), threading.Event()

        def hold_loop():
            loop_held.set()
            release.wait(20)

        s._runtime.hub.loop.call_soon_threadsafe(hold_loop)
        assert loop_held.wait(10)
        try:
            os.kill(pid, signal.SIGKILL)
            reaped, status = os.waitpid(pid, 0)
        finally:
            release.set()
        assert (reaped, os.WIFSIGNALED(status)) == (pid, True)
        with pytest.raises(actorq.ActorCrashed, match="no exit status") as info:
            held.result(timeout=20)
        assert info.value.cause == "lost"
        assert a.restarts().result(timeout=20) == 1  # "lost" is in restart_on by default
        assert s.metrics()["actors"]["a"]["crashes"] == {"lost": 1}


def test_lost_outside_restart_on_is_not_restarted(tmp_path):
    opts = actorq.ActorOptions(restart_on={"signal"})
    with actorq.ActorSystem(start_method="fork", warm_spares=0) as s:
        a = s.spawn(Worker, name="a", actor_options=opts)
        pid = a.pid().result()
        loop_held, release = threading.Event(), threading.Event()

        def hold_loop():
            loop_held.set()
            release.wait(20)

        s._runtime.hub.loop.call_soon_threadsafe(hold_loop)
        assert loop_held.wait(10)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        finally:
            release.set()
        wait_until(lambda: s.metrics()["actors"]["a"]["state"] == "stopped")
        assert s.metrics()["actors"]["a"]["crashes"] == {"lost": 1}
        with pytest.raises(actorq.ActorStopped, match="no exit status"):
            a.pid()
