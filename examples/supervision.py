"""Supervision: crashes, restarts, strategies, poison messages, dead letters, giving up.

    python examples/supervision.py          # add --log to see the runtime's log

Every actor here crashes on purpose (it SIGKILLs its own process, or hangs), and the
script checks what the runtime did about it: who was restarted, what the caller of the
message in progress got, what happened to the messages queued behind it, and what went
to the dead letters. See docs/concepts.md, "Crashes and restarts".
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import actorq
from actorq.testing import wait_until

# Short restart delays, so that the demo runs quickly (by default the first restart
# within the window is at once, and the next ones wait Backoff()'s delays: drawn from
# [0, 10 ms] first, growing to at most 1 s).
FAST = actorq.Backoff(initial=0.001, maximum=0.01)


def raises(kind, fn):
    """Call *fn*; return the exception of type *kind* it raised (fail if it did not)."""
    try:
        fn()
    except kind as exc:
        return exc
    msg = f"expected {kind.__name__}"
    raise AssertionError(msg)


class Worker(actorq.Actor):
    """Keeps a count in memory: a restart (a new process) starts it from zero again."""

    def __init__(self):
        self.count = 0

    def add(self, k):
        self.count += k
        return self.count

    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies: a crash, cause "signal"

    def raise_error(self):
        msg = "not a crash"
        raise ValueError(msg)  # goes back to the caller; the actor goes on

    def pid(self):
        return os.getpid()

    def restarts(self):
        return self.context.restarts


def pid_changed(ref, old):
    """Wait until *ref* answers from a process other than *old*; return the new pid."""

    def probe():
        try:
            pid = ref.pid().result(timeout=20)
        except actorq.ActorCrashed:  # sent while the old process was dying
            return None
        return pid if pid != old else None

    return wait_until(probe, timeout=20, message="the restart")


def crash_and_restart():
    with actorq.ActorSystem() as system:
        w = system.spawn(Worker, name="worker")
        assert w.add(5).result(timeout=20) == 5
        pid = w.pid().result(timeout=20)

        # An exception in a handler is not a crash: same process, state kept.
        raises(ValueError, lambda: w.raise_error().result(timeout=20))
        assert w.pid().result(timeout=20) == pid

        # A crash: the call in progress fails with ActorCrashed (cause "signal")...
        in_progress = w.crash()
        queued = [w.add(1) for _ in range(3)]  # ...queued calls wait for the new instance
        crashed = raises(actorq.ActorCrashed, lambda: in_progress.result(timeout=20))
        assert crashed.cause == "signal"
        assert "SIGKILL" in str(crashed)
        # The restarted instance is a new process, built by its constructor again.
        assert [r.result(timeout=20) for r in queued] == [1, 2, 3]
        assert w.pid().result(timeout=20) != pid
        assert w.restarts().result(timeout=20) == 1

        # The message that crashed the actor is not delivered again: it is a dead letter.
        (letter,) = system.dead_letters()
        assert (letter.target, letter.method) == ("worker", "crash")
        assert letter.reason.startswith("crashed the actor")

        m = system.metrics()
        assert m["actors"]["worker"]["crashes"] == {"signal": 1}
        assert m["actors"]["worker"]["restarts"] == 1
        assert m["system"]["events"]["crash:signal"] == 1
        assert m["system"]["events"]["restarted"] == 1


def strategies():
    with actorq.ActorSystem() as system:
        # one_for_all: a crash restarts every child of the supervisor (in start order,
        # after stopping the live ones gracefully in reverse start order).
        team = system.supervisor(strategy="one_for_all", backoff=FAST, name="team")
        a = team.spawn(Worker, name="a")
        b = team.spawn(Worker, name="b")
        # one_for_one (the default): only the crashed child is restarted.
        solo = system.supervisor(backoff=FAST, name="solo")
        c = solo.spawn(Worker, name="c")
        d = solo.spawn(Worker, name="d")
        pa, pb, pc, pd = (r.pid().result(timeout=20) for r in (a, b, c, d))

        a.crash()
        pid_changed(a, pa)
        pid_changed(b, pb)  # b did nothing wrong, but a one_for_all sibling restarts too

        c.crash()
        pid_changed(c, pc)
        assert d.pid().result(timeout=20) == pd  # one_for_one: d kept its process

        stats = team.statistics()  # a frozen actorq.SupervisorStatistics
        assert (stats.name, stats.strategy, stats.restarts, stats.state, stats.children) == (
            "team", "one_for_all", 1, "running", ("a", "b"))


class Fragile(actorq.Actor):
    """Crashes on the message "poison"; its options ask for it to be redelivered."""

    actor_options = actorq.ActorOptions(redeliver=True, poison_after=2)

    def __init__(self):
        self.seen = []

    def handle(self, item):
        if item == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen.append(item)
        return item

    def log(self):
        return list(self.seen)


def poison_message():
    with actorq.ActorSystem() as system:
        f = system.spawn(Fragile, name="fragile")
        bad = f.handle("poison")
        after = [f.handle(i) for i in range(3)]
        # redeliver=True: the restarted instance gets "poison" again; after crashing the
        # actor poison_after=2 times in a row it is a poison message: its caller gets
        # ActorCrashed, it goes to the dead letters, and the queue moves on.
        raises(actorq.ActorCrashed, lambda: bad.result(timeout=20))
        assert [r.result(timeout=20) for r in after] == [0, 1, 2]
        assert f.log().result(timeout=20) == [0, 1, 2]
        (letter,) = system.dead_letters()
        assert letter.message == ("poison",)
        assert "2 times in a row" in letter.reason
        assert system.metrics()["actors"]["fragile"]["restarts"] == 2


class Sleeper(actorq.Actor):
    actor_options = actorq.ActorOptions(hang_timeout=0.5)

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


def hang_timeout():
    with actorq.ActorSystem() as system:
        s = system.spawn(Sleeper)
        assert s.nap(0.01).result(timeout=20) == 0.01
        # past hang_timeout: actorq kills the process
        hung = raises(actorq.ActorCrashed, lambda: s.nap(60).result(timeout=20))
        assert hung.cause == "hang"
        assert s.nap(0.01).result(timeout=20) == 0.01  # restarted
        assert system.metrics()["actors"][s.name]["crashes"] == {"hang": 1}


def giving_up():
    # The root supervisor gives up on an actor restarted more than root_max_restarts
    # times within root_within seconds (3 within 5 s by default): it stops for good.
    with actorq.ActorSystem(root_max_restarts=1) as system:
        w = system.spawn(Worker, name="looping")
        other = system.spawn(Worker, name="other")
        other_pid = other.pid().result(timeout=20)
        pid = w.pid().result(timeout=20)
        w.crash()  # the first crash: restarted
        pid_changed(w, pid)
        w.crash()  # the second within 5 s: more than root_max_restarts=1, given up
        wait_until(lambda: system.metrics()["actors"]["looping"]["state"] == "stopped",
                   timeout=20)
        stopped = raises(actorq.ActorStopped, w.pid)  # raised at once, when sending
        assert "gave up" in str(stopped)
        assert other.pid().result(timeout=20) == other_pid  # the root is one_for_one
        assert system.metrics()["system"]["events"]["gave_up"] == 1

    # A user supervisor over its intensity fails and escalates to its parent, which
    # restarts the whole subtree, or, over its own limit, escalates in turn: here the
    # root (root_max_restarts=0) gives up on the subtree at once.
    with actorq.ActorSystem(root_max_restarts=0) as system:
        sup = system.supervisor(strategy="one_for_one", max_restarts=1, within=60,
                                backoff=FAST, name="sup")
        a = sup.spawn(Worker, name="a")
        b = sup.spawn(Worker, name="b")
        pa = a.pid().result(timeout=20)
        a.crash()  # 1 restart within 60 s: allowed
        pa = pid_changed(a, pa)
        a.crash()  # 2 > max_restarts=1: sup fails, escalates, the root gives up
        wait_until(lambda: system.metrics()["actors"]["b"]["state"] == "stopped",
                   timeout=20)
        for ref in (a, b):
            raises(actorq.ActorStopped, ref.pid)
        events = system.metrics()["system"]["events"]
        assert events["escalated"] == 1
        assert events["gave_up"] == 1


class Parent(actorq.Actor):
    def on_start(self):
        # A child spawned by an actor is supervised on its behalf, and dies with it.
        self.child = self.context.spawn(Worker)

    def child_ref(self):
        return self.child

    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)

    def pid(self):
        return os.getpid()


def children():
    with actorq.ActorSystem() as system:
        p = system.spawn(Parent, name="parent")
        child = p.child_ref().result(timeout=20)
        assert child.add(1).result(timeout=20) == 1
        ppid = p.pid().result(timeout=20)
        p.crash()
        pid_changed(p, ppid)
        # the old child was stopped with its parent; the new parent made a new child
        new_child = p.child_ref().result(timeout=20)
        assert new_child != child
        assert new_child.add(1).result(timeout=20) == 1
        # The old child was asked to stop when its parent died; that stop is graceful and
        # asynchronous (a restart with a warm spare can be quicker), so it may answer for
        # a moment. Once it is gone, calling it raises ActorStopped.
        wait_until(lambda: stopped(child), timeout=20, message="the old child's stop")
        raises(actorq.ActorStopped, lambda: child.add(1))


def stopped(ref):
    try:
        ref.add(1).result(timeout=20)
    except actorq.ActorStopped:
        return True
    return False


if __name__ == "__main__":  # needed: actor processes re-import this module
    # The runtime logs every crash, restart and give-up on the "actorq" logger (which
    # prints nothing until logging is configured): pass --log to see them.
    if "--log" in sys.argv:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    crash_and_restart()
    strategies()
    poison_message()
    hang_timeout()
    giving_up()
    children()
    print("supervision: all assertions passed")
