"""Regressions found while documenting supervision and flow control."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import actorq
from actorq.testing import wait_until


class Gate(actorq.Actor):
    def __init__(self, path=None):
        self.path = path
        self.n = 0

    def receive(self, message):
        while self.path and os.path.exists(self.path):
            time.sleep(0.001)
        self.n += 1

    def count(self):
        return self.n

    def ping(self):
        return "pong"


def test_stopping_an_actor_releases_producers_waiting_for_its_credit(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem(window=2, send_timeout=30, stop_timeout=0.5) as s:
        slow = s.spawn(Gate, str(marker))
        other = s.spawn(Gate)
        slow.tell(1)
        slow.tell(2)
        errors = []

        def produce():
            try:
                slow.tell(3)
            except actorq.ActorqError as exc:
                errors.append(exc)

        t = threading.Thread(target=produce)
        t.start()
        wait_until(lambda: s.metrics()["actors"][slow.name]["waiting_producers"] == 1)
        s.stop(slow)
        t.join(10)
        assert len(errors) == 1
        assert isinstance(errors[0], actorq.ActorStopped)
        # the system is healthy afterwards: no stale line, no lost wake-ups
        for _ in range(50):
            assert other.ping().result(timeout=5) == "pong"
        assert s.metrics()["system"]["lost_wakeups"] == 0


class Stoppable(actorq.Actor):
    def __init__(self, path):
        self.path = path
        self.n = 0

    def receive(self, message):
        time.sleep(0.001)
        self.n += 1

    def on_stop(self):
        with open(self.path, "w") as f:
            f.write(f"graceful {self.n}")


def test_a_busy_actor_sees_its_stop_between_two_messages(tmp_path):
    path = tmp_path / "stopped"
    with actorq.ActorSystem(stop_timeout=10) as s:
        a = s.spawn(Stoppable, str(path))
        for i in range(3000):  # seconds of backlog: it never runs dry
            a.tell(i)
        s.stop(a)
        word, handled = path.read_text().split()
        assert word == "graceful"
        assert s.metrics()["actors"][a.name]["crashes"] == {}
        # it stopped between two messages, not after draining its backlog: the rest
        # are dead letters, and nothing is lost between the two
        dead = s.metrics()["system"]["dead_letters"]
        assert dead > 0
        assert int(handled) + dead == 3000


class Child(actorq.Actor):
    def pid(self):
        return os.getpid()


class Parent(actorq.Actor):
    def on_start(self):
        self.child = self.context.spawn(Child, name="the-child")

    def child_ref(self):
        return self.child

    def pid(self):
        return os.getpid()


def test_group_restart_of_a_parent_with_named_children():
    with actorq.ActorSystem() as s:
        sup = s.supervisor(strategy="one_for_all",
                           backoff=actorq.Backoff(initial=0.001, maximum=0.01))
        trigger = sup.spawn(Child, name="trigger")
        parent = sup.spawn(Parent, name="parent")
        old_parent = parent.pid().result()
        old_child = parent.child_ref().result().pid().result()
        os.kill(trigger.pid().result(), signal.SIGKILL)
        wait_until(lambda: _pid_changed(parent, old_parent), timeout=20)
        # the parent was restarted gracefully as part of the group; its old child went
        # with it and the name was free for the new instance's on_start
        new_child = parent.child_ref().result()
        assert new_child.pid().result() != old_child
        assert s.metrics()["actors"]["parent"]["state"] == "running"


def _pid_changed(ref, old):
    try:
        return ref.pid().result(timeout=20) != old
    except actorq.ActorCrashed:
        return False


class Spawner(actorq.Actor):
    def make(self):
        opts = actorq.ActorOptions(hang_timeout=0.3)
        self.kid = self.context.spawn(Hanger, name="hanger", actor_options=opts)
        return self.kid


class Hanger(actorq.Actor):
    def hang(self):
        while True:
            time.sleep(0.01)


def test_context_spawn_takes_actor_options():
    with actorq.ActorSystem() as s:
        kid = s.spawn(Spawner).make().result()
        with pytest.raises(actorq.ActorCrashed, match="hang_timeout") as info:
            kid.hang().result(timeout=20)
        assert info.value.cause == "hang"


def test_priority_survives_pickling():
    import pickle

    with actorq.ActorSystem() as s:
        ref = s.spawn(Child).with_priority(7)
        assert pickle.loads(pickle.dumps(ref))._priority == 7
