"""A lone call in one C call on each side (``_native.serve_lone``: the actor reads, runs,
commits and answers it; ``_native.send_lone``: the caller writes it), through the real
hubs and rings of benchmarks/msgpath_harness.py: the common case is served in C, every
unusual case is handed back to the Python methods and ends as it did before, with the
same shared memory and the same hub state, and bad input is an error naming it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actorq import CallTimeout, _native
from actorq._actorproc.actorhub import READ_AHEAD
from actorq._transport.ring import H_HANDLED, H_HEAD, H_SENT, H_TAIL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import msgpath_harness

needs_c = pytest.mark.skipif(_native.serve_lone is None,
                             reason="the C helpers are not built (or ACTORQ_NO_NATIVE)")


class Served:
    """The actor hub's ``serve_lone``, counting the calls it served in C and the records
    it handed back to Python."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.in_c = 0
        self.handed_back = 0

    def __call__(self, hub: Any, ctx: Any) -> Any:
        got = self.inner(hub, ctx)
        if type(got) is int:
            self.in_c += got
        else:
            self.in_c += got[0]
            self.handed_back += got[1] is not None
        return got


@pytest.fixture
def harness() -> Iterator[msgpath_harness.Harness]:
    """The two hubs, after a first call (it takes the slow path: the caller has no
    credit until the first send asks for some)."""
    h = msgpath_harness.Harness()
    try:
        assert answer(h, h.ref.echo(0)).result() == 0
        yield h
    finally:
        h.close()


def answer(h: msgpath_harness.Harness, reply: Any) -> Any:
    """Let the actor read what was sent, and the caller read its reply; the reply."""
    receiver, sender = h.receiver, h.sender
    receiver.drain(READ_AHEAD)
    if receiver.queue:
        receiver.pump()
    receiver.flush_dirty()
    chan = sender.inbound[msgpath_harness.ACTOR_ID]
    while not reply.done():
        rec = chan.read_next()
        assert rec is not None, "no reply"
        sender._take_record(chan, rec, 0.0)
    return reply


def use_handler(h: msgpath_harness.Harness, fn: Callable[..., Any]) -> None:
    """Make *fn* the actor's ``echo`` (its context is built again from the handlers)."""
    h.receiver.host.handlers["echo"] = fn
    h.receiver.lone_ctx = None


def idle_state(h: msgpath_harness.Harness) -> tuple[Any, ...]:
    """What a lone call must leave behind: the hub idle, the ring committed."""
    hub = h.receiver
    hdr = hub.inbound.all[0].ring.hdr
    return (hub.busy, hub.alone, hub.alone_entry, hub.sync_depth, len(hub.queue),
            hdr[H_HEAD] == hdr[H_TAIL], hdr[H_HANDLED] == hdr[H_SENT])


IDLE = (False, None, None, 0, 0, True, True)


@needs_c
def test_plain_calls_are_sent_and_served_in_c(harness: msgpath_harness.Harness) -> None:
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)
    sender, chan = harness.sender, harness.sender.outbound[msgpath_harness.ACTOR_ID]
    echo = harness.ref.echo
    assert type(echo) is _native.LoneCaller  # ref.method bound in C
    for value in (7, -3, 2.5, "text", b"bytes", None, True, 10**30, 1 + 2j):
        reply = echo(value)
        assert not sender.dirty  # written at once (send_lone), nothing left to flush
        assert not chan.outbox
        assert answer(harness, reply).result() == value
    # not the common call: hub.call's (several arguments, keywords), served in C still
    assert answer(harness, harness.ref.call("echo", x=(1, "two"))).result() == (1, "two")
    assert answer(harness, echo(x=2)).result() == 2
    assert (served.in_c, served.handed_back) == (11, 0)
    assert idle_state(harness) == IDLE


@needs_c
def test_send_lone_writes_what_send_now_writes(harness: msgpath_harness.Harness) -> None:
    sender = harness.sender
    ring = sender.outbound[msgpath_harness.ACTOR_ID].ring
    send_lone = _native.send_lone
    assert send_lone is not None
    records = []
    for send in (lambda t, m: send_lone(sender, t, m), sender._send_now):
        before = ring.hdr[H_TAIL]
        msg = (1, 99, sender.id, "echo", (5,), {})
        assert send(msgpath_harness.ACTOR_ID, msg)
        records.append((ring.hdr[H_TAIL] - before, bytes(ring.read_at(before).payload)))
        harness.receiver.drain(READ_AHEAD)  # read (and answered: token 99 is unknown)
    assert records[0] == records[1]
    assert send_lone(sender, 12345, (1, 1, 0, "echo", (1,), {})) is False  # no channel


@needs_c
def test_results_that_are_not_plain_data_are_answered_by_python(
        harness: msgpath_harness.Harness) -> None:
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)
    use_handler(harness, lambda x: {"got": [x, x]})
    assert answer(harness, harness.ref.echo(3)).result() == {"got": [3, 3]}
    use_handler(harness, lambda x: bytearray(b"ab"))  # not marshalled inline by C
    assert answer(harness, harness.ref.echo(3)).result() == bytearray(b"ab")
    assert served.in_c == 2  # run and committed in C; the reply written by send_reply
    assert idle_state(harness) == IDLE


@needs_c
def test_a_handler_that_raises_fails_only_its_call(harness: msgpath_harness.Harness) -> None:
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)

    def fails(x: Any) -> Any:
        if x == 2:
            msg = f"bad value {x}"
            raise ValueError(msg)
        return x

    use_handler(harness, fails)
    assert answer(harness, harness.ref.echo(1)).result() == 1
    with pytest.raises(ValueError, match="bad value 2"):
        answer(harness, harness.ref.echo(2)).result()
    assert answer(harness, harness.ref.echo(3)).result() == 3
    assert served.in_c == 3
    assert idle_state(harness) == IDLE


@needs_c
def test_an_awaitable_result_is_held_by_python(harness: msgpath_harness.Harness) -> None:
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)

        async def later(x: Any) -> Any:
            await asyncio.sleep(0)
            return x * 2

        use_handler(harness, later)
        reply = harness.ref.echo(21)
        harness.receiver.drain(READ_AHEAD)
        assert harness.receiver.busy  # held: an async handler holds the actor
        loop.run_until_complete(asyncio.sleep(0.01))
        assert answer(harness, reply).result() == 42
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert served.in_c == 1
    assert idle_state(harness) == IDLE


@needs_c
def test_a_call_with_a_deadline_is_served_in_c_unless_it_expired(
        harness: msgpath_harness.Harness) -> None:
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)
    sender, ref = harness.sender, harness.ref
    ok = sender.call_deadline(ref, "echo", (5,), None, time.monotonic() + 60, "tok-1")
    assert answer(harness, ok).result() == 5
    assert harness.receiver.deadline[2] == "tok-1"  # what context.token reads
    assert served.in_c == 1
    late = sender.call_deadline(ref, "echo", (6,), None, time.monotonic() - 1)
    with pytest.raises(CallTimeout) as err:
        answer(harness, late).result()
    assert err.value.reason == "expired"
    assert (served.in_c, served.handed_back) == (1, 1)  # dropped by the Python path
    assert idle_state(harness) == IDLE


@needs_c
def test_a_busy_actor_leaves_the_record_to_the_general_path(
        harness: msgpath_harness.Harness) -> None:
    hub = harness.receiver
    served = hub.serve_lone = Served(hub.serve_lone)
    reply = harness.ref.echo(9)
    hub.busy = True
    hub.drain(READ_AHEAD)  # read into the queue, not run
    assert served.in_c == 0
    assert len(hub.queue) == 1
    assert not reply.done()
    hub.busy = False
    hub.pump()
    hub.flush_dirty()
    assert answer(harness, reply).result() == 9
    assert idle_state(harness) == IDLE


@needs_c
def test_c_and_python_leave_the_same_shared_memory_and_state() -> None:
    def run(in_c: bool) -> list[Any]:
        h = msgpath_harness.Harness()
        try:
            if not in_c:
                h.receiver.serve_lone = None
            out: list[Any] = []
            for i in range(20):
                use_handler(h, (lambda x: [x]) if i % 3 == 0 else (lambda x: x))
                out.append(answer(h, h.ref.echo(i)).result())
            hub = h.receiver
            inb = hub.inbound.all[0].ring.hdr.tolist()[:16]
            back = hub.outbound[0].ring.hdr.tolist()[:16]
            return [out, hub.ctl.slots.tolist(), inb, back, idle_state(h)]
        finally:
            h.close()

    assert run(True) == run(False)


@needs_c
def test_bad_input_is_an_error_naming_it(harness: msgpath_harness.Harness) -> None:
    serve_lone, send_lone = _native.serve_lone, _native.send_lone
    assert serve_lone is not None
    assert send_lone is not None
    chan = harness.receiver.inbound.all[0]
    hdr = chan.ring.hdr
    before = (hdr.tolist(), chan.cursor)
    harness.ref.echo(1)  # a call waiting: bad input must not read it
    with pytest.raises(TypeError, match="ctx is a tuple"):
        serve_lone(harness.receiver, (1, 2))
    ctx = harness.receiver.lone_context(chan)
    with pytest.raises(TypeError, match="RingCore"):
        serve_lone(harness.receiver, (ctx[0], None, *ctx[2:]))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        send_lone(harness.sender, 1)  # type: ignore[call-arg]
    tail = before[0][H_TAIL]
    assert hdr[H_TAIL] > tail  # the call
    assert (hdr[H_HEAD], chan.cursor) == (before[0][H_HEAD], before[1])  # still unread


@needs_c
def test_a_hubs_calls_in_c_answer_as_its_methods_do(harness: msgpath_harness.Harness) -> None:
    hub_call, hub_call_deadline = _native.hub_call, _native.hub_call_deadline
    assert hub_call is not None
    assert hub_call_deadline is not None
    sender, ref = harness.sender, harness.ref
    served = harness.receiver.serve_lone = Served(harness.receiver.serve_lone)
    reply = hub_call(sender, ref, "echo", (3,), None, None)
    assert not sender.dirty  # plain: written at once
    assert answer(harness, reply).result() == 3
    # not plain (a keyword, two arguments): the hub's own call, the same answer
    assert answer(harness, hub_call(sender, ref, "echo", (), {"x": 4}, None)).result() == 4
    due = time.monotonic() + 60
    reply = hub_call_deadline(sender, ref, "echo", (5,), None, due, None, None, "pre")
    assert not sender.dirty
    assert answer(harness, reply).result() == 5
    assert harness.receiver.deadline[1:] == (due, None, "pre")  # carried to the actor
    # a call token that is not plain data: the hub's call_deadline (it checks it)
    reply = hub_call_deadline(sender, ref, "echo", (6,), None, due, ["tok"], None, None)
    assert answer(harness, reply).result() == 6
    late = hub_call_deadline(sender, ref, "echo", (7,), None, time.monotonic() - 1, None,
                             None, None)
    with pytest.raises(CallTimeout):
        answer(harness, late).result()
    # 3, 4 and 5 served in C; 6 was sent pickled (its token is not plain data), 7 dropped
    assert (served.in_c, served.handed_back) == (3, 2)
    assert not sender.pending  # every reply taken
    with pytest.raises(TypeError, match="takes 6 arguments"):
        hub_call(sender, ref, "echo", (1,))  # type: ignore[call-arg]
