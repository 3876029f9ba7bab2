"""Real crashes: SIGKILL mid-call, os._exit, failed starts, restarts keep queued messages."""

from __future__ import annotations

import os
import signal
import time

import pytest

import actorq
from actorq._transport.ring import H_HANDLED, H_HEAD, H_SENT, H_TAIL, Ring
from actorq.testing import wait_until


class Worker(actorq.Actor):
    def __init__(self, log_path=None):
        self.log_path = log_path

    def pid(self):
        return os.getpid()

    def restarts(self):
        return self.context.restarts

    def hang_until(self, path):
        # stands in a handler until the marker file disappears (or it is killed);
        # "<path>.started" tells the test that the handler is running
        with open(path + ".started", "w"):
            pass
        while os.path.exists(path):
            time.sleep(0.001)
        return "released"

    def record(self, item):
        with open(self.log_path, "a") as f:
            f.write(f"{item}\n")
        return item

    def exit_now(self, code):
        os._exit(code)

    def receive(self, message):
        return self.record(message)


def _marker(tmp_path, name="hold"):
    path = tmp_path / name
    path.write_text("x")
    return str(path)


def test_sigkill_mid_call_raises_actor_crashed_and_restarts(any_system, tmp_path):
    w = any_system.spawn(Worker, str(tmp_path / "log"))
    pid = w.pid().result()
    hold = _marker(tmp_path)
    in_progress = w.hang_until(hold)
    wait_until(lambda: os.path.exists(hold + ".started"))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(actorq.ActorCrashed, match="SIGKILL") as info:
        in_progress.result(timeout=20)
    assert info.value.cause == "signal"
    # a fresh instance serves the next calls
    assert w.pid().result() != pid
    assert w.restarts().result() == 1


def test_queued_messages_survive_a_crash_in_order(any_system, tmp_path):
    log = tmp_path / "log"
    w = any_system.spawn(Worker, str(log))
    pid = w.pid().result()
    hold = _marker(tmp_path)
    stuck = w.hang_until(hold)
    queued = [w.record(i) for i in range(200)]
    for i in range(200, 300):
        w.tell(i)
    wait_until(lambda: os.path.exists(hold + ".started"))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(actorq.ActorCrashed):
        stuck.result(timeout=20)
    assert [r.result(timeout=20) for r in queued] == list(range(200))
    assert w.record("end").result() == "end"
    lines = log.read_text().split()
    # every queued message was handled exactly once, in order, by the new instance
    assert lines == [str(i) for i in range(300)] + ["end"]


def test_os_exit_in_handler_is_a_crash(system, tmp_path):
    w = system.spawn(Worker, str(tmp_path / "log"))
    pid = w.pid().result()
    with pytest.raises(actorq.ActorCrashed, match="exited with code 7") as info:
        w.exit_now(7).result()
    assert info.value.cause == "exit"
    assert w.pid().result() != pid


def test_temporary_actor_is_not_restarted(system, tmp_path):
    w = system.spawn(Worker, str(tmp_path / "log"), restart="temporary")
    pid = w.pid().result()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: system.metrics()["actors"][w.name]["state"] == "stopped")
    with pytest.raises(actorq.ActorStopped):
        w.pid()
    with pytest.raises(KeyError):
        system.lookup(w.name)


def test_transient_actor_restarts_after_abnormal_exit(system, tmp_path):
    w = system.spawn(Worker, str(tmp_path / "log"), restart="transient")
    pid = w.pid().result()
    with pytest.raises(actorq.ActorCrashed):
        w.exit_now(3).result()
    assert w.pid().result() != pid


class FailsToStart(actorq.Actor):
    def __init__(self, reason):
        raise RuntimeError(f"cannot start: {reason}")

    def ping(self):
        return "pong"


class FailsOnStart(actorq.Actor):
    async def on_start(self):
        raise LookupError("no config")

    def ping(self):
        return "pong"


@pytest.mark.parametrize("cls", [FailsToStart, FailsOnStart])
def test_failed_start_fails_calls_with_clear_error_and_no_restart_loop(system, cls):
    a = system.spawn(cls, "disk full") if cls is FailsToStart else system.spawn(cls)
    reply = a.ping()
    with pytest.raises(actorq.ActorCrashed, match="failed to start") as info:
        reply.result(timeout=20)
    assert info.value.cause == "start"
    assert isinstance(info.value.__cause__, RuntimeError | LookupError)
    entry = system.metrics()["actors"][a.name]
    assert entry["state"] == "failed"
    assert entry["restarts"] == 0
    with pytest.raises(actorq.ActorStopped):
        a.ping()


class Stoppable(actorq.Actor):
    def __init__(self, path):
        self.path = path

    def ping(self):
        return "pong"

    def on_stop(self):
        with open(self.path, "w") as f:
            f.write("stopped")


def test_stop_runs_on_stop_and_fails_later_calls(any_system, tmp_path):
    path = tmp_path / "stopped"
    a = any_system.spawn(Stoppable, str(path))
    assert a.ping().result() == "pong"
    any_system.stop(a)
    assert path.read_text() == "stopped"
    with pytest.raises(actorq.ActorStopped):
        a.ping()


def test_calls_from_another_actor_fail_when_target_crashes(system, tmp_path):
    class Caller(actorq.Actor):
        def call_hang(self, target, path):
            try:
                return target.hang_until(path).result(timeout=20)
            except actorq.ActorCrashed as exc:
                return f"crashed: {exc.cause}"

    w = system.spawn(Worker, str(tmp_path / "log"))
    pid = w.pid().result()
    c = system.spawn(Caller)
    hold = _marker(tmp_path)
    reply = c.call_hang(w, hold)
    wait_until(lambda: os.path.exists(hold + ".started"))
    os.kill(pid, signal.SIGKILL)
    assert reply.result(timeout=20) == "crashed: signal"
    # The failure reached the caller on the system's ring to it, while the call that
    # was waiting had come on that same ring: both records are committed, in order
    # (head never moves back, every published byte is consumed).
    seg = system._runtime._cells[c.actor_id].inbound[0]
    ring = Ring(seg.buf)
    try:
        assert ring.hdr[H_HEAD] == ring.hdr[H_TAIL]
        assert ring.hdr[H_HANDLED] == ring.hdr[H_SENT]
    finally:
        ring.release()


def test_close_stops_actors_gracefully_under_every_start_method(any_system, tmp_path):
    path = tmp_path / "stopped"
    a = any_system.spawn(Stoppable, str(path))
    assert a.ping().result() == "pong"
    any_system.close()
    assert path.read_text() == "stopped"
    assert any_system.metrics()["actors"][a.name]["crashes"] == {}


class Flooder(actorq.Actor):
    def flood(self, target, tag, n):
        for i in range(n):
            target.tell((tag, i))
        return n

    def pid(self):
        return os.getpid()


class Tally(actorq.Actor):
    def __init__(self):
        self.seen = {}

    def receive(self, message):
        tag, i = message
        self.seen.setdefault(tag, []).append(i)

    def seen_of(self, tag):
        return self.seen.get(tag, [])


def test_a_producer_killed_mid_burst_corrupts_nothing(system):
    sink = system.spawn(Tally)
    victim = system.spawn(Flooder, restart="temporary")
    other = system.spawn(Flooder)
    vpid = victim.pid().result()
    flooding = victim.flood(sink, "victim", 10**7)  # runs until it is killed
    wait_until(lambda: len(sink.seen_of("victim").result()) > 1000)
    os.kill(vpid, signal.SIGKILL)  # at whatever instruction it is at
    with pytest.raises(actorq.ActorCrashed):
        flooding.result()
    assert other.flood(sink, "other", 5000).result() == 5000
    wait_until(lambda: len(sink.seen_of("other").result()) == 5000)
    assert sink.seen_of("other").result() == list(range(5000))
    got = sink.seen_of("victim").result()
    assert got == list(range(len(got)))  # a prefix, in order: no torn or repeated record


class _KillsWhenPickled:
    """A return value whose pickling SIGKILLs the process that pickles it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        return (int, ())  # pragma: no cover - never reached


class Committer(actorq.Actor):
    def __init__(self, log_path):
        self.log_path = log_path

    def handled_then_die(self):
        with open(self.log_path, "a") as f:
            f.write("handled\n")
        return _KillsWhenPickled()

    def pid(self):
        return os.getpid()


def test_a_crash_after_the_commit_but_before_the_reply_fails_the_caller(any_system,
                                                                        tmp_path):
    # The handler ran and its call was committed; the process died while its reply was
    # being pickled. The caller must hear of it at once, not wait for the call timeout,
    # and the call (already handled) must not run again in the restarted instance.
    log = tmp_path / "log"
    a = any_system.spawn(Committer, str(log))
    pid = a.pid().result()
    with pytest.raises(actorq.ActorCrashed, match="after handling this call"):
        a.handled_then_die().result(timeout=30)
    assert a.pid().result() != pid  # restarted, and serving
    assert log.read_text() == "handled\n"
