"""One message that does not unpickle fails alone (issue 14, item 2).

Messages travel batched, several to a ring record. A message the sender could pickle but
the receiver cannot unpickle (a function that exists only in the sender, a constructor
that raises over there) used to take its whole record down: every innocent call in it
timed out, with no dead letter. Now the batch is decoded message by message.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actorq
from actorq.testing import wait_until

RESULT_TIMEOUT = 15.0  # a failed call must come back long before its call timeout


def _refuse_elsewhere(pid: int, label: str) -> Poison:
    if os.getpid() != pid:
        msg = f"{label} only unpickles in process {pid}"
        raise ValueError(msg)
    return Poison(pid, label)


class Poison:
    """Pickles anywhere, unpickles only in the process that made it."""

    def __init__(self, pid: int, label: str) -> None:
        self.pid = pid
        self.label = label

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_elsewhere, (self.pid, self.label))


def _ghost() -> None:
    """Pickled by reference under a name only the test process defines (see ``ghost``)."""


GHOST_NAME = "_ghost_defined_only_in_the_test_process"
_ghost.__qualname__ = _ghost.__name__ = GHOST_NAME


def ghost() -> Any:
    """A function the actor cannot find: its name is set here, at run time, only."""
    setattr(sys.modules[__name__], GHOST_NAME, _ghost)
    return _ghost


class Sink(actorq.Actor):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def take(self, i: int, payload: Any = None) -> int:
        self.seen.append(i)
        return i

    def receive(self, message: Any) -> None:
        self.seen.append(message[0])

    def give_poison(self, i: int) -> Poison:
        self.seen.append(i)
        return Poison(os.getpid(), f"reply {i}")

    def drain(self) -> list[int]:
        seen, self.seen = self.seen, []
        return seen


ACTIONS = st.lists(
    st.tuples(st.sampled_from(["call", "call_kw", "tell", "bad_reply"]),
              st.sampled_from(["good", "good", "poison", "ghost"])),
    min_size=1, max_size=40)


def test_bad_messages_fail_alone_in_mixed_batches() -> None:
    """Any mix of good and bad calls, tells and replies, sent in one burst (so batched):
    every good one is handled, in order; every bad one fails at once, naming what did not
    unpickle, and is in the dead letters."""
    with actorq.ActorSystem(call_timeout=60.0) as system:
        sink = system.spawn(Sink, name="sink")
        system.wait_ready(sink)

        @settings(max_examples=25, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(ACTIONS)
        def check(actions: list[tuple[str, str]]) -> None:
            dead_before = len(system.dead_letters())
            payloads = {"good": lambda: [1, "two"], "poison": lambda: Poison(os.getpid(), "arg"),
                        "ghost": ghost}
            replies: list[tuple[int, str, str, Any]] = []
            for i, (kind, what) in enumerate(actions):
                payload = payloads[what]()
                if kind == "call":
                    replies.append((i, kind, what, sink.take(i, payload)))
                elif kind == "call_kw":
                    replies.append((i, kind, what, sink.take(i, payload=payload)))
                elif kind == "tell":
                    sink.tell((i, payload))
                else:
                    replies.append((i, kind, "poison", sink.give_poison(i)))
            for i, kind, what, reply in replies:
                if kind == "bad_reply":
                    with pytest.raises(TypeError, match=re.escape(
                            "return value of Sink 'sink'.give_poison could not be unpickled")):
                        reply.result(timeout=RESULT_TIMEOUT)
                elif what == "good":
                    assert reply.result(timeout=RESULT_TIMEOUT) == i
                else:
                    label = "argument 1" if kind == "call" else "keyword argument 'payload'"
                    with pytest.raises(TypeError, match=re.escape(
                            f"{label} of Sink 'sink'.take could not be unpickled")) as info:
                        reply.result(timeout=RESULT_TIMEOUT)
                    if what == "ghost":
                        assert GHOST_NAME in str(info.value)
                    else:
                        assert "only unpickles in process" in str(info.value)
            handled = [i for i, (kind, what) in enumerate(actions)
                       if what == "good" or kind == "bad_reply"]
            assert sink.drain().result(timeout=RESULT_TIMEOUT) == handled
            bad = sum(1 for kind, what in actions if what != "good" or kind == "bad_reply")
            wait_until(lambda: len(system.dead_letters()) - dead_before >= bad, timeout=20)
            letters = system.dead_letters()[dead_before:]
            assert len(letters) == bad
            assert all("could not be unpickled" in letter.reason for letter in letters)

        check()


def _exit_elsewhere(pid: int) -> ExitElsewhere:
    if os.getpid() != pid:
        sys.exit(f"unpickled in process {os.getpid()}")
    return ExitElsewhere(pid)


class ExitElsewhere:
    """Pickles anywhere; unpickling it in another process calls ``sys.exit()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_elsewhere, (self.pid,))


class Exiter(Sink):
    def give_exit(self) -> ExitElsewhere:
        return ExitElsewhere(os.getpid())

    def pid(self) -> int:
        return os.getpid()


def test_unpickling_that_calls_sys_exit_fails_only_that_message() -> None:
    """``SystemExit`` raised while a message is decoded (a ``sys.exit()`` in what a
    ``__reduce__`` calls) fails that one call or reply, naming it; the actor and the
    system's loop go on serving (it used to hang the call, or stop the loop)."""
    with actorq.ActorSystem(call_timeout=60.0) as system:
        actor = system.spawn(Exiter, name="exiter")
        pid = actor.pid().result(timeout=RESULT_TIMEOUT)
        replies = [actor.take(i, ExitElsewhere(os.getpid()) if i == 2 else i)
                   for i in range(5)]  # one burst: the bad call shares a record
        for i, reply in enumerate(replies):
            if i == 2:
                with pytest.raises(TypeError, match=r"argument 1 of Exiter 'exiter'\.take "
                                   r"could not be unpickled.*SystemExit: unpickled in"):
                    reply.result(timeout=RESULT_TIMEOUT)
            else:
                assert reply.result(timeout=RESULT_TIMEOUT) == i
        with pytest.raises(TypeError, match=r"return value of Exiter 'exiter'\.give_exit "
                           r"could not be unpickled.*SystemExit: unpickled in"):
            actor.give_exit().result(timeout=RESULT_TIMEOUT)
        assert actor.drain().result(timeout=RESULT_TIMEOUT) == [0, 1, 3, 4]
        assert actor.pid().result(timeout=RESULT_TIMEOUT) == pid  # the same process
        assert len([d for d in system.dead_letters() if "SystemExit" in d.reason]) == 2
