"""The hub of an actor process: runs the handlers of the one actor it holds.

``ActorHub`` is the ``Hub`` (``actorq._core.hub``) as an actor process uses it: it drains the
mailbox, runs handlers in order (``pump``), holds a lone call's reply doorbell for a caller
that spins on it, and opens channels through the system (``host.Host.request``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import marshal
import math
import operator
import os
import select
import socket
import time
from typing import Any, Protocol

from actorq._clock import Deadline
from actorq._core.hub import BadMessage, Hub
from actorq._core.protocol import (
    C_BUSY,
    C_HANDLED,
    C_HELD,
    C_HELD_RUNG,
    C_REPLY_TO,
    C_SEQ,
    C_SINCE,
    C_STOP,
    C_TOKEN,
    OP_CALL,
    OP_DCALL,
    OP_REPLY,
    OP_TELL,
    Boot,
    Ctl,
)
from actorq._core.ref import ActorRef
from actorq._core.reply import Reply
from actorq._errors import (
    ActorStopped,
    CallTimeout,
    format_remote,
    raised_at,
)
from actorq._serialization import SAFE_TYPES
from actorq._transport import control
from actorq._transport.aimd import AIMDWindow
from actorq._transport.channel import (
    C_WINDOW,
    ControlBlock,
    InChannel,
    OpenRecord,
    OutChannel,
)
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_HEAD,
    H_READER,
    H_TAIL,
    READER_EXPECTED,
    READER_SPINNING,
)
from actorq._transport.shm import Segment


class Host(Protocol):
    """What an ``ActorHub`` needs of the process that holds it (``host.Host``)."""

    ctrl: socket.socket
    handlers: dict[str, Any]
    name: str
    stopping: bool

    def describe(self) -> str: ...
    def run_batch(self) -> None: ...
    def poll_ctrl(self) -> None: ...
    def request(self, msg: tuple[Any, ...]) -> tuple[Any, list[int]]: ...

logger = logging.getLogger(__name__)

# Messages read ahead of the handler at most (replies are read regardless while a sync
# handler waits): more only moves the backlog from the ring into the heap.
READ_AHEAD = int(os.environ.get("ACTORQ_READ_AHEAD", 1024))

_marshal = marshal.dumps
_op_of = operator.itemgetter(0)  # a wire message's op

# Result types that are never awaitable (checked before the costlier inspect.isawaitable).
_PLAIN = frozenset({type(None), int, float, str, bytes, bool, tuple, list, dict, set,
                    frozenset, complex, bytearray})

# A busy actor returns to its loop at least this often (seconds).
TIME_SLICE = 0.01
# How long the reply to a lone call may hold back its doorbell (seconds) when its caller
# said it would spin on it (``READER_EXPECTED``): the caller comes within a few µs and
# reads it itself; rung unread after this (or before the actor does anything else).
REPLY_GRACE = 15e-6


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None



class ActorHub(Hub):
    """The hub of an actor process: runs handlers, and opens channels through the system."""

    may_deadlock = True
    idle_backoff = True
    swept = True  # the system's idle sweep (_runtime/idle.py) watches it once idle

    def __init__(self, host: Host, info: Boot, ctl: ControlBlock, efd: int):
        super().__init__(info.id, info.run_id, info.config, ctl, efd)
        self.host = host
        self.busy = False
        self.tell_errors: dict[tuple[str, str], int] = {}
        self.gap_ewma = 0.0  # recent idle stretches, seconds (adaptive spinning)
        self.parked_at = 0.0
        self.sync_depth = 0  # > 0 while sync user code runs (it may wait; async code may not)
        # (kernel token, deadline, call token, token prefix) of the last call that carried
        # them (OP_DCALL; deadline None or inf: none; a prefix: the call token is made of
        # it when read, ``call_token``)
        self.deadline: tuple[int, float | None, Any, str | None] = (0, 0.0, None, None)
        self.expired_drops = 0  # calls dropped unrun: their deadline passed while queued
        self.stamp_start = info.hang_timeout is not None  # hang detection is on
        # the lone call serve_alone is handling (its ring, record, unlink list), and its
        # entry once track_alone() had to open it
        self.alone: tuple[InChannel, Any, list[Any]] | None = None
        self.alone_entry: OpenRecord | None = None
        # a reply whose doorbell is held back for its caller (``hold_doorbell``): its
        # channel, the ring's tail just past it, and when to ring after all
        self.held: tuple[OutChannel, int, float] | None = None
        self.aimd: AIMDWindow | None = None
        target = info.window_target
        if target is not None:
            self.aimd = AIMDWindow(target=target, minimum=info.window_min,
                                   maximum=info.window_max or self.config.window,
                                   increase=info.window_step)

    def take_over(self) -> None:
        """Start where the dead predecessor stopped: read every inbound ring from its
        head (what was committed), and publish our window. Done at boot, not before: a
        spare prepared ahead (``Host.prepare``) must not touch what the live actor owns."""
        for chan in self.inbound.values():
            chan.cursor = chan.ring.head()
        self.ctl.slots[C_WINDOW] = self.aimd.window if self.aimd is not None else 0

    def release(self) -> None:
        """Unmap every ring and the control block, close the doorbells (a spare prepared
        for another actor than the one it boots as)."""
        fds = {self.efd}
        for chan in self.outbound.values():
            chan.close()
            chan.ctl.close()
            fds.add(chan.efd)
        for inchan in self.inbound.values():
            inchan.close()
            fds.add(inchan.producer_efd)
        self.outbound.clear()
        self.inbound.clear()
        self.ctl.close()
        for fd in fds - {-1}:
            try:
                os.close(fd)
            except OSError:
                pass

    # -- channels through the system ----------------------------------------------------

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:
        """Ask the system for a direct channel to *ref* (once per target)."""
        answer, fds = self.host.request((Ctl.CONNECT, ref.actor_id))
        if answer[0] == Ctl.GONE:
            self.gone[ref.actor_id] = answer[2]
            msg = f"{ref._describe()} is stopped: {answer[2]}"
            raise ActorStopped(msg)
        _kind, target, ring_name, ctl_name = answer
        try:
            return self.attach_outbound(target, ring_name, ctl_name, fds[0])
        except FileNotFoundError:
            # its segments were unlinked between the answer and now: the system is
            # closing, or forgot the target (stopped for good, past ``stopped_kept``)
            os.close(fds[0])
            why = "its mailbox is gone (the system is closing or forgot it)"
            self.gone[ref.actor_id] = why
            msg = f"{ref._describe()} is stopped: {why}"
            raise ActorStopped(msg) from None

    def attach_outbound(self, target: int, ring_name: str, ctl_name: str, efd: int) -> OutChannel:
        """Map the ring to *target* and remember it."""
        chan = self.outbound.get(target)
        if chan is None:
            ctl = ControlBlock(Segment.attach(ctl_name))
            try:
                ring = Segment.attach(ring_name, prefault=False)
            except FileNotFoundError:
                ctl.close()
                raise
            chan = OutChannel(target, ring, ctl, efd, self.config.window)
            self.outbound[target] = chan
        return chan

    def attach_inbound(self, sender: int, ring_name: str, producer_efd: int) -> None:
        """Map a ring some peer writes to us (its eventfd: to ring when credit comes back)."""
        if sender not in self.inbound:
            self.inbound[sender] = InChannel(sender, Segment.attach(ring_name, prefault=False),
                                            producer_efd)

    # -- waiting ------------------------------------------------------------------------

    def may_block(self) -> bool:
        """Sync handlers may wait (the actor is busy anyway); async ones may not."""
        return self.sync_depth > 0 or _current_task() is None

    def run_sync(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call user code that is synchronous until it returns (it may wait on replies)."""
        self.sync_depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            self.sync_depth -= 1

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        """Waiting on a call to ourselves while handling a message never ends."""
        return reply.target_id == self.id and self.busy

    def timeout_hint(self, reply: Reply[Any]) -> str:
        """Say why a call from inside a handler may have timed out."""
        if self.busy:
            return (f"; this actor ({self.host.name!r}) handles one message at a time and "
                    "was blocked waiting: if the target (directly or through others) calls "
                    "back into it, that is a deadlock")
        return ""

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Wait inside a sync handler: keep reading replies (calls queue) until done."""
        if not self.may_block():
            msg = f"{reply.describe}: use 'await' for replies inside an async handler"
            raise RuntimeError(msg)
        self.track_alone()
        while not reply.done():
            self.flush_dirty()
            self.drain()
            self.host.poll_ctrl()
            if reply.done() or deadline.expired():
                return
            if self.spin(lambda: reply.done()):
                continue
            if self.park():
                timeout = min(deadline.remaining(), self.config.park_timeout)
                select.select([self.efd, self.host.ctrl.fileno()], [], [], timeout)
                self.clear_doorbell()
                self.unpark()

    def idle_wait(self, event: Any, seconds: float) -> None:
        """While waiting for credit, keep reading replies and control messages."""
        self.track_alone()
        self.drain()
        self.host.poll_ctrl()
        if not event.is_set():
            select.select([self.efd, self.host.ctrl.fileno()], [], [], seconds)
            self.clear_doorbell()

    def spin(self, stop: Any = None) -> bool:
        """Poll the rings a while before parking; True if data (or *stop*) turned up.

        Adaptive: the full ``spin_seconds`` only while recent gaps between bursts were
        shorter than that (a spin then saves a doorbell and a wake-up, ≈ 4 µs + 30 µs
        here); after longer gaps a tenth of it, so that an actor fed now and then does
        not burn a core its neighbours need.
        """
        budget = self.config.spin_seconds
        if self.gap_ewma > budget:
            budget *= 0.1
        clock = time.perf_counter
        start = clock()
        end = start + budget
        now = start
        if self.held is not None and not self.wait_for_reader(end, stop):
            end = 0.0  # the caller is late: do not spin on (see wait_for_reader)
        chans = tuple(self.inbound.values())  # no ring is added while we spin (the loop
        if len(chans) == 1 and stop is None:  # adds them, and this is the loop)
            chan = chans[0]
            hdr = chan.ring.hdr
            while now < end:
                if hdr[H_TAIL] != chan.cursor:
                    self.note_gap(now - start)
                    return True
                now = clock()
        else:
            while now < end:
                if self.has_unread() or (stop is not None and stop()):
                    self.note_gap(now - start)
                    return True
                now = clock()
        self.parked_at = now
        return False

    def wait_for_reader(self, end: float, stop: Any) -> bool:
        """The first part of a spin while a reply's doorbell is held back: until its
        caller reads it (or spins on its ring), data comes, the grace or the spin ends;
        the doorbell is rung then unless the reply was read.

        False if the caller did not come within the grace: it is most likely off the
        CPU, possibly this one (a woken actor often runs where its caller ran), so the
        spin ends here and the actor parks rather than keep the CPU from it.
        """
        chan, past, due = self.held  # type: ignore[misc]
        clock = time.perf_counter
        now = clock()
        try:
            hdr = chan.ring.hdr
            while now < due:
                if hdr[H_HEAD] >= past or hdr[H_READER] == READER_SPINNING:
                    self.held = None  # read, or it will be: the spinner sees it
                    return True
                if now >= end or self.has_unread() or (stop is not None and stop()):
                    break
                now = clock()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            self.held = None
            return True
        self.ring_held()
        return now < due

    def hold_doorbell(self, chan: OutChannel) -> None:
        """A lone call's reply was just written and its caller said it would spin on it
        (``READER_EXPECTED``): ring its doorbell only if the caller does not read it
        within ``REPLY_GRACE``, or before this actor does anything else. Otherwise the
        caller's loop thread would wake for a reply its spinning thread reads anyway,
        and then wait for that thread's GIL (issue 15: the round-trip tail)."""
        if self.held is not None:  # pragma: no cover - rung before any other handler
            self.ring_held()
        self.held = (chan, chan.ring.hdr[H_TAIL], time.perf_counter() + REPLY_GRACE)
        self.ctl.slots[C_HELD] += 1

    def ring_held(self) -> None:
        """Ring the doorbell held back for a reply, unless its caller read it already."""
        chan, past, _due = self.held  # type: ignore[misc]
        self.held = None
        try:
            hdr = chan.ring.hdr
            if hdr[H_HEAD] < past and hdr[H_READER] != READER_SPINNING:
                self.ctl.slots[C_HELD_RUNG] += 1
                chan.ring_doorbell()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            pass

    def note_gap(self, seconds: float) -> None:
        """Feed the spin heuristic with the time the last idle stretch lasted."""
        self.gap_ewma += 0.25 * (seconds - self.gap_ewma)

    # -- handling -----------------------------------------------------------------------

    def serve_alone(self, chan: InChannel, rec: Any, unlink: list[Any],
                    msgs: Any) -> bool:
        """The latency path: a record of one call, read while idle, is handled right here.

        What ``pump`` would do for it, without queueing it or tracking the record: the
        crash attribution slots are set the same way, and the record is committed once
        the handler returned, before the reply goes out. Anything unusual (a backlog, a
        handler running, a stop asked, a message a predecessor already handled, adaptive
        windows or hang detection on) leaves it to the general path. A handler that turns
        out to be async, or raises, gets its record tracked then, as in ``pump``.

        The call's arguments are let go of before its reply goes out (a list *msgs* is
        emptied): an array that viewed an out-of-band block frees the block then, so
        that the caller's next array reuses the same block (warm in the cache), not
        another one.
        """
        msg = msgs[0]
        if (msg[0] != OP_CALL or self.queue or self.busy or self.host.stopping
                or self.aimd is not None or self.stamp_start):
            return False
        if self.held is not None:  # the previous reply's caller has not read it yet
            self.ring_held()
        _op, token, reply_to, method, args, kwargs = msg
        fn = self.host.handlers.get(method)
        slots = self.ctl.slots
        hdr = chan.ring.hdr  # skip_count(rec.pos) != 0, inlined: a predecessor handled it
        if fn is None or slots[C_STOP] or (hdr[H_CUR_REC] == rec.pos and hdr[H_CUR_SUB]):
            return False
        if type(msgs) is list:  # (a marshalled tuple holds plain data: no buffers)
            msgs.clear()
        del msg
        if self.dirty:
            self.flush_dirty()  # earlier replies out before the next handler runs
        slots[C_TOKEN] = token
        if token:
            slots[C_REPLY_TO] = reply_to + 1
        slots[C_SEQ] = hdr[H_HANDLED]  # the head record's first message
        slots[C_BUSY] = chan.sender_id + 1
        self.busy = True
        self.sync_depth += 1
        self.alone = (chan, rec, unlink)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.busy = False
            del args, kwargs
            self.finish(self._end_alone() or chan.open(rec, unlink), 0, token, reply_to,
                        False, exc, format_remote(exc))
            return True
        finally:
            self.sync_depth -= 1
        del args, kwargs
        entry = self._end_alone()
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry or chan.open(rec, unlink), 0, token, reply_to)
            return True
        self.busy = False
        slots[C_HANDLED] += 1
        # committed: its credit is back before the reply is
        if entry is None:
            chan.commit_now(rec, unlink)
        else:  # tracked while the handler waited (it read its rings): commit in order
            entry.done_one(0)
        slots[C_BUSY] = 0  # after the commit: a crash in between must not redeliver it
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""), True)  # hold
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        return True

    def track_alone(self) -> None:
        """A handler run by ``serve_alone`` is about to read its rings (it waits on a
        reply, or for credit): track its record from now on, so that a record read
        meanwhile from the same ring (an error reply the system sends on a dead actor's
        behalf) is committed after it, never before it."""
        if self.alone is not None and self.alone_entry is None:
            chan, rec, unlink = self.alone
            self.alone_entry = chan.open(rec, unlink)

    def _end_alone(self) -> OpenRecord | None:
        """The lone call's handler returned: its record's entry if it had to be tracked."""
        entry = self.alone_entry
        self.alone = self.alone_entry = None
        return entry

    def _no_receive(self, message: Any) -> None:
        """Stands in for ``receive`` until the actor is built (nothing is pumped before)."""
        msg = f"{self.host.describe()} has no handler 'receive'"
        raise AttributeError(msg)

    def hold(self, result: Any, entry: OpenRecord, index: int, token: int,
             reply_to: int) -> None:
        """An async handler returned *result* (awaitable): it holds the actor until done."""
        task = asyncio.ensure_future(result)
        task.add_done_callback(functools.partial(self._async_done, entry=entry, index=index,
                                                 token=token, reply_to=reply_to))

    def dispatch_all(self, msgs: Any, entry: OpenRecord) -> None:
        """Replies resolve at once; the record's calls and tells wait their turn in the queue.

        Overrides ``Hub.dispatch_all``: the record itself is queued (``pump`` takes its
        messages in order), so nothing is built or queued per message; only a record
        that holds replies (one C-speed scan tells; a marshalled burst, a tuple, holds
        none) is walked here.
        """
        if type(msgs) is list and OP_REPLY in map(_op_of, msgs):
            done = entry.done
            for index, msg in enumerate(msgs):
                if msg[0] == OP_REPLY and not done[index]:
                    self.resolve(msg)
                    entry.done_one(index)  # may commit the record: all of it was replies
            if entry.prefix >= len(msgs):
                return
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def dispatch_tells(self, msgs: tuple[Any, ...], entry: OpenRecord) -> None:
        """A record of told messages only, bare (``Hub.encode``): queued as it is; ``pump``
        hands each message to ``receive`` without a wire tuple to look into."""
        entry.tells = True
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def pump(self) -> None:
        """Handle queued messages in order until one is async (it holds the actor), a stop
        is asked, or none remain.

        This is the hot path of every message, so ``handle`` and (for tells) the
        progress step of ``OpenRecord.done_one`` are inlined here, and a record's messages
        are taken up one after the other without leaving this loop. Per message, in this
        order: ``C_SEQ`` and ``C_BUSY`` (crash attribution) set, the handler run, the
        progress published (``cur_sub``, then ``cur_rec``; the record committed after its
        last message), ``C_BUSY`` cleared; so a crash at any point attributes and
        redelivers exactly one message (tests/faults).
        """
        if self.held is not None:  # rung before a handler runs (it may take long)
            self.ring_held()
        queue = self.queue
        slots = self.ctl.slots
        host = self.host
        handlers = host.handlers
        receive = handlers.get("receive", self._no_receive)
        stamp = self.stamp_start
        aimd = self.aimd
        plain = not stamp and aimd is None  # no per-message timing: run_tells may run
        handled = 0
        self.sync_depth += 1
        try:
            while queue and not self.busy and not host.stopping:
                entry = queue[0]
                msgs, done, hdr, busy = entry.msgs, entry.done, entry.hdr, entry.busy
                tells = entry.tells  # bare told messages (dispatch_tells)
                count = len(msgs)
                index = entry.next
                if tells and plain and index == entry.prefix:
                    if not self.run_tells(entry, receive):
                        return
                    queue.popleft()
                    self.queued -= entry.queued
                    continue
                # The ring's handled count moves only when this record (the head: all
                # before it are handled, so committed) is committed, after its last message.
                seq = hdr[H_HANDLED]
                # C_BUSY (and ``busy``) stay set from one tell to the next (one store per
                # run, not two per message): between two, C_SEQ names a message already
                # handled, which a crash there attributes to nobody (crashes.committed),
                # as if C_BUSY were 0. Both are cleared whenever the run ends.
                marked = False
                # only the head record publishes its progress (OpenRecord.done_one), so
                # cur_rec, once it names this record, stays so until it is committed
                published = hdr[H_CUR_REC] == entry.rec.pos
                while index < count:
                    # asked to stop: seen between messages, even when busy
                    if slots[C_STOP] or host.stopping:
                        host.stopping = True
                        entry.next = index
                        if marked:
                            slots[C_BUSY] = 0
                            self.busy = False
                        return
                    if self.dirty:
                        self.flush_dirty()  # earlier replies out before the next handler runs
                    if done[index]:  # a reply, resolved when read
                        index += 1
                        continue
                    msg = msgs[index]
                    if tells or msg[0] == OP_TELL:  # one-way traffic: its own, shorter path
                        if stamp:
                            slots[C_SINCE] = time.monotonic_ns()
                        # C_TOKEN is already 0: every message clears it once its reply is out
                        slots[C_SEQ] = seq + index
                        if not marked:
                            slots[C_BUSY] = busy  # crash attribution slot
                            self.busy = marked = True
                        try:
                            result = receive(msg if tells else msg[2])
                        except Exception as exc:
                            self.busy = marked = False  # finish() clears C_BUSY
                            entry.next = index = index + 1
                            self.finish(entry, index - 1, 0, 0, False, exc, format_remote(exc))
                            continue
                        if result is not None and type(result) not in _PLAIN and (
                                inspect.isawaitable(result)):
                            entry.next = index + 1
                            self.hold(result, entry, index, 0, 0)
                            return
                        if aimd is not None and aimd.observe(time.perf_counter() - entry.t_read):
                            slots[C_WINDOW] = aimd.window
                        handled += 1
                        index += 1
                        # entry.done_one(index - 1), inlined for the in-order case (always,
                        # here; ``done`` is not set: nothing looks behind the prefix)
                        if index - 1 == entry.prefix:
                            prefix = index
                            while prefix < count and done[prefix]:
                                prefix += 1
                            entry.prefix = prefix
                            if prefix < count:
                                hdr[H_CUR_SUB] = prefix  # cur_sub first, then cur_rec
                                if not published:
                                    hdr[H_CUR_REC] = entry.rec.pos
                                    published = True
                            else:
                                entry.chan.commit_ready()
                        else:  # pragma: no cover - out of order: a handled prefix has a gap
                            entry.done_one(index - 1)
                        continue
                    if marked:  # a call: it sets and clears C_BUSY itself
                        slots[C_BUSY] = 0
                        self.busy = marked = False
                    entry.next = index = index + 1  # taken up (a handler may return here)
                    if msg[0] == OP_DCALL:  # a call with a deadline (plain calls: one compare)
                        if msg[6] is not None and msg[6] <= time.monotonic():  # None: none
                            self.drop_expired(entry, index - 1, msg)
                            continue
                        self.deadline = (msg[1], msg[6], msg[7], msg[8])
                        msg = msg[:6]
                    if self.handle_call(entry, index - 1, msg, handlers):
                        handled += 1
                    if self.busy:
                        return  # an async handler holds the actor
                if marked:
                    slots[C_BUSY] = 0  # after the commit (see C_SEQ)
                    self.busy = False
                entry.next = count
                queue.popleft()
                self.queued -= entry.queued
        finally:
            self.sync_depth -= 1
            slots[C_HANDLED] += handled

    def run_tells(self, entry: OpenRecord, receive: Any) -> bool:
        """Handle the rest of a record of bare told messages (``dispatch_tells``), from
        its handled prefix on, in ``pump``'s order of steps, with nothing per message but
        those steps: True once it is committed, False if pumping must stop (a stop was
        asked, or an async handler holds the actor; ``entry.next`` says where it stopped).

        ``pump``'s general loop, reduced to what a record of tells needs when the actor
        has no hang timeout and no adaptive window (no clock read per message): no
        ``done`` flag can be set past the prefix of such a record (its messages are taken
        in order, a failed one included), so the prefix is the index itself. Per
        message: the stop and dirty-outbox looks, ``C_SEQ``, the handler, ``cur_sub``.
        """
        slots, host, dirty = self.ctl.slots, self.host, self.dirty
        msgs, hdr = entry.msgs, entry.hdr
        count = len(msgs)
        index = start = entry.next
        seq = hdr[H_HANDLED]
        pos = entry.rec.pos
        published = hdr[H_CUR_REC] == pos  # see pump
        marked = False  # C_BUSY (and ``busy``) set, kept from one tell to the next (pump)
        failed = held = 0
        try:
            while index < count:
                if slots[C_STOP] or host.stopping:  # seen between messages, even when busy
                    host.stopping = True
                    entry.next = index
                    if marked:
                        slots[C_BUSY] = 0
                        self.busy = False
                    return False
                if dirty:
                    self.flush_dirty()  # earlier replies out before the next handler runs
                slots[C_SEQ] = seq + index
                if not marked:
                    slots[C_BUSY] = entry.busy  # crash attribution slot
                    self.busy = marked = True
                try:
                    result = receive(msgs[index])
                except Exception as exc:
                    self.busy = marked = False  # finish() clears C_BUSY
                    entry.next = index = index + 1
                    failed += 1
                    self.finish(entry, index - 1, 0, 0, False, exc, format_remote(exc))
                    continue
                index += 1
                # a plain value returned costs no isawaitable() (≈ 3k instructions)
                if result is not None and type(result) not in _PLAIN and (
                        inspect.isawaitable(result)):
                    entry.next = index
                    held = 1
                    self.hold(result, entry, index - 1, 0, 0)
                    return False  # busy and C_BUSY stay set until it is done
                entry.prefix = index  # OpenRecord.done_one, inlined (see pump)
                if index < count:
                    hdr[H_CUR_SUB] = index  # cur_sub first, then cur_rec
                    if not published:
                        hdr[H_CUR_REC] = pos
                        published = True
                else:
                    entry.chan.commit_ready()
            if marked:
                slots[C_BUSY] = 0  # after the commit (see C_SEQ in pump)
                self.busy = False
            entry.next = count
            return True
        finally:
            slots[C_HANDLED] += index - start - failed - held

    def handle_call(self, entry: OpenRecord, index: int, msg: tuple[Any, ...],
                    handlers: dict[str, Any]) -> bool:
        """Run one call (``pump``); True if it ran to completion and was committed."""
        slots = self.ctl.slots
        _op, token, reply_to, method, args, kwargs = msg
        slots[C_TOKEN] = token  # 0: a crash then fails no caller
        if token:
            slots[C_REPLY_TO] = reply_to + 1
        if self.stamp_start:
            slots[C_SINCE] = time.monotonic_ns()
        slots[C_SEQ] = entry.hdr[H_HANDLED] + index
        slots[C_BUSY] = entry.busy  # crash attribution slot
        fn = handlers.get(method)
        if fn is None:
            err: Exception
            if type(method) is BadMessage:  # it did not unpickle here (sort_out)
                err = method.error()
            else:
                err = AttributeError(f"{self.host.describe()} has no handler {method!r}")
            self.finish(entry, index, token, reply_to, False, err, "")
            return False
        self.busy = True
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.busy = False
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
            return False
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry, index, token, reply_to)
            return False
        self.busy = False
        if self.aimd is not None and self.aimd.observe(time.perf_counter() - entry.t_read):
            slots[C_WINDOW] = self.aimd.window
        entry.done_one(index)  # committed: its credit is back before the reply is
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""))
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        return True

    def drop_expired(self, entry: OpenRecord, index: int, msg: tuple[Any, ...]) -> None:
        """A call whose deadline passed while it was queued: not run; its caller gets
        ``CallTimeout`` (reason ``"expired"``)."""
        self.expired_drops += 1
        late = time.monotonic() - msg[6]
        err = CallTimeout(f"{self.host.describe()}.{msg[3]}: dropped unrun, its deadline "
                          f"passed {late:.3f}s before its turn came", "expired")
        self.ctl.slots[C_TOKEN] = msg[1]
        if msg[1]:
            self.ctl.slots[C_REPLY_TO] = msg[2] + 1
        self.finish(entry, index, msg[1], msg[2], False, err, "")

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled; None if it has none."""
        token, deadline, _carried, _prefix = self.deadline
        if (not token or token != self.ctl.slots[C_TOKEN] or deadline is None
                or deadline == math.inf):
            return None
        return deadline - time.monotonic()

    def call_token(self) -> Any:
        """The token the call being handled carries (a pool call's, kept across its
        retries); None if it carries none."""
        token, _deadline, carried, prefix = self.deadline
        if not token or token != self.ctl.slots[C_TOKEN]:
            return None
        if prefix is not None:  # a pool's first attempt: its prefix and the call's token
            return f"{prefix}{token}"
        return carried

    def _async_done(self, task: asyncio.Future[Any], *, entry: OpenRecord, index: int,
                    token: int, reply_to: int) -> None:
        self.busy = False
        if task.cancelled():
            err = ActorStopped(f"{self.host.describe()}: the handler was cancelled")
            self.finish(entry, index, token, reply_to, False, err, "")
        elif (exc := task.exception()) is not None:
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
        else:
            self.finish(entry, index, token, reply_to, True, task.result(), "")
        self.host.run_batch()

    def finish(self, entry: OpenRecord, index: int, token: int, reply_to: int, ok: bool,
               value: Any, tb: str) -> None:
        """Count the message handled and commit it, then send the reply (or log a tell's
        error). Until the reply is out, ``C_TOKEN`` names the call whose caller a crash
        must fail."""
        slots = self.ctl.slots
        slots[C_HANDLED] += 1
        entry.done_one(index)
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, ok, value, tb))
            slots[C_TOKEN] = 0
        elif not ok:
            self.log_tell_error(value, tb)

    def log_tell_error(self, exc: BaseException, tb: str) -> None:
        """A told message raised: nobody waits for it, so log it. The first of each kind
        (exception type and the line that raised it) with its traceback; the rest only
        counted, at 10, 100, 1000 and 10000, so that a flood does not drown the log, even
        when each message has a text of its own."""
        file, line = raised_at(exc)
        kind = (type(exc).__name__, f"{file}:{line}")
        seen = self.tell_errors.get(kind, 0)
        self.tell_errors[kind] = seen + 1
        if seen == 0:
            logger.error("%s: a told message raised (later %s raised at %s are counted, "
                         "not logged):\n%s", self.host.describe(), kind[0],
                         f"{os.path.basename(file)}:{line}", tb or exc)
        elif seen + 1 in (10, 100, 1000, 10000):
            logger.error("%s: %d told messages raised %s at %s (the last: %s)",
                         self.host.describe(), seen + 1, kind[0], kind[1],
                         str(exc)[:200])

    def send_reply(self, reply_to: int, msg: tuple[Any, ...], hold: bool = False) -> None:
        """Append a reply to the caller's channel (opened through the system if new).

        *hold*: a lone call's reply (``serve_alone``), written at once, may hold its
        doorbell back for a caller that said it would spin on it (``hold_doorbell``).
        """
        chan = self.outbound.get(reply_to)
        if chan is None:
            try:
                chan = self.open_channel(ActorRef(self, self.run_id, reply_to, "caller",
                                                  frozenset(), "actor"))
            except ActorStopped:
                return  # the caller is gone: nobody is waiting for this reply
        with chan.lock:
            if not chan.outbox and not chan.encoded:
                # The common case: written now, as its own record (the caller may be
                # spinning on it); the call itself was committed just before.
                if type(msg[3]) in SAFE_TYPES:  # plain data: marshalled (oob.load_payload)
                    body, count = _marshal([msg]), 1
                    if len(body) > self.max_inline:
                        body, count = self.encode([msg])
                else:  # an unpicklable value becomes an error reply
                    body, count = self.encode([msg])
                if chan.ring.try_write(body, count):
                    if hold and chan.ring.hdr[H_READER] == READER_EXPECTED:
                        self.hold_doorbell(chan)
                    else:
                        chan.ring_doorbell()
                    return
                chan.encoded.append((body, count))
                chan.encoded_count += count
            else:
                self.wrap_bare(chan).append(msg)
        self.dirty.add(chan)

    def describe_self(self) -> str:
        """This actor, in error messages."""
        return self.host.describe()

    def record_dead(self, method: str, reason: str) -> None:
        """Dead letters are kept by the system: tell it."""
        try:
            control.send(self.host.ctrl, (Ctl.DEAD_LETTER, method, reason[-4000:]))
        except OSError:
            logger.error("%s: %s", self.host.describe(), reason)

    def unpicklable(self, msg: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...] | None:
        """Replace a reply that cannot be pickled by an error the caller can read."""
        if msg[0] == OP_REPLY and not msg[2]:
            err = RuntimeError(f"{type(msg[3]).__name__}: {msg[3]} (the exception itself "
                               f"could not be pickled: {exc})")
            return (OP_REPLY, msg[1], False, err, msg[4])
        return super().unpicklable(msg, exc)
