"""The actor's hot loop: its queued messages handled in order (``pump``), and the same
loop reduced to what a record of bare tells needs (``run_tells``).

Every message an actor handles goes through one of the two, apart from a lone call
served as it is read (``Handling.serve_alone``); what each does per message, and in
which order, is in its docstring. tests/faults and the batch model
(tests/transport/test_batch_model.py) check the order.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from actorq._actorproc.handling import _PLAIN, Handling
from actorq._core.protocol import C_BUSY, C_HANDLED, C_SEQ, C_SINCE, C_STOP, OP_DCALL, OP_TELL
from actorq._errors import format_remote
from actorq._transport.channel import C_WINDOW, OpenRecord
from actorq._transport.ring import H_CUR_REC, H_CUR_SUB, H_HANDLED


class Pump(Handling):
    """The handling loop of an actor (a part of ``ActorHub``)."""

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
                        # run_tells has these steps for a record of bare tells when the
                        # actor times nothing: change one, change the other. A copy, not
                        # a shared helper: that would cost a call per told message, and
                        # this one also stamps C_SINCE, feeds the adaptive window, skips
                        # replies resolved when read and takes tells among calls
                        # (tests/transport/test_batch_model.py runs both loops).
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

        A copy of ``pump``'s tell branch, not a helper both call: a helper would cost a
        Python call per told message, the hot path of one-way traffic. A change to the
        steps of one is a change to the other; tests/transport/test_batch_model.py runs
        every scenario through both (``timed``: a hang timeout sends bare tells through
        ``pump``'s loop).
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
