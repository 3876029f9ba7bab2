"""A synchronous caller's reply step (``SystemHub.wait_spin``) with the C helpers
(``_native.take_reply``, replies whose fields are the C ``ReplyCore``) and without.

Replies are written into a real shared-memory ring the way an actor writes them
(``send_reply``: a lone message marshalled, or a pickle), and read by a real
``SystemHub`` through ``Reply.result()``: each case ends with the same reply outcome
and the same ring header (head, handled, the reader mark) either way. The C step takes
only the common case (a lone plain reply nobody else waits on); the rest (errors,
pickles, batches, callbacks, events, a record partly handled before) goes the Python
way, untouched by it; a reply's ``on_outcome`` hook is asked by either exactly as
``Reply.set_result`` asks it.
"""

from __future__ import annotations

import marshal
import os
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actorq import _native
from actorq._config import SystemConfig
from actorq._core import protocol
from actorq._core.reply import Reply, ReplyFields
from actorq._errors import CallTimeout
from actorq._ids import new_run_prefix
from actorq._runtime.systemhub import SystemHub
from actorq._transport import ring as ring_module
from actorq._transport.channel import CTL_SIZE, ControlBlock, InChannel
from actorq._transport.oob import LONE_MARSHAL
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_HEAD,
    H_READER,
    H_TAIL,
    READER_EXPECTED,
    Ring,
)
from actorq._transport.shm import Segment, unlink_prefix
from tests.native.helpers import selected

ACTOR = 1
needs_c = pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test once with the C reply step and once with the Python path."""
    with selected(request.param) as which:
        yield which


class Side:
    """The user's process's hub with one inbound ring from an actor, and that actor's
    producer end of it."""

    def __init__(self) -> None:
        self.prefix = new_run_prefix()
        config = SystemConfig()
        self.ring_seg = Segment.create(self.prefix + "r", Ring.size_for(config.ring_size))
        Ring(self.ring_seg.buf, init=True).release()
        self.ctl_seg = Segment.create(self.prefix + "c", CTL_SIZE)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        self.hub = SystemHub(self.prefix, config, ControlBlock(self.ctl_seg), self.efd,
                             lambda _actor_id: None)
        self.chan = InChannel(ACTOR, Segment.attach(self.ring_seg.name))
        self.hub.inbound[ACTOR] = self.chan
        self.producer = Ring(self.ring_seg.buf)
        self.tokens = iter(range(1, 1_000_000))

    def call(self, method: str = "echo") -> Reply[Any]:
        """A pending reply, as ``Sending.call`` registers one."""
        token = next(self.tokens)
        reply: Reply[Any] = Reply(self.hub, None, token, method, ACTOR)
        self.hub.pending[token] = reply
        return reply

    def write(self, msgs: list[Any], *, pickled: bool = False) -> None:
        """One record of *msgs*, as an actor writes it (``send_reply``)."""
        body = (pickle.dumps(msgs, 5) if pickled else marshal.dumps(msgs, LONE_MARSHAL))
        assert self.producer.core.try_write(body, len(msgs))

    def header(self) -> tuple[int, int, int]:
        hdr = self.chan.ring.hdr
        return hdr[H_HEAD], hdr[H_HANDLED], hdr[H_READER]

    def close(self) -> None:
        self.producer.release()
        self.chan.close()
        self.hub.ctl.close()
        self.hub.pool.close()
        self.ring_seg.close()
        unlink_prefix(self.prefix)
        os.close(self.efd)


@pytest.fixture
def side(impl: str) -> Iterator[Side]:
    s = Side()
    try:
        yield s
    finally:
        s.close()


def reply_msg(token: int, value: Any, ok: bool = True, tb: str = "") -> tuple[Any, ...]:
    return (protocol.OP_REPLY, token, ok, value, tb)


@needs_c
def test_the_c_constants_are_the_python_ones() -> None:
    c = _native._ring
    assert c is not None
    assert c.OP_REPLY == protocol.OP_REPLY
    assert set(ReplyFields.__slots__) == {
        name for name in dir(c.ReplyCore) if name.startswith("_") and not name.startswith("__")
    } | {"target_id", "token"}
    assert ring_module.READER_EXPECTED == 2
    assert (ring_module.H_HANDLED, ring_module.H_CUR_REC, ring_module.H_CUR_SUB,
            ring_module.H_READER) == (1, 2, 3, 4)


def test_replies_have_the_c_fields_where_built() -> None:
    base = Reply.__mro__[1]
    assert base is (_native.ReplyCore or ReplyFields)
    r: Reply[Any] = Reply(hub=None, ref=None, token=7, method="m")  # type: ignore[arg-type]
    assert (r.token, r.target_id, r._done, r._value, r._exc, r._hook, r._callbacks) == (
        7, 0, False, None, None, None, ())
    assert not r.done()
    with pytest.raises(AttributeError):
        r.other = 1  # type: ignore[attr-defined]  # slots only, as before


def test_a_plain_reply_is_completed_and_committed(side: Side) -> None:
    reply = side.call()
    side.write([reply_msg(reply.token, ("x", 1.5))])
    assert reply.result(timeout=5) == ("x", 1.5)
    assert reply.done()
    assert reply.token not in side.hub.pending
    assert side.chan.cursor == side.chan.ring.hdr[H_TAIL]
    assert side.header() == (side.chan.cursor, 1, 0)


def test_many_calls_in_turn_each_get_their_own_answer(side: Side) -> None:
    for i in range(50):
        reply = side.call()
        side.write([reply_msg(reply.token, i)])
        assert reply.result(timeout=5) == i
    assert side.header()[:2] == (side.chan.cursor, 50)
    assert not side.hub.pending


def test_a_late_reply_is_dropped_and_committed(side: Side) -> None:
    gone = side.call()
    del side.hub.pending[gone.token]  # failed by someone else meanwhile (its actor died)
    side.write([reply_msg(gone.token, "late")])
    reply = side.call()
    side.write([reply_msg(reply.token, "mine")])
    assert reply.result(timeout=5) == "mine"
    assert not gone.done()
    assert side.header() == (side.chan.cursor, 2, 0)


def test_an_error_reply_raises_the_handlers_error(side: Side) -> None:
    reply = side.call()
    side.write([reply_msg(reply.token, KeyError("k"), ok=False, tb="remote tb")],
               pickled=True)
    with pytest.raises(KeyError) as info:
        reply.result(timeout=5)
    assert "remote tb" in str(info.value.__cause__)
    assert side.header()[:2] == (side.chan.cursor, 1)


def test_a_pickled_and_a_batched_reply_go_the_python_way(side: Side) -> None:
    a, b = side.call(), side.call()
    side.write([reply_msg(a.token, "a"), reply_msg(b.token, "b")])
    assert a.result(timeout=5) == "a"
    assert b.result(timeout=5) == "b"
    c = side.call()
    side.write([reply_msg(c.token, {"a set": {1, 2}})], pickled=True)
    assert c.result(timeout=5) == {"a set": {1, 2}}
    assert side.header()[:2] == (side.chan.cursor, 3)


def test_a_hook_sees_the_outcome_and_may_take_it_over(side: Side) -> None:
    reply = side.call()
    seen: list[Any] = []

    def hook(r: Reply[Any], value: Any, exc: BaseException | None) -> bool:
        seen.append((value, exc))
        return True  # taken over: the reply stays pending

    reply._hook = hook
    side.write([reply_msg(reply.token, 41)])
    with pytest.raises(CallTimeout):
        reply.result(timeout=0.2)
    assert seen == [(41, None)]
    assert not reply.done()
    assert side.header()[:2] == (side.chan.cursor, 1)


def test_a_hook_that_publishes_sees_the_value_before_the_caller(side: Side) -> None:
    # a pool's first attempt: the hook counts the answer and publishes it (False)
    reply = side.call()
    seen: list[Any] = []

    def hook(r: Reply[Any], value: Any, exc: BaseException | None) -> bool:
        seen.append((r is reply, value, exc, r.done()))
        return False

    reply._hook = hook
    side.write([reply_msg(reply.token, 7)])
    assert reply.result(timeout=5) == 7
    assert seen == [(True, 7, None, False)]  # asked once, before it was done
    assert reply._hook is None
    assert reply.token not in side.hub.pending
    assert side.header()[:2] == (side.chan.cursor, 1)


def test_a_hook_that_raises_is_logged_and_the_reply_published(
        side: Side, caplog: pytest.LogCaptureFixture) -> None:
    reply = side.call()

    def hook(r: Reply[Any], value: Any, exc: BaseException | None) -> bool:
        raise ValueError("the hook's own bug")

    reply._hook = hook
    side.write([reply_msg(reply.token, "v")])
    with caplog.at_level("ERROR", logger="actorq._core.reply"):
        assert reply.result(timeout=5) == "v"
    errors = [r for r in caplog.records if "on_outcome hook" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError
    assert side.header()[:2] == (side.chan.cursor, 1)


def test_a_hook_that_completes_the_reply_itself_wins(side: Side) -> None:
    reply = side.call()

    def hook(r: Reply[Any], value: Any, exc: BaseException | None) -> bool:
        r.set_result(("replaced", value))
        return False

    reply._hook = hook
    side.write([reply_msg(reply.token, 1)])
    assert reply.result(timeout=5) == ("replaced", 1)


def test_a_callback_added_by_a_hook_runs_once(side: Side) -> None:
    reply = side.call()
    got: list[Any] = []

    def hook(r: Reply[Any], value: Any, exc: BaseException | None) -> bool:
        r.add_done_callback(lambda done: got.append(done.outcome()))
        return False

    reply._hook = hook
    side.write([reply_msg(reply.token, "cb")])
    assert reply.result(timeout=5) == "cb"
    assert got == [("cb", None)]


def test_callbacks_and_a_sleeping_waiter_are_woken(side: Side) -> None:
    reply = side.call()
    got: list[Any] = []
    reply.add_done_callback(lambda r: got.append(r.outcome()))
    side.write([reply_msg(reply.token, "v")])
    assert reply.result(timeout=5) == "v"
    assert got == [("v", None)]
    other = side.call()
    woke = threading.Event()

    def sleeper() -> None:
        other.sleep_until_done(30)
        woke.set()

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        while other._event is None:  # the sleeper registered its event
            threading.Event().wait(0.001)
        side.write([reply_msg(other.token, "w")])
        assert other.result(timeout=5) == "w"
        assert woke.wait(10)
    finally:
        other.set_result(None)
        t.join(10)


def test_a_record_partly_handled_before_is_not_handled_again(side: Side) -> None:
    reply = side.call()
    pos = side.chan.cursor
    hdr = side.chan.ring.hdr
    hdr[H_CUR_REC] = pos
    hdr[H_CUR_SUB] = 1  # a predecessor resolved its one message already
    side.write([reply_msg(reply.token, "twice?")])
    with pytest.raises(CallTimeout):
        reply.result(timeout=0.2)
    assert not reply.done()
    assert side.header()[:2] == (side.chan.cursor, 1)


def test_the_reader_hint_of_a_caller_that_did_not_spin_is_spent(side: Side) -> None:
    reply = side.call()
    side.chan.ring.hdr[H_READER] = READER_EXPECTED
    side.write([reply_msg(reply.token, 3)])
    side.hub.drain()  # (its loop thread's read: the caller never spun)
    assert reply.result(timeout=5) == 3
    assert side.header() == (side.chan.cursor, 1, 0)


@needs_c
def test_take_reply_leaves_what_it_does_not_complete_untouched(side: Side, impl: str) -> None:
    take = _native._ring.take_reply  # type: ignore[union-attr]
    core = side.chan.ring.core  # the C RingCore, or ring.py's (the "python" half)
    pending = side.hub.pending
    assert take(core, side.chan.cursor, None, pending) is None  # nothing published
    fields = ReplyFields(side.hub, None, 99, "m", ACTOR)  # not a ReplyCore: Python's
    pending[99] = fields  # type: ignore[assignment]
    side.write([reply_msg(99, "x")])
    rec = take(core, side.chan.cursor, None, pending)
    assert type(rec) is ring_module.Loaded  # (a Python core: its read_plain's answer)
    assert rec.msgs == [reply_msg(99, "x")]
    assert pending[99] is fields
    assert not fields.done()
    assert side.header() == (0, 0, 0)
    if impl == "native":
        with pytest.raises(TypeError, match="pending must be a dict"):
            take(core, side.chan.cursor, None, list(pending))
        with pytest.raises(TypeError, match="4 arguments"):
            take(core, side.chan.cursor)
        with pytest.raises(ValueError, match="ring position"):
            take(core, -1, None, pending)
    del pending[99]
