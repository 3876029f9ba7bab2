"""Stopping for good: a busy actor's stop, one that will not stop, async ``on_stop``,
parents and their children, stopped supervisors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import actorq
from actorq.testing import wait_until


class Recorder(actorq.Actor):
    """Appends what it handles to a file; ``receive("block")`` waits for a marker."""

    def __init__(self, path, marker=None):
        self.path = path
        self.marker = marker

    def _note(self, item):
        with open(self.path, "a") as f:
            f.write(f"{item}\n")

    def receive(self, message):
        if message == "block":
            with open(self.marker + ".started", "w"):
                pass
            while os.path.exists(self.marker):
                time.sleep(0.001)
        self._note(message)

    def work(self, item):
        self._note(item)
        return item

    def pid(self):
        return os.getpid()

    def stuck(self, pid_file):
        # a handler that never returns, with a process of its own below it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(pid_file, "w") as f:
            f.write(str(child.pid))
        while True:
            time.sleep(0.01)

    def on_stop(self):
        self._note("on_stop")


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _block(tmp_path, ref):
    marker = tmp_path / "hold"
    marker.write_text("x")
    ref.tell("block")
    wait_until(lambda: (tmp_path / "hold.started").exists())
    return marker


def test_a_busy_actor_stops_between_two_messages_and_its_backlog_is_dead_lettered(tmp_path):
    log = tmp_path / "log"
    with actorq.ActorSystem(stop_timeout=30) as s:
        a = s.spawn(Recorder, str(log), str(tmp_path / "hold"), name="busy")
        marker = _block(tmp_path, a)
        for i in range(200):
            a.tell(i)
        call = a.work("last")
        t = threading.Thread(target=s.stop, args=(a,))
        t.start()
        wait_until(lambda: s.metrics()["actors"]["busy"]["state"] == "stopping")
        marker.unlink()  # the handler returns; the stop is seen before the next message
        t.join(30)
        assert not t.is_alive()
        with pytest.raises(actorq.ActorStopped, match="it was stopped"):
            call.result(timeout=10)
        assert _lines(log) == ["block", "on_stop"]  # nothing of the backlog, on_stop ran
        letters = s.dead_letters()
        assert [d.message for d in letters] == [(i,) for i in range(200)] + [("last",)]
        assert {d.reason for d in letters} == {"not delivered: it was stopped"}
        assert s.metrics()["actors"]["busy"]["crashes"] == {}


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_kills_a_handler_that_outlasts_the_timeout_with_its_process_tree(tmp_path,
                                                                             caplog):
    log, pid_file = tmp_path / "log", tmp_path / "grandchild"
    with actorq.ActorSystem() as s:
        a = s.spawn(Recorder, str(log), name="stuck")
        pid = a.pid().result()
        call = a.stuck(str(pid_file))
        wait_until(lambda: pid_file.exists() and pid_file.read_text())
        grandchild = int(pid_file.read_text())
        with caplog.at_level("WARNING", logger="actorq"):
            s.stop(a, timeout=0.3)
        assert _gone(pid)
        assert any("did not stop within" in r.getMessage() for r in caplog.records)
        wait_until(lambda: _gone(grandchild))
        with pytest.raises(actorq.ActorStopped):
            call.result(timeout=10)
        assert "on_stop" not in _lines(log)  # killed: on_stop does not run
        m = s.metrics()["actors"]["stuck"]
        assert (m["state"], m["crashes"]) == ("stopped", {})  # not a crash
        with pytest.raises(actorq.ActorStopped):
            a.pid()


def test_close_kills_an_actor_that_will_not_stop(tmp_path, caplog):
    log, pid_file = tmp_path / "log", tmp_path / "grandchild"
    s = actorq.ActorSystem(stop_timeout=2.0)
    good = s.spawn(Recorder, str(tmp_path / "good"))
    a = s.spawn(Recorder, str(log))
    pid = a.pid().result()
    good.pid().result()
    call = a.stuck(str(pid_file))
    wait_until(lambda: pid_file.exists() and pid_file.read_text())
    grandchild = int(pid_file.read_text())
    with caplog.at_level("WARNING", logger="actorq"):
        s.close()
    assert _gone(pid)
    wait_until(lambda: _gone(grandchild))
    with pytest.raises(actorq.ActorStopped, match="closed"):
        call.result(timeout=1)
    assert any("did not stop within 2s: killing it" in r.getMessage()
               for r in caplog.records)
    assert "on_stop" not in _lines(log)
    assert _lines(tmp_path / "good") == ["on_stop"]  # the others stopped gracefully
    assert s.metrics()["actors"][a.name]["crashes"] == {}


class AsyncHooks(actorq.Actor):
    def __init__(self, path):
        self.path = path

    async def on_start(self):
        await asyncio.sleep(0)
        self.started = "async on_start ran"

    def hello(self):
        return self.started

    async def on_stop(self):
        await asyncio.sleep(0.01)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT)
        os.write(fd, b"async on_stop ran")
        os.close(fd)


def test_async_on_start_and_on_stop_run(tmp_path):
    path = tmp_path / "stopped"
    with actorq.ActorSystem() as s:
        a = s.spawn(AsyncHooks, str(path))
        assert a.hello().result() == "async on_start ran"
        s.stop(a)
        assert path.read_text() == "async on_stop ran"
        b = s.spawn(AsyncHooks, str(tmp_path / "at_close"))
        s.wait_ready(b)
    assert (tmp_path / "at_close").read_text() == "async on_stop ran"


class Parent(actorq.Actor):
    def __init__(self, path):
        self.path = path

    def on_start(self):
        self.kids = [self.context.spawn(Recorder, f"{self.path}.{i}") for i in range(2)]

    def kid_refs(self):
        return self.kids


def test_stopping_a_parent_stops_its_children_gracefully(tmp_path):
    base = tmp_path / "kid"
    with actorq.ActorSystem() as s:
        p = s.spawn(Parent, str(base))
        kids = p.kid_refs().result()
        pids = [k.pid().result() for k in kids]
        s.stop(p)
        for pid in pids:
            wait_until(lambda pid=pid: _gone(pid))
        for i in range(2):  # stopped, not killed: their on_stop ran
            wait_until(lambda i=i: _lines(tmp_path / f"kid.{i}") == ["on_stop"])
        for k in kids:
            wait_until(lambda k=k: s.metrics()["actors"][k.name]["state"] == "stopped")
            with pytest.raises(actorq.ActorStopped, match="their parent"):
                k.pid()


def test_a_stopped_supervisor_refuses_new_children(tmp_path):
    with actorq.ActorSystem() as s:
        sup = s.supervisor(name="team")
        inner = sup.supervisor(name="inner")
        a = sup.spawn(Recorder, str(tmp_path / "a"))
        a.pid().result()
        sup.stop()
        assert sup.state == "stopped"
        assert inner.state == "stopped"
        with pytest.raises(actorq.ActorStopped, match="supervisor 'team' is stopped"):
            sup.spawn(Recorder, str(tmp_path / "b"))
        with pytest.raises(actorq.ActorStopped, match="supervisor 'inner' is stopped"):
            inner.spawn(Recorder, str(tmp_path / "b"))
        with pytest.raises(actorq.ActorStopped, match="supervisor 'team' is stopped"):
            sup.supervisor(name="late")
        assert sorted(s.metrics()["actors"]) == [a.name]  # nothing was started


class Idle(actorq.Actor):
    def ping(self):
        return os.getpid()


def test_a_process_reaped_while_the_system_closes_is_not_killed_again():
    # The loop thread reaps a dead actor's process (closes the Process object), then
    # clears the cell's ``proc``; a closing system that finds the cell in between must
    # take the process as gone, not fail its close with "process object is closed"
    # (seen closing 1000 actors, benchmarks/bench_scale.py). That window, held open:
    with actorq.ActorSystem() as system:
        ref = system.spawn(Idle)
        pid = ref.ping().result(timeout=30)
        cell = system._runtime._cells[ref.actor_id]
        proc = cell.proc
        system.stop(ref)
        wait_until(lambda: cell.proc is None, timeout=30, message="the actor reaped")
        with pytest.raises(ValueError, match="closed"):
            _ = proc.pid  # closed by the loop thread
        cell.proc = proc  # the cell as the closing thread may find it
        try:
            system._runtime._stop.kill(cell)  # raised ValueError before
        finally:
            cell.proc = None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
