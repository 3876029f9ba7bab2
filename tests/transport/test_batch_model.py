"""Coalesced bursts against a model: order, credits, Backpressure, crashes mid-batch.

The real sending code (``Hub.tell``/``Hub.call``, the outbox, plain bursts marshalled and
mixed ones pickled) and the real receiving code (``ActorHub.drain``/``pump``, commit
after handle) run in this process over real shared-memory rings; a crash is the handler
raising ``Crash`` (a ``BaseException``: ``pump`` lets it through, as a dying process
would leave everything), after which the system's own crash attribution
(``_runtime.crashes.attribute_crash``) reads the slots and a successor hub maps the same
rings, as a restarted actor does. Hypothesis chooses the bursts (their sizes, plain or
pickled messages, tells and calls), where the handler crashes (inside a handler, or
between two messages), whether the crashed message is redelivered, and the window.

What must hold, as without batching (issue 15):
- every message is handled exactly once, in the order it was sent, except one that a
  crash made poison (not redelivered): that one is a dead letter, and its caller failed;
- the crash is attributed to the message whose handler was running, and to nothing when
  it came between two messages;
- a handler that raises an ``Exception`` fails its own message only (a call's caller
  gets the exception), and the rest of the batch is handled;
- ``tell_nowait`` raises ``Backpressure`` exactly when ``window`` messages are in flight,
  and sends nothing then; once everything is handled, every credit is back.
"""

from __future__ import annotations

import marshal
import os
import socket
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorq._actorproc.actorhub import READ_AHEAD, ActorHub
from actorq._actorproc.host import Host
from actorq._config import SystemConfig
from actorq._core.hub import Hub
from actorq._core.protocol import C_BUSY, C_SINCE, OP_CALL, OP_TELL, Boot
from actorq._core.ref import ActorRef
from actorq._errors import Backpressure
from actorq._ids import new_run_prefix
from actorq._runtime.crashes import attribute_crash
from actorq._supervision.deadletters import DeadLetters
from actorq._transport.channel import CTL_SIZE, ControlBlock, InChannel, OutChannel
from actorq._transport.ring import Ring
from actorq._transport.shm import Segment, unlink_prefix
from actorq.testing import wait_until

ACTOR = 1
# Every test here runs with the C slots of shared memory and with the fallback's
# (conftest.py): the rings' headers and the control blocks the crash attribution reads.
pytestmark = pytest.mark.usefixtures("slots_impl")


class Crash(BaseException):
    """The actor's process dies here (``pump`` catches ``Exception`` only)."""


class Sender(Hub):
    """The user's side, without a loop thread (flushes are explicit)."""

    def may_block(self) -> bool:
        return True

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:  # pragma: no cover
        raise AssertionError(ref)


class CrashingHub(ActorHub):
    """An actor hub that can die while flushing between two messages."""

    crash_on_flush = False

    def flush_dirty(self, *, wait: bool = True, settle: bool = False) -> bool:
        if self.crash_on_flush:
            self.crash_on_flush = False
            raise Crash
        return super().flush_dirty(wait=wait, settle=settle)


class World:
    """A sender and an actor joined by two rings; the actor can crash and be replaced."""

    def __init__(self, window: int, plan: dict[int, str], *, timed: bool = False) -> None:
        self.prefix = new_run_prefix()
        # timed: the actor has a hang timeout, so it stamps each message's start, and its
        # records of bare tells go through pump's general loop instead of run_tells
        self.hang_timeout = 60.0 if timed else None
        self.config = SystemConfig(ring_size=1 << 16, window=window, outbox_messages=64)
        self.segs: list[Segment] = []
        ring_size = Ring.size_for(self.config.ring_size)
        self.to_actor, self.from_actor = self._seg("ra", ring_size), self._seg("rs", ring_size)
        for seg in (self.to_actor, self.from_actor):
            Ring(seg.buf, init=True).release()
        self.sys_ctl, self.actor_ctl = self._seg("c0", CTL_SIZE), self._seg("c1", CTL_SIZE)
        self.efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.sender = Sender(0, self.prefix, self.config, ControlBlock(self._attach(self.sys_ctl)),
                             self.efds[0])
        self.sender.outbound[ACTOR] = OutChannel(
            ACTOR, self._attach(self.to_actor), ControlBlock(self._attach(self.actor_ctl)),
            self.efds[1], window)
        self.sender.inbound[ACTOR] = InChannel(ACTOR, self._attach(self.from_actor))
        self.ref: ActorRef[Any] = ActorRef(self.sender, self.prefix, ACTOR, "a",
                                           frozenset({"work"}), "A")
        self.plan = plan  # message id -> "handler" or "between": crash there, once
        self.log: list[int] = []  # message ids, in the order their handlers completed
        self.crashes: list[tuple[str, Any]] = []  # what attribute_crash blamed
        self.failed: list[int] = []  # tokens of calls failed by a crash
        self.dead = DeadLetters()
        self.redeliver = True
        self.cell = SimpleNamespace(ctl=None, inbound={0: self.to_actor}, poison_key=None,
                                    poison_count=0, name="a", options=None)
        self.actor: CrashingHub | None = None
        self.actors: list[CrashingHub] = []  # every actor hub, the dead ones too
        self.socks: list[socket.socket] = []
        self.start_actor()

    def _seg(self, kind: str, size: int) -> Segment:
        seg = Segment.create(self.prefix + kind, size, prefault=False)
        self.segs.append(seg)
        return seg

    def _attach(self, seg: Segment) -> Segment:
        other = Segment.attach(seg.name)
        self.segs.append(other)
        return other

    def start_actor(self) -> None:
        """A new actor process: maps the rings its predecessor left."""
        pair = socket.socketpair()
        self.socks += pair
        host = Host(pair[0])
        host.name = host.cls_name = "a"
        info = Boot(ACTOR, "a", self.prefix, self.config, self.actor_ctl.name, "", 0, {}, {},
                    0, self.hang_timeout, None, 1, None, 1)
        ctl = ControlBlock(self._attach(self.actor_ctl))
        hub = CrashingHub(host, info, ctl, self.efds[1])
        host.hub = hub
        host.handlers = {"receive": self.handle, "work": self.handle}
        hub.inbound[0] = InChannel(0, self._attach(self.to_actor), self.efds[0])
        hub.outbound[0] = OutChannel(0, self._attach(self.from_actor),
                                     ControlBlock(self._attach(self.sys_ctl)), self.efds[0],
                                     self.config.window)
        self.actor = hub
        self.actors.append(hub)
        self.cell.ctl = ctl

    def handle(self, message: Any) -> int:
        ident = message["id"] if type(message) is dict else message[1]
        where = self.plan.pop(ident, None)
        if where == "handler":
            raise Crash
        if where == "error":  # an ordinary exception: this message fails, alone
            raise ValueError(ident)
        self.log.append(ident)
        if where == "between":  # dies after this handler, before the next message
            assert self.actor is not None
            self.actor.crash_on_flush = True
            self.actor.dirty.add(self.actor.outbound[0])
        return ident

    def run_actor(self) -> None:
        """Let the actor handle everything there is; on a crash, attribute it and restart."""
        while True:
            hub = self.actor
            assert hub is not None
            try:
                while hub.has_unread() or hub.queue:
                    hub.drain(READ_AHEAD)
                    hub.pump()
                    hub.flush_dirty()
                return
            except Crash:
                self.after_crash()

    def after_crash(self) -> None:
        slots = self.cell.ctl.slots
        busy = slots[C_BUSY]
        self.cell.options = SimpleNamespace(redeliver=self.redeliver, poison_after=1 if not
                                            self.redeliver else 1000)
        before = self.dead.total
        attribute_crash(self.cell, "crashed", "killed", self.dead,
                        lambda _caller, token, _text, _cause: self.failed.append(token))
        letter = self.dead.snapshot()[-1] if self.dead.total > before else None
        self.crashes.append(("busy" if busy else "idle", letter.message if letter else None))
        self.start_actor()  # the dead hub's views are simply dropped, as with a process

    def replies(self) -> None:
        """Read the sender's inbound ring: resolve every reply there."""
        chan = self.sender.inbound[ACTOR]
        while (rec := chan.read_next()) is not None:
            self.sender._take_record(chan, rec, 0.0)

    def close(self) -> None:
        for hub in (self.sender, *self.actors):
            for chan in [*hub.outbound.values(), *hub.inbound.values()]:
                chan.close()
                if isinstance(chan, OutChannel):
                    chan.ctl.close()
            hub.ctl.close()
            hub.pool.close()
        for seg in self.segs:
            seg.close()
        unlink_prefix(self.prefix)
        for fd in self.efds:
            os.close(fd)
        for sock in self.socks:
            sock.close()


message = st.tuples(st.sampled_from(["tell", "call"]), st.booleans())  # (kind, plain)
bursts = st.lists(st.lists(message, min_size=1, max_size=40), min_size=1, max_size=6)


@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: the profile (conftest)
@given(data=st.data(), bursts=bursts, window=st.integers(4, 64), redeliver=st.booleans(),
       timed=st.booleans())
def test_bursts_keep_order_credits_and_crash_semantics(data: st.DataObject, bursts: Any,
                                                       window: int, redeliver: bool,
                                                       timed: bool) -> None:
    # timed: bare tells through pump's general loop, not run_tells (the two must agree)
    total = sum(len(b) for b in bursts)
    crash_at = data.draw(st.none() | st.integers(0, total - 1), label="crash_at")
    where = data.draw(st.sampled_from(["handler", "between", "error"]), label="where")
    world = World(window, {} if crash_at is None else {crash_at: where}, timed=timed)
    world.redeliver = redeliver
    try:
        sent: list[int] = []  # ids that reached the sender's outbox, in order
        calls: dict[int, Any] = {}  # id -> Reply
        in_flight = 0
        ident = 0
        for burst in bursts:
            for kind, plain in burst:
                msg: Any = ("m", ident) if plain else {"id": ident, "pickled": [ident]}
                if in_flight >= window:
                    # no credit: tell_nowait raises and sends nothing
                    with pytest.raises(Backpressure):
                        world.ref.tell_nowait(msg)
                elif kind == "tell":
                    world.ref.tell_nowait(msg)
                    sent.append(ident)
                    in_flight += 1
                else:
                    calls[ident] = world.ref.call("work", msg)
                    sent.append(ident)
                    in_flight += 1
                chan = world.sender.outbound[ACTOR]
                assert chan.ring.in_flight() + len(chan.outbox) + chan.encoded_count <= window
                ident += 1
            world.sender.flush_dirty()  # the end of a burst: one record (or a few)
            world.run_actor()
            world.replies()
            in_flight = 0  # all handled: every credit came back

        hit = [] if crash_at is None or crash_at not in sent else [crash_at]
        failed = hit if where == "error" else []  # raised: failed alone, not a crash
        crashed = [] if where == "error" else hit
        poisoned = [i for i in crashed if where == "handler" and not redeliver]
        # every message once, in order, but the one a crash made poison or that raised
        assert world.log == [i for i in sent if i not in poisoned and i not in failed]
        if crashed:
            kind, letter = world.crashes[0]
            if where == "handler":  # blamed on the message whose handler ran
                assert kind == "busy"
                if poisoned:
                    assert letter is not None
                    blamed = letter[0]
                    blamed = blamed["id"] if type(blamed) is dict else blamed[1]
                    assert blamed == crash_at
                else:
                    assert letter is None  # left at the head, delivered again
            else:  # between two messages: nobody is blamed, nothing is redelivered
                assert letter is None
        assert len(world.crashes) == len(crashed)
        # calls: answered, or failed by the crash that made them poison
        for i, reply in calls.items():
            if i in poisoned:
                assert reply.token in world.failed
            elif i in failed:
                assert reply.done()
                with pytest.raises(ValueError, match=f"^{i}$"):
                    reply.result(0)
            else:
                assert reply.done()
                assert reply.result(0) == i
        # every credit is back
        chan = world.sender.outbound[ACTOR]
        assert chan.ring.in_flight() == 0
        assert chan.credit() == window
    finally:
        world.close()


@pytest.mark.parametrize("timed", [False, True], ids=["run_tells", "pump"])
def test_plain_tells_travel_bare_and_a_crash_among_them_is_redelivered(timed: bool) -> None:
    """A burst of plain tells is one record of the told messages themselves, (OP_TELL,
    messages), not wire tuples; a crash in its sixth handler blames that message, which
    is delivered again, and the rest of the burst follows it in order. Both loops that
    handle such a record do so: ``run_tells``, and ``pump``'s own when the actor stamps
    each message's start (a hang timeout: ``C_SINCE``, which run_tells never sets)."""
    world = World(64, {5: "handler"}, timed=timed)
    try:
        for i in range(10):
            world.ref.tell(("m", i))
        chan = world.sender.outbound[ACTOR]
        assert chan.bare
        assert chan.outbox == [("m", i) for i in range(10)]
        world.sender.flush_dirty()
        assert not chan.bare
        assert not chan.outbox
        inbound = world.actor.inbound[0]  # type: ignore[union-attr]
        rec = inbound.ring.read_at(inbound.cursor)
        assert rec is not None
        try:
            assert marshal.loads(rec.payload) == (OP_TELL, tuple(("m", i) for i in range(10)))
        finally:
            rec.payload.release()
        world.run_actor()
        assert world.log == list(range(10))
        assert world.crashes == [("busy", None)]
        assert chan.ring.in_flight() == 0
        assert bool(world.cell.ctl.slots[C_SINCE]) == timed  # which loop handled them
    finally:
        world.close()


def test_a_call_after_bare_tells_wraps_them_and_keeps_the_order() -> None:
    """Tells, then a call, then a tell to the same busy actor in one burst: the bare
    tells are put back in their wire tuples before the call joins them; all arrive in
    order."""
    world = World(64, {})
    try:
        world.ref.tell(("m", 0))
        world.sender.flush_dirty()  # in flight: the call below waits for the burst
        world.ref.tell(("m", 1))
        world.ref.tell(("m", 2))
        chan = world.sender.outbound[ACTOR]
        assert chan.bare
        reply = world.ref.call("work", ("m", 3))
        world.ref.tell(("m", 4))
        assert not chan.bare
        assert [m[0] for m in chan.outbox] == [OP_TELL, OP_TELL, OP_CALL, OP_TELL]
        world.sender.flush_dirty()
        world.run_actor()
        world.replies()
        assert world.log == [0, 1, 2, 3, 4]
        assert reply.result(0) == 3
    finally:
        world.close()


def test_threads_telling_at_once_spend_the_window_exactly() -> None:
    """Three threads tell_nowait into one window at once (thread switches forced every
    microsecond): the credit set aside for a burst (``OutChannel.reserve``) is shared,
    so exactly ``window`` tells are taken, the rest raise Backpressure, each thread's
    tells arrive in its order, and every credit comes back."""
    window = 50  # below a burst (outbox_messages=64): the window, not the burst, binds
    world = World(window, {})
    taken: dict[int, list[int]] = {k: [] for k in range(3)}
    refused = [0]

    def produce(k: int) -> None:
        for i in range(100):
            try:
                world.ref.tell_nowait(("m", k * 1000 + i))  # plain data: the fast path
            except Backpressure:
                refused[0] += 1
            else:
                taken[k].append(i)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        sys.setswitchinterval(switch)
    try:
        assert sum(len(v) for v in taken.values()) == window
        assert refused[0] == 300 - window
        world.sender.flush_dirty()
        world.run_actor()
        for k, sent in taken.items():
            assert [i % 1000 for i in world.log if i // 1000 == k] == sent
        chan = world.sender.outbound[ACTOR]
        assert chan.ring.in_flight() == 0
        assert chan.credit() == window
        world.ref.tell_nowait(("m", 3000))  # the credit is usable again
    finally:
        world.close()


def test_a_long_tuple_of_scalars_told_in_a_burst_arrives_whole() -> None:
    """Plain data has no length bound: a told tuple of 20,000 ints among small tells is
    marshalled with them, found too big for the ring (64 KiB here), and pickled with a
    spill segment instead; every message arrives, in order, the long one whole."""
    world = World(64, {})
    try:
        long = ("m", 1, *range(20_000))
        world.ref.tell(("m", 0))
        world.ref.tell(long)
        world.ref.tell(("m", 2))
        got: list[Any] = []
        world.actor.host.handlers["receive"] = got.append  # type: ignore[union-attr]
        world.sender.flush_dirty()
        world.run_actor()
        assert got == [("m", 0), long, ("m", 2)]
        assert world.sender.outbound[ACTOR].ring.in_flight() == 0
    finally:
        world.close()


def test_flushes_racing_the_fast_path_lose_nothing() -> None:
    """Two threads tell while a third flushes the outbox over and over and a fourth
    handles what arrives (thread switches forced every microsecond): a flush that ends a
    burst's reservation while a teller holds a ticket but has not appended yet waits for
    it (``OutChannel.settle``), so every message arrives once, each thread's in its
    order, and every credit comes back."""
    window, count = 2000, 5000
    world = World(window, {})
    done = threading.Event()

    def produce(k: int) -> None:
        for i in range(count):
            world.ref.tell(("m", k * count + i))  # plain data: the fast path

    def flush() -> None:  # as the loop thread does, between the tellers' own flushes
        while not done.wait(0.00002):
            world.sender.flush_dirty(wait=False)
            world.sender.flush_dirty()

    def consume() -> None:
        while not done.is_set() or world.actor.has_unread():  # type: ignore[union-attr]
            world.run_actor()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        helpers = [threading.Thread(target=flush), threading.Thread(target=consume)]
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        for t in [*helpers, *threads]:
            t.start()
        for t in threads:
            t.join(timeout=120)
        world.sender.flush_dirty()
        done.set()
        for t in helpers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in [*threads, *helpers])
    finally:
        sys.setswitchinterval(switch)
    try:
        world.run_actor()
        for k in range(2):
            assert [i % count for i in world.log if i // count == k] == list(range(count))
        assert len(world.log) == 2 * count
        chan = world.sender.outbound[ACTOR]
        assert chan.ring.in_flight() == 0
        assert chan.credit() == window
    finally:
        world.close()


def test_a_flush_waits_for_a_teller_between_its_ticket_and_its_append() -> None:
    """A teller that took its ticket (``next(chan.tickets)``, as ``bind_tell``'s fast
    path does) and has not appended yet, when another thread flushes: the flush ends the
    reservation, waits for the append (``OutChannel.settle``), and sends it in its place.
    A ticket whose append never comes (its tell was interrupted) is given back after
    ``SETTLE_CPU``: its credit returns, and a late append goes nowhere."""
    world = World(64, {})
    try:
        chan = world.sender.outbound[ACTOR]
        for i in range(3):
            world.ref.tell(("m", i))  # the first goes the slow path and sets credit aside
        box = next(chan.tickets)  # the fourth tell, caught between its two steps
        flusher = threading.Thread(target=world.sender.flush_dirty)
        flusher.start()
        wait_until(lambda: chan.room == 0, timeout=30)  # the reservation is over...
        assert flusher.is_alive()  # ...and the flush waits for the append
        box.append(("m", 3))
        flusher.join(timeout=30)
        assert not flusher.is_alive()
        assert not chan.outbox
        world.run_actor()
        assert world.log == [0, 1, 2, 3]

        world.ref.tell(("m", 4))
        box = next(chan.tickets)  # this one never appends
        assert world.sender.flush_dirty()  # after SETTLE_CPU
        box.append(("m", 5))  # too late: nobody reads that list any more
        world.run_actor()
        assert world.log == [0, 1, 2, 3, 4]
        assert chan.ring.in_flight() == 0
        assert chan.credit() == 64
    finally:
        world.close()
