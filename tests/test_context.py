"""What an actor sees of the runtime: ``context.lookup`` and the default ``receive``."""

from __future__ import annotations

import os

import pytest

import actorq
from actorq.testing import wait_until


class Named(actorq.Actor):
    def pid(self):
        return os.getpid()


class Finder(actorq.Actor):
    def find_and_call(self, name):
        ref = self.context.lookup(name)
        return ref.name, ref.pid().result(timeout=20)

    def find(self, name):
        return self.context.lookup(name)

    def me(self):
        return self.context.name, self.context.restarts


def test_context_lookup_finds_a_live_actor_by_name():
    with actorq.ActorSystem() as s:
        target = s.spawn(Named, name="db")
        finder = s.spawn(Finder, name="finder")
        name, pid = finder.find_and_call("db").result(timeout=20)
        assert (name, pid) == ("db", target.pid().result())
        assert finder.find("db").result(timeout=20) == target  # the same actor
        assert finder.me().result() == ("finder", 0)


def test_context_lookup_of_a_missing_or_stopped_actor_raises_key_error():
    with actorq.ActorSystem() as s:
        finder = s.spawn(Finder)
        with pytest.raises(KeyError, match="no actor named 'nobody'"):
            finder.find("nobody").result(timeout=20)
        gone = s.spawn(Named, name="gone")
        gone.pid().result()
        s.stop(gone)
        with pytest.raises(KeyError, match="no actor named 'gone'"):
            finder.find("gone").result(timeout=20)
        with pytest.raises(KeyError):
            s.lookup("gone")
        assert finder.me().result()[1] == 0  # a KeyError in a handler is no crash


class NoReceive(actorq.Actor):
    def ping(self):
        return "pong"


def test_the_default_receive_raises_not_implemented_error():
    with actorq.ActorSystem() as s:
        a = s.spawn(NoReceive)
        with pytest.raises(NotImplementedError,
                           match=r"NoReceive got a message but does not define receive\(\): 'hi'"):
            a.ask("hi").result(timeout=20)
        a.tell("told")  # nobody waits: logged in the actor's process, and it goes on
        assert a.ping().result() == "pong"
        wait_until(lambda: s.metrics()["actors"][a.name]["handled"] >= 3)
        assert s.metrics()["actors"][a.name]["crashes"] == {}
