"""Channels: a ring, a doorbell and a credit window for one (sender process, receiver) pair.

Data flow (one direction; replies use the reverse channel)::

    producer thread(s) ──append──▶ outbox (list of message tuples, credit spent per message)
         │  flush: once per loop iteration, at a size bound, or before a sync wait
         ▼
    pickle the whole burst as ONE record (protocol 5; big buffers out of band)
         │  record > half the ring  → spill segment, the ring carries its name
         ▼
    Ring.try_write ──▶ publish tail ──▶ fence ──▶ receiver parked? ring its eventfd once
                                                          │
    receiver: eventfd readable (or spinning) ──▶ read records ahead of head ──▶ handle
              ──▶ commit head, count handled (the credit comes back to the producer)

Every consumer (process) has a :class:`ControlBlock`: its parked flag (a sequence number,
odd while parked, so that each producer rings at most once per park) and the slot where
an actor records the message it is handling (crash attribution).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from actorq import _native
from actorq._transport.credit import CreditGate
from actorq._transport.oob import run_after_commit
from actorq._transport.ring import (
    H_BACKPRESSURE,
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_HEAD,
    H_READER,
    H_WAIT_NS,
    H_WAITING,
    H_WAITS,
    H_WANT,
    READER_SPINNING,
    Record,
    Ring,
)
from actorq._transport.shm import Segment

logger = logging.getLogger(__name__)

CTL_SIZE = 4096
# ControlBlock u64 slots of the transport (64-byte lines; the consumer writes them). The
# actor kernel's slots (crash attribution, stop) are in actorq/_core/protocol.py.
C_PARKED = 0  # odd: parked (waiting on its eventfd); producers ring once per value
C_WAKEUPS = 16  # doorbell wake-ups
C_LOST = 17  # park timeouts that found data: lost wake-ups, must stay 0
C_WINDOW = 19  # the receiver's adaptive credit window (0: not adaptive, use the sender's)

# The tell fast path's tickets (``OutChannel.reserve``) count on the GIL: taking the
# rest of them at once (``unreserve``) is one C call that no other thread can enter.
# Without a GIL (free-threaded builds) no tickets are handed out: every tell takes the
# channel's lock.
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
# How much of its own CPU time the end of a reservation spends waiting for a teller
# that took a ticket and has not appended its message yet (``OutChannel.settle``). Such
# a teller waits for the GIL, which ``time.sleep(0)`` hands over, and appends within
# microseconds; only one that an exception interrupted between the two steps (its tell
# raised: a KeyboardInterrupt, say) never comes. CPU time, not wall time: a process
# stopped or starved meanwhile stops the clock too, so a live teller is never given up.
SETTLE_CPU = 0.25
NO_TICKETS: Any = iter(())  # an exhausted reservation: ``next(NO_TICKETS, None)`` is None

_fence_lock = threading.Lock()


def _fresh_fence_lock() -> None:
    """In a child made by fork: a parent thread may have been inside ``fence()`` at the
    moment of the fork, and the child would inherit the lock held and hang at its first
    fence. Only the forking thread exists in the child, so a fresh lock is right."""
    global _fence_lock
    _fence_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_fence_lock)


def _fence_by_lock() -> None:
    """``fence`` without the C helpers: a lock taken and released is a locked
    instruction on x86-64 (≈ 140 ns, ≈ 900 instructions through the interpreter)."""
    _fence_lock.acquire()
    _fence_lock.release()


# fence(): a full memory barrier (docs/internals.md). The park handshake is store→load
# on both sides (producer: store tail, load parked; consumer: store parked, load tail);
# x86 may reorder a store with a later load, and without this a wake-up is lost about 1%
# of the time. In C (actorq._native) it is one fenced instruction.
fence: Callable[[], None] = _native.fence or _fence_by_lock


class ControlBlock:
    """A consumer's control block, viewed from any process."""

    __slots__ = ("seg", "slots")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.slots = _native.u64_array(seg.buf[:CTL_SIZE])  # (see ``Ring.hdr``)

    def close(self) -> None:
        """Release the view and unmap (this handle only)."""
        self.slots.release()
        self.seg.close()


class SegmentNamer:
    """Hands out unique segment names under a run prefix, for one process."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._seq = itertools.count()
        self._pid = os.getpid()

    def __call__(self, kind: str) -> str:
        """Return a fresh name for a segment of *kind* (``r`` ring, ``o`` oob, ...)."""
        return f"{self.prefix}{kind}{self._pid}_{next(self._seq)}"


# -- producer side -----------------------------------------------------------------------


class OutChannel:
    """The producer end of one channel, shared by the threads of one process.

    ``lock`` guards the outbox and the ring's producer side: several threads of one
    process (the user's and the hub loop) may send to the same actor, and a lock inside a
    process cannot be left held by a dead peer.
    """

    __slots__ = (
        "bare",
        "closed",
        "credits",
        "ctl",
        "efd",
        "encoded",
        "encoded_count",
        "fast_from",
        "flush_scheduled",
        "gate",
        "last_rung",
        "lock",
        "outbox",
        "plain",
        "ring",
        "room",
        "seen",
        "seg",
        "target_id",
        "tickets",
        "window",
    )

    def __init__(self, target_id: int, seg: Segment, ctl: ControlBlock, efd: int, window: int):
        self.target_id = target_id
        self.seg = seg
        self.ring = Ring(seg.buf)
        self.ctl = ctl
        self.efd = efd
        self.window = window
        self.lock = threading.Lock()
        self.outbox: list[Any] = []
        # how many of the outbox's messages are known to be plain data (scalars, small
        # tuples of them): all of them, and the burst is marshalled, not pickled. Only
        # appends that know add to it; whoever empties the outbox zeroes it.
        self.plain = 0
        # True: the outbox holds told messages only, bare (not in their wire tuples): a
        # burst of tells is marshalled as (op, messages) (``Hub.encode``). Whoever appends
        # anything else first wraps them (``Hub.wrap_bare``); whoever empties it clears it.
        self.bare = False
        self.seen = 0  # outbox length at the owner loop's last settling look (Hub.flush_dirty)
        self.encoded: deque[tuple[bytes, int]] = deque()  # encoded, not yet written (ring full)
        self.encoded_count = 0
        self.flush_scheduled = False
        self.last_rung = 0
        self.credits = 0  # a lower bound of credit(), spent locally, refreshed at 0
        # Credit set aside for a burst of bare tells (``reserve``): ``room`` tickets, each
        # the outbox itself, that ``Hub.bind_tell``'s fast path takes one at a time
        # (``next(tickets, None)``) and appends a plain message to, touching nothing
        # else; ``fast_from`` is the outbox's length when the reservation began.
        self.room = 0
        self.fast_from = 0
        self.tickets: Any = NO_TICKETS
        self.gate = CreditGate(window)
        self.closed = False

    def reserve(self, limit: int) -> None:
        """Set credit aside for the fast path's tells: up to *limit* messages in the outbox.

        Caller holds ``lock``; the outbox is a burst of bare tells (``bare``) and nothing
        is reserved yet (``unreserve``). The credit moves from ``credits`` to ``room``
        tickets: every message still spends one, and a producer that finds none left
        takes the slow path (``Hub.send``), which gives back what is unused first, so
        that it sees exactly the credit it would have seen without the reservation.

        A ticket is the outbox list itself: taking one (``next``) and appending to it are
        two steps without the lock (the fast path costs a fifth of a locked one: the
        lock's acquire parses its arguments; benchmarks/msgpath_harness.py), so whoever
        ends the reservation waits for a teller caught between the two (``settle``).
        """
        size = len(self.outbox)
        take = min(self.credits, limit - size)
        if take > 0 and GIL:
            self.credits -= take
            self.room = take
            self.fast_from = size
            self.tickets = iter([self.outbox] * take)

    def unreserve(self) -> None:
        """End the reservation (caller holds ``lock``): the unused credit goes back to
        ``credits``, and the tells appended with the tickets taken (plain data, all of
        them) are counted in ``plain``. Before anything else changes the outbox: it
        returns once every ticket taken has its message in the outbox (``settle``)."""
        if self.room:
            # one C call under the GIL: the tickets left are taken at once, none after
            left = len([*self.tickets])
            self.tickets = NO_TICKETS
            taken = self.room - left
            self.room = 0
            self.credits += left
            self.plain += taken
            owed = self.fast_from + taken
            if len(self.outbox) < owed:
                self.settle(owed)

    def settle(self, owed: int) -> None:
        """Wait until the outbox holds *owed* messages: a teller of another thread took a
        ticket and waits for the GIL to append (caller holds ``lock``)."""
        give_up = time.thread_time() + SETTLE_CPU
        while len(self.outbox) < owed:
            if time.thread_time() > give_up:
                # interrupted between its ticket and its append (its tell raised, or a
                # signal handler of its own thread is the one waiting here): its credit
                # comes back, and a late append goes to a list nobody reads
                missing = owed - len(self.outbox)
                self.credits += missing
                self.plain -= missing
                self.outbox = list(self.outbox)
                logger.warning("%d told message(s) to actor %d never reached the outbox "
                               "(their tell was interrupted)", missing, self.target_id)
                return
            time.sleep(0)  # hand the GIL over: the waiting teller appends

    def limit(self) -> int:
        """The window now: ours, or the receiver's adaptive one if that is smaller."""
        adaptive = self.ctl.slots[C_WINDOW]
        return min(self.window, adaptive) if adaptive else self.window

    def credit(self) -> int:
        """Messages this process may still send before the receiver handles some.

        Reads the receiver's ``handled`` counter from shared memory: the credit return.
        Senders cache a lower bound of it in ``credits`` and call this only at zero
        (after ending any reservation, ``unreserve``: its unused credit is not counted).
        """
        queued = len(self.outbox) + self.encoded_count
        return self.gate.free(self.ring.in_flight(), queued, self.limit())

    def set_want(self, want: bool) -> None:
        """Ask the receiver to ring our doorbell when it hands credit back (or stop)."""
        hdr = self.ring.hdr
        # A new value each time we (re)arm: the receiver rings once per value, not once
        # per commit (an eventfd write costs ~4 us here).
        hdr[H_WANT] = hdr[H_WANT] + 1 if want else 0
        gate = self.gate
        hdr[H_WAITING] = gate.waiting
        hdr[H_WAITS] = gate.waits
        hdr[H_WAIT_NS] = int(gate.wait_seconds * 1e9)
        hdr[H_BACKPRESSURE] = gate.backpressure

    def flush_locked(self, encode: Any) -> bool:
        """Write the outbox as record(s); True if everything reached the ring.

        Caller holds ``lock``. *encode* turns a list of messages (whether all of them are
        plain data, and whether they are bare told messages: ``bare``) into a payload and
        the number of messages it holds (fewer if some could not be pickled). What does
        not fit stays encoded, in order, for the next flush.
        """
        if self.outbox:
            self.unreserve()
            msgs, self.outbox = self.outbox, []
            plain = self.plain == len(msgs)
            bare, self.plain, self.bare = self.bare, 0, False
            payload, count = encode(msgs, plain, bare)
            if count:
                self.encoded.append((payload, count))
                self.encoded_count += count
        wrote = False
        while self.encoded:
            payload, count = self.encoded[0]
            if not self.ring.try_write(payload, count):
                break
            self.encoded.popleft()
            self.encoded_count -= count
            wrote = True
        if wrote:
            self.ring_doorbell()
        return not self.encoded

    def ring_doorbell(self) -> None:
        """Wake the receiver if it is parked (at most once per park), unless one of its
        threads is spinning on this very ring (it reads the record itself)."""
        fence()
        self.ring_if_parked()

    def ring_if_parked(self) -> None:
        """``ring_doorbell`` without its fence: the caller has one between the tail it
        stored and this (it released a lock since: a ``threading.Lock`` release is a
        locked instruction, a full fence on x86-64, as ``fence()`` is; docs/internals.md).
        Safe without ``lock`` held: two threads may then both ring one park (a spare
        wake-up), never neither."""
        parked = self.ctl.slots[C_PARKED]
        if parked & 1 and parked != self.last_rung and (
                self.ring.hdr[H_READER] != READER_SPINNING):
            self.last_rung = parked
            os.eventfd_write(self.efd, 1)

    def close(self) -> None:
        """Release views and unmap (the segment itself is the system's to unlink)."""
        self.ring.release()
        self.seg.close()


# -- consumer side -----------------------------------------------------------------------


class InChannel:
    """The consumer end of one channel: reads ahead of ``head``, commits in order.

    ``open_records`` holds an :class:`OpenRecord` for each record read but not yet
    committed. Replies are handled as soon as they are read, calls in order; what is
    written to the ring's progress slot is the length of the handled *prefix*, so a
    successor skips exactly what was done and re-reads at worst a reply (whose token
    it does not know, and drops).
    """

    __slots__ = ("cursor", "last_want", "open_records", "producer_efd", "ring", "seg",
                 "sender_id")

    def __init__(self, sender_id: int, seg: Segment, producer_efd: int = -1) -> None:
        self.sender_id = sender_id
        self.seg = seg
        self.producer_efd = producer_efd
        self.last_want = 0
        self.ring = Ring(seg.buf)
        self.cursor = self.ring.head()
        self.open_records: deque[OpenRecord] = deque()

    def read_next(self) -> Record | None:
        """Return the next unread record, or None (written out, bounded by a tail just
        read, where a record is read per message: ``Hub.drain``, ``SystemHub.wait_spin``)."""
        rec = self.ring.read_at(self.cursor)
        if rec is not None:
            self.cursor = rec.end
        return rec

    def open(self, rec: Record, unlink: list[str]) -> OpenRecord:
        """Track *rec* until committed; messages a predecessor handled count as done."""
        entry = OpenRecord(self, rec, unlink, self.ring.skip_count(rec.pos))
        self.open_records.append(entry)
        return entry

    def commit_ready(self) -> None:
        """Commit, in order, every leading record whose messages are all handled."""
        records = self.open_records
        committed = False
        while records and records[0].prefix >= records[0].rec.count:
            entry = records.popleft()
            self.ring.commit(entry.rec.end, entry.rec.count)
            committed = True
            if entry.unlink:
                run_after_commit(entry.unlink)
        if committed:
            if records and records[0].prefix:  # the new head's progress, kept till now
                records[0].publish()
            self.credit_returned()

    def commit_now(self, rec: Record, unlink: list[Any]) -> None:
        """Commit *rec*, handled as soon as read (no record may be open before it)."""
        hdr = self.ring.hdr  # Ring.commit, inlined: once per call and per reply
        hdr[H_HANDLED] += rec.count
        hdr[H_HEAD] = rec.end
        if unlink:
            run_after_commit(unlink)
        if self.producer_efd >= 0:  # (credit_returned's first look: a call less here)
            self.credit_returned()

    def credit_returned(self, fenced: bool = False) -> None:
        """Credit went back: ring the producer if it waits for some and asked to be rung.

        Store handled, then load want: the fence keeps the load after the store (none
        here if *fenced*: the caller took or released a lock since it stored). A
        channel with no producer doorbell (``producer_efd`` -1: its producer never waits
        for credit, like an actor sending replies to the system) has nobody to ring.
        """
        if self.producer_efd < 0:
            return
        if not fenced:
            fence()
        want = self.ring.hdr[H_WANT]
        if want and want != self.last_want:
            self.last_want = want
            os.eventfd_write(self.producer_efd, 1)

    def close(self) -> None:
        """Release views and unmap."""
        self.open_records.clear()
        self.ring.release()
        self.seg.close()


class OpenRecord:
    """A record read but not committed: which of its messages are handled.

    A receiver that queues the record's messages to be handled in order (an actor) keeps
    them here too: ``msgs``, and ``next``, the index of the first one not yet taken up
    (the queue holds records, not messages: nothing is built per message to queue it).
    """

    __slots__ = ("busy", "chan", "done", "hdr", "msgs", "next", "prefix", "queued", "rec",
                 "t_read", "tells", "unlink")

    def __init__(self, chan: InChannel, rec: Record, unlink: list[str], skip: int) -> None:
        self.chan = chan
        self.busy = chan.sender_id + 1  # the crash attribution slot's value, and the
        self.hdr = chan.ring.hdr  # ring header, looked up once per record, not per message
        self.rec = rec
        self.unlink = unlink
        self.prefix = skip
        self.done = [True] * skip + [False] * (rec.count - skip)
        self.t_read = 0.0  # perf_counter() when read (adaptive window samples)
        self.msgs: Sequence[Any] = ()  # a list, or a tuple (a marshalled burst)
        self.tells = False  # True: ``msgs`` are told messages, bare (not wire tuples)
        self.next = skip
        self.queued = 0  # messages counted in the receiver's backlog while queued

    def done_one(self, index: int) -> None:
        """Mark message *index* handled; publish progress or commit.

        Per message on the hot path, so ``Ring.mark_progress`` is inlined: ``cur_sub``
        first, then ``cur_rec`` (a crash in between re-delivers one message rather than
        skipping any). Only the head record (the first open one) publishes: the slots
        describe the record at the ring's head, and a later record whose reply was
        resolved early (read while a handler waited) must not overwrite them; it
        publishes once it becomes the head (``InChannel.commit_ready``).
        """
        done = self.done
        done[index] = True
        prefix = self.prefix
        if index != prefix:
            return  # handled out of order: the handled prefix did not move
        count = self.rec.count
        prefix += 1
        while prefix < count and done[prefix]:
            prefix += 1
        self.prefix = prefix
        if prefix < count:
            records = self.chan.open_records
            if not records or records[0] is self:
                self.publish()
        else:
            self.chan.commit_ready()

    def drop_all(self) -> None:
        """Count every message of this record as handled (it could not be decoded: they
        are dropped), so that it commits in its turn and its credit comes back."""
        count = self.rec.count
        self.done = [True] * count
        self.prefix = count
        self.chan.commit_ready()

    def publish(self) -> None:
        """Write this (head) record's handled prefix to the ring: ``cur_sub``, then
        ``cur_rec``."""
        hdr = self.hdr
        hdr[H_CUR_SUB] = self.prefix
        pos = self.rec.pos
        if hdr[H_CUR_REC] != pos:
            hdr[H_CUR_REC] = pos
