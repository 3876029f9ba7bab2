"""Doorbells: when a producer rings a consumer, and the reader mark of a spinning caller.

Real shared memory and a real eventfd for the rule itself; a real actor system for the
hand-off of a reply that the spinning caller marked but could not read.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import actorq
from actorq._core.parking import BUSY_BACKOFF, IDLE_BACKOFF
from actorq._core.protocol import C_HELD, C_HELD_RUNG, C_WATCH_MS
from actorq._ids import new_run_prefix
from actorq._runtime.systemhub import SystemHub
from actorq._transport.channel import C_PARKED, C_WAKEUPS, CTL_SIZE, ControlBlock, OutChannel
from actorq._transport.ring import H_READER, H_TAIL, READER_EXPECTED, READER_SPINNING, Ring
from actorq._transport.shm import Segment
from actorq.testing import wait_until


def _rang(efd: int) -> bool:
    try:
        os.eventfd_read(efd)
    except BlockingIOError:
        return False
    return True


def test_a_parked_consumer_is_rung_once_per_park_and_not_for_a_ring_it_reads() -> None:
    prefix = new_run_prefix()
    ring_seg = Segment.create(prefix + "r", Ring.size_for(4096))
    ctl_seg = Segment.create(prefix + "c", CTL_SIZE)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    consumer = Ring(ring_seg.buf, init=True)
    ctl = ControlBlock(ctl_seg)
    chan = OutChannel(1, Segment.attach(ring_seg.name),
                      ControlBlock(Segment.attach(ctl_seg.name)), efd, 64)
    try:
        def publish() -> None:
            assert chan.ring.try_write(b"message", 1)
            chan.ring_doorbell()

        publish()
        assert not _rang(efd)  # awake: it will find the record by itself
        ctl.slots[C_PARKED] = 1
        publish()
        assert _rang(efd)
        publish()
        assert not _rang(efd)  # once per park
        ctl.slots[C_PARKED] = 3  # parked again
        consumer.hdr[H_READER] = 1  # one of its threads spins on this very ring
        publish()
        assert not _rang(efd)
        consumer.hdr[H_READER] = 0
        publish()
        assert _rang(efd)
        ctl.slots[C_PARKED] = 5
        consumer.hdr[H_READER] = READER_EXPECTED  # a caller said it would come: not there yet
        publish()
        assert _rang(efd)  # the rule rings; holding it back is the replying actor's choice
    finally:
        consumer.release()
        ctl.close()
        chan.close()
        chan.ctl.close()
        os.close(efd)
        for seg in (ring_seg, ctl_seg):
            seg.unlink()


class Echo(actorq.Actor):
    def echo(self, x):
        return x

    def slow_echo(self, x):
        import time

        time.sleep(0.02)  # replies while the caller still spins (spin_seconds x 4 = 0.2 s)
        return x


def test_a_reply_the_spinning_caller_marked_but_could_not_read_still_arrives() -> None:
    # The branch under test (_stop_spinning): the caller's spin ends with the reply
    # unread while someone else holds the drain lock, so it rings the loop's doorbell.
    with actorq.ActorSystem(call_timeout=20.0, spin_seconds=0.25) as s:
        ref = s.spawn(Echo)
        assert ref.echo(0).result() == 0
        hub = s._runtime.hub
        ring = hub.inbound[ref.actor_id].ring
        chan = hub.inbound[ref.actor_id]
        got: list[int] = []
        hub.drain_lock.acquire()  # nobody reads now: not the caller, not the hub thread
        try:
            wakeups = hub.ctl.slots[C_WAKEUPS]
            caller = threading.Thread(target=lambda: got.append(ref.echo(7).result()))
            caller.start()
            # The actor publishes the reply while the caller's mark is up: no doorbell.
            wait_until(lambda: ring.hdr[H_TAIL] != chan.cursor and hub.ring_spinners,
                       timeout=20, message="the reply published while the caller spins")
            # The caller gives up spinning, clears its mark with the reply unread, cannot
            # take the drain lock, and rings the loop's doorbell (the loop then waits for
            # the lock): only that branch can wake the loop now.
            wait_until(lambda: not hub.ring_spinners and ring.hdr[H_READER] == 0
                       and hub.ctl.slots[C_WAKEUPS] > wakeups, timeout=20,
                       message="the stranded reply handed on to the loop")
            assert ring.hdr[H_TAIL] != chan.cursor  # still unread
        finally:
            hub.drain_lock.release()
        caller.join(20)
        assert got == [7]
        assert s.metrics()["system"]["lost_wakeups"] == 0  # handed on, not found late


@pytest.mark.parametrize("n", [1, 50])
def test_no_reader_mark_is_left_behind(n: int) -> None:
    with actorq.ActorSystem() as s:
        refs = [s.spawn(Echo) for _ in range(2)]
        for i in range(n):
            assert refs[i % 2].echo(i).result() == i
        for ref in refs:
            assert s._runtime.hub.inbound[ref.actor_id].ring.hdr[H_READER] == 0
        assert s._runtime.hub.ring_spinners == []


def _harness(make_sender: Any = None) -> Any:
    """The in-process pair of hubs of benchmarks/msgpath_harness.py (real rings, one
    thread): the order of the two sides' steps is the test's to choose. *make_sender*:
    the user's side hub (``Harness``)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "msgpath_harness.py"
    spec = importlib.util.spec_from_file_location("msgpath_harness", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Harness(make_sender)


def test_a_death_and_a_spinner_that_stopped_read_the_ring_to_its_end() -> None:
    # SystemHub.read_to_end, from its two callers: drain_from (an actor died: what it
    # published is read before its crash is attributed) and _stop_spinning (a caller's
    # spin ended with records nobody rang for). Each reads every record on the ring,
    # and nothing once the ring is no longer the hub's.
    h = _harness(lambda prefix, config, ctl, efd: SystemHub(prefix, config, ctl, efd,
                                                            lambda _actor: None))
    try:
        hub, actor = h.sender, h.receiver
        back = hub.inbound[1]  # the ring replies come on
        h.calls(1)  # the first call refreshes the sender's credit (the general path)

        def answered(first: int) -> list[Any]:
            replies = [h.ref.echo(i) for i in range(first, first + 3)]
            hub.flush_dirty()
            actor.drain()
            actor.pump()
            actor.flush_dirty()
            assert back.ring.hdr[H_TAIL] != back.cursor  # published, unread
            assert not any(r.done() for r in replies)
            return replies

        replies = answered(10)
        hub.drain_from(1)
        assert [r.result(0) for r in replies] == [10, 11, 12]
        assert back.ring.hdr[H_TAIL] == back.cursor

        replies = answered(20)
        back.ring.hdr[H_READER] = READER_SPINNING  # as wait_spin leaves it, one spinner
        hub.ring_spinners.append(1)
        hub._stop_spinning(back, 1)
        assert [r.result(0) for r in replies] == [20, 21, 22]
        assert back.ring.hdr[H_READER] == 0
        assert hub.ring_spinners == []

        replies = answered(30)  # the actor is removed: its ring is read by nobody here
        del hub.inbound[1]
        try:
            hub.drain_from(1)
            back.ring.hdr[H_READER] = READER_SPINNING
            hub.ring_spinners.append(1)
            hub._stop_spinning(back, 1)
            assert not any(r.done() for r in replies)
            assert back.ring.hdr[H_TAIL] != back.cursor
        finally:
            hub.inbound[1] = back
    finally:
        h.close()


def test_a_held_reply_doorbell_rings_only_if_its_caller_does_not_read_it_first() -> None:
    # Issue 15, the round-trip tail: a synchronous caller says, before its lone call goes
    # out, that it will spin on the reply's ring (READER_EXPECTED). An actor that answers
    # before the caller got there holds the reply's doorbell back: the caller reads the
    # reply itself, and its loop thread is not woken (only to wait for the spinning
    # caller's GIL). Rung after all when the caller does not come within the grace, or
    # before the actor handles anything else.
    h = _harness()
    try:
        sender, actor = h.sender, h.receiver
        sender.expects_readers = True  # as the user's process (SystemHub)
        back = sender.inbound[1]  # the ring replies come on
        efd = h.efds[0]  # the caller's doorbell
        slots = actor.ctl.slots

        def answer(i: int) -> Any:
            sender.ctl.slots[C_PARKED] += 2  # the caller's loop thread: parked anew
            reply = h.ref.echo(i)
            assert back.ring.hdr[H_READER] == READER_EXPECTED  # said before it went out
            actor.drain()  # the actor answers at once: before the caller spins
            assert actor.held is not None
            assert not _rang(efd)
            return reply

        h.calls(1)  # the first call refreshes the sender's credit (the general path)
        sender.ctl.slots[C_PARKED] = 1
        # 1. The caller comes and reads the reply: nothing is rung.
        reply = answer(1)
        sender._take_record(back, back.read_next(), 0.0)
        assert reply.result() == 1
        assert back.ring.hdr[H_READER] == 0
        assert not actor.spin()  # nothing more comes; the actor sees the reply was read
        assert actor.held is None
        assert not _rang(efd)
        assert (slots[C_HELD], slots[C_HELD_RUNG]) == (1, 0)
        # 2. The caller does not come: rung once the grace has passed.
        reply = answer(2)
        assert not actor.spin()
        assert actor.held is None
        assert _rang(efd)
        assert (slots[C_HELD], slots[C_HELD_RUNG]) == (2, 1)
        sender._take_record(back, back.read_next(), 0.0)
        assert reply.result() == 2
        # 3. Something else comes first: rung before its handler runs.
        reply = answer(3)
        h.ref.tell("next")
        sender.flush_dirty()
        actor.drain()
        actor.pump()
        assert h.sink.received == 1
        assert actor.held is None
        assert _rang(efd)
        assert (slots[C_HELD], slots[C_HELD_RUNG]) == (3, 2)
        sender._take_record(back, back.read_next(), 0.0)
        assert reply.result() == 3
    finally:
        h.close()


def test_a_held_reply_its_caller_read_is_seen_read_by_an_actor_back_after_the_grace() -> None:
    # An actor switched out between writing a held reply and its next spin comes back
    # after the grace ran out: the caller has read the reply meanwhile, so nothing is
    # rung, and the actor spins on for the next call (it used to see only the clock,
    # ring nothing, and stop spinning: the next call then had to wake it).
    h = _harness()
    try:
        sender, actor = h.sender, h.receiver
        sender.expects_readers = True
        back = sender.inbound[1]
        efd = h.efds[0]
        h.calls(1)  # the first call refreshes the sender's credit (the general path)
        sender.ctl.slots[C_PARKED] = 1  # the caller's loop thread is parked
        reply = h.ref.echo(1)
        actor.drain()
        assert actor.held is not None
        sender._take_record(back, back.read_next(), 0.0)  # the caller reads it
        assert reply.result() == 1
        chan, past, _due = actor.held
        actor.held = (chan, past, 0.0)  # its grace long over
        assert actor.wait_for_reader(float("inf"), None, time.perf_counter())
        assert actor.held is None
        assert not _rang(efd)
        assert actor.ctl.slots[C_HELD_RUNG] == 0
    finally:
        h.close()


def test_a_lone_sync_call_leaves_no_hint_behind() -> None:
    with actorq.ActorSystem() as s:
        ref = s.spawn(Echo)
        for i in range(50):
            assert ref.echo(i).result() == i
        assert s._runtime.hub.inbound[ref.actor_id].ring.hdr[H_READER] == 0
        assert s.metrics()["system"]["lost_wakeups"] == 0


def test_a_held_doorbell_is_rung_when_the_caller_does_not_come_to_read() -> None:
    # actorq.wait() sleeps until the loop thread delivers: the reply the actor held back
    # for it must be rung after all (else only the watchdog would find it, late).
    with actorq.ActorSystem(call_timeout=20.0) as s:
        ref = s.spawn(Echo)
        assert ref.echo(0).result() == 0
        slots = s._runtime._cells[ref.actor_id].ctl.slots
        held, rung = slots[C_HELD], slots[C_HELD_RUNG]
        for i in range(3):
            done, pending = actorq.wait([ref.echo(i)], timeout=20)
            assert not pending
            assert [r.result() for r in done] == [i]
        assert slots[C_HELD] - held == 3
        assert slots[C_HELD_RUNG] - rung >= 1  # nobody came: rung (unless a timer read it)
        assert s.metrics()["system"]["lost_wakeups"] == 0


def test_an_awaited_calls_reply_is_not_held() -> None:
    # A caller on an event loop awaits; nobody spins: its reply rings at once.
    with actorq.ActorSystem() as s:
        ref = s.spawn(Echo)
        assert ref.echo(0).result() == 0
        slots = s._runtime._cells[ref.actor_id].ctl.slots
        held = slots[C_HELD]

        async def main() -> list[int]:
            return [await ref.echo(i) for i in range(5)]

        assert asyncio.run(main()) == list(range(5))
        assert slots[C_HELD] == held


def test_a_lost_wake_up_is_counted_by_the_watchdog_and_served() -> None:
    # The `lost_wakeups == 0` asserts elsewhere mean something only if the watchdog
    # counts one when it happens: lose a doorbell on purpose and watch it recover.
    with actorq.ActorSystem(call_timeout=20.0, park_timeout=0.05) as s:
        ref = s.spawn(Echo)
        assert ref.echo(0).result() == 0
        cell = s._runtime._cells[ref.actor_id]
        wait_until(lambda: cell.ctl.slots[C_PARKED] & 1, timeout=20)  # idle and parked
        chan = s._runtime.hub.outbound[ref.actor_id]
        # as if this park had been rung already and the ring got lost: no doorbell now
        chan.last_rung = cell.ctl.slots[C_PARKED]
        assert ref.echo(1).result(timeout=20) == 1  # the watchdog found it and served it
        assert s.metrics()["actors"][ref.name]["lost_wakeups"] == 1
        assert ref.echo(2).result() == 2  # the next park is rung as usual
        assert s.metrics()["actors"][ref.name]["lost_wakeups"] == 1


def test_an_idle_actors_watchdog_stops_and_the_systems_sweep_still_finds_a_lost_wake_up(
        ) -> None:
    # An idle actor's watchdog looks less and less often, then stops (1000 idle actors
    # otherwise woke 100 times a second); the system's idle sweep watches it from then
    # on: a lost wake-up must still be found, counted and served.
    base = 0.01
    with actorq.ActorSystem(call_timeout=20.0, park_timeout=base) as s:
        ref = s.spawn(Echo)
        assert ref.echo(0).result() == 0
        cell = s._runtime._cells[ref.actor_id]
        slots = cell.ctl.slots
        longest = round(base * IDLE_BACKOFF * 1e3)
        wait_until(lambda: slots[C_WATCH_MS] >= longest // 2, timeout=20,
                   message="the idle actor's watchdog backed off")
        wait_until(lambda: slots[C_WATCH_MS] == 0 and slots[C_PARKED] & 1, timeout=20,
                   message="the idle actor's watchdog stopped")
        sweep = s._runtime._idle
        asked, passes = sweep.asked, sweep.passes
        chan = s._runtime.hub.outbound[ref.actor_id]
        chan.last_rung = slots[C_PARKED]  # this park's doorbell "was rung" and got lost
        assert ref.echo(1).result(timeout=20) == 1  # found: the sweep asked it to look
        assert s.metrics()["actors"][ref.name]["lost_wakeups"] == 1
        assert sweep.asked == asked + 1
        assert sweep.passes > passes
        for i in range(2, 20):  # and rung as usual afterwards
            assert ref.echo(i).result() == i
        assert s.metrics()["actors"][ref.name]["lost_wakeups"] == 1
        assert sweep.asked == asked + 1


def test_the_systems_watchdog_looks_less_often_while_replies_wake_it() -> None:
    # Every wake-up of the system's hub reads every ring, so while replies wake it its
    # watchdog backs off (a timer wake-up of the loop thread less, each time); once
    # they stop it is back to its idle pace, and lost wake-ups are still none.
    base = 0.05
    with actorq.ActorSystem(call_timeout=20.0, park_timeout=base) as s:
        hub = s._runtime.hub
        graph = actorq.Graph()
        for _ in range(600):  # >= 1.5 s of 5 ms tasks on two workers: replies flow
            graph.task(time.sleep, 0.005)
        seen: list[float] = []
        done = threading.Event()

        def run() -> None:
            try:
                s.run(graph, workers=2)
            finally:
                done.set()

        runner = threading.Thread(target=run)
        runner.start()
        while not done.is_set():
            if hub.watch_busy:
                seen.append(hub.watch_interval)
            done.wait(0.002)
        runner.join()
        assert seen, "the watchdog never backed off while replies came"
        assert max(seen) == pytest.approx(base * BUSY_BACKOFF)
        wait_until(lambda: not hub.watch_busy, timeout=20,
                   message="the watchdog left its busy pace once replies stopped")
        assert s.metrics()["system"]["lost_wakeups"] == 0
