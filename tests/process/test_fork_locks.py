"""Locks another thread holds when a process forks (the fork start method).

Under ``start_method="fork"`` the starter thread forks while the user's thread may be
inside a locked section: cloudpickle's registry of by-value classes (taken by every
spawn of a class defined in a test or a notebook), or a reply's callback list. The child
would inherit the lock held by a thread it does not have, and its first use of it would
wait forever (CI saw it: a ``Parent`` actor spawning its child hung in cloudpickle). Each
fork takes these locks first, so a child always gets them free.
"""

from __future__ import annotations

import os
import threading

import cloudpickle
import pytest

import actorq  # noqa: F401  (registers the at-fork hooks)
from actorq._core import reply

LOCKS = {
    "cloudpickle's class registry": lambda: cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_LOCK,
    "a reply's callbacks": lambda: reply._callbacks_lock,
}


@pytest.mark.parametrize("name", list(LOCKS))
def test_a_child_forked_while_another_thread_holds_the_lock_gets_it_free(name):
    lock = LOCKS[name]()
    holding = threading.Event()
    forked = threading.Event()
    child: list[int] = []

    def hold() -> None:
        with lock:
            holding.set()
            # Let go once the fork has returned in the parent; with the fix the fork
            # waits for the lock instead, and this lets go after a while on its own.
            forked.wait(2.0)

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child: one thread, this one
            free = lock.acquire(timeout=10)
            if free:
                lock.release()
                cloudpickle.dumps(type("Made", (), {}))  # a by-value class: takes it
            os._exit(0 if free else 3)
        child.append(pid)
        forked.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    forker = threading.Thread(target=fork)
    forker.start()
    forker.join(60)
    holder.join(60)
    assert child, "the fork did not happen"
    _, status = os.waitpid(child[0], 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child found {name} lock held"
    assert lock.acquire(timeout=10)  # and the parent's is free again
    lock.release()


# Locks that a forked child replaces with a new one instead (no thread of the child can
# be inside them): the child looks each one up again after the fork.
REPLACED = {
    "the fork server's start (spawn._lock)": ("actorq._process.spawn", "_lock"),
    "the mapped blocks' table (oob._mapped_lock)": ("actorq._transport.oob", "_mapped_lock"),
    "a channel's fence (channel._fence_lock)": ("actorq._transport.channel", "_fence_lock"),
}


def _routing_scheduler_lock() -> threading.Condition:
    from actorq._routing.scheduler import SCHEDULER
    return SCHEDULER._cond


@pytest.mark.parametrize("name", [*REPLACED, "the routing scheduler's condition"])
def test_a_lock_replaced_at_fork_is_free_in_the_child(name):
    import importlib

    def current() -> threading.Lock | threading.Condition:
        if name in REPLACED:
            module, attr = REPLACED[name]
            return getattr(importlib.import_module(module), attr)
        return _routing_scheduler_lock()

    held = current()
    assert held.acquire(timeout=10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the parent's holder is not here
            lock = current()
            free = lock is not held and lock.acquire(timeout=10)
            os._exit(0 if free else 3)
    finally:
        held.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child found {name} held"
