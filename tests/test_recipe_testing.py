"""The "Testing actors" recipe of docs/recipes.md (copied there whole)."""

import os
import signal

import pytest

import actorq
from actorq.testing import wait_until


class Counter(actorq.Actor):
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


@pytest.fixture
def system():
    with actorq.ActorSystem(call_timeout=20) as s:
        yield s


def test_counter_survives_a_crash(system):
    counter = system.spawn(Counter)
    assert counter.incr().result() == 1
    pid = system.pid_of(counter)
    os.kill(pid, signal.SIGKILL)  # a real crash: its supervisor restarts it
    wait_until(lambda: system.pid_of(counter) not in (None, pid), timeout=20)
    assert counter.incr().result() == 1  # a fresh instance
