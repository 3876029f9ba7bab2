"""Outboxes: what a hub sends waits in its channel's outbox until it is flushed to the ring.

``_append_locked`` adds a message to the outbox (a burst of tells bare, the told messages
themselves; ``wrap_bare`` puts them back in their wire tuples once anything else comes),
and writes the burst at once when it is full, or when a call may take the latency path.
``mark_dirty`` schedules the flush on the hub's loop; ``flush_dirty`` writes every
non-empty outbox to its ring, one record each, encoded by ``encode`` (marshalled if plain
data, else pickled, large buffers out of band). A message that cannot be encoded fails
alone (``unpicklable``).
"""

from __future__ import annotations

import logging
import marshal
import pickle
import threading
import time
from typing import Any

from actorq._core.hubstate import HubState
from actorq._core.protocol import OP_CALL, OP_DCALL, OP_REPLY, OP_TELL
from actorq._errors import EncodeError, MessageTooLarge, format_remote
from actorq._transport.channel import OutChannel
from actorq._transport.oob import encode_batch, release_payload

logger = logging.getLogger(__name__)

# Callers that issued more calls than this since one of them last waited, with more
# than this outstanding, are pipelining (a fan-out): their calls wait in the outboxes
# for the end of the burst (the loop's flush, or the caller's own wait), so that each
# receiver wakes once per burst, not once per call (issue 15: 100 actors). A lone round
# trip, sync or awaited, keeps the latency path: written and rung at once.
BURST_PENDING = 16
_marshal = marshal.dumps  # plain data only (oob.load_payload)


class Outboxes(HubState):
    """The outboxes of a hub, their flushes and their encoding (a part of ``Hub``)."""

    def _append_locked(self, chan: OutChannel, msg: tuple[Any, ...]) -> bool:
        """Append under ``chan.lock``; True if the caller must mark the channel dirty.

        A burst of bare tells that goes on sets credit aside for the next ones (up to a
        full burst): ``bind_tell``'s fast path appends them without this.
        """
        chan.unreserve()
        outbox = chan.outbox
        if msg[0] == OP_TELL and (chan.bare or not outbox):
            outbox.append(msg[2])  # a burst of tells: bare (OutChannel.bare)
            chan.bare = True
        else:
            if chan.bare:
                outbox = self.wrap_bare(chan)
            outbox.append(msg)
        # Off the loop, a call to an idle receiver goes out at once (latency: no loop
        # wake-up); tells, and calls to a busy receiver, wait in the outbox for the rest
        # of the burst (throughput: one record, one publish, one doorbell).
        if len(outbox) >= self.config.outbox_messages or (
                msg[1] and threading.get_ident() != self.loop_thread_id
                and chan.ring.in_flight() == 0
                and not self.burst > BURST_PENDING < len(self.pending)):
            chan.flush_locked(self.encode)
            if not chan.encoded:
                self.dirty.discard(chan)
                return False
            return True
        if chan.bare:
            chan.reserve(self._outbox_fast)
        return len(outbox) == 1

    @staticmethod
    def wrap_bare(chan: OutChannel) -> list[Any]:
        """Put the bare told messages of *chan*'s outbox back in their wire tuples (before
        anything else is appended to it); return the outbox. Caller holds its lock."""
        if chan.bare:
            chan.unreserve()
            chan.outbox = [(OP_TELL, 0, m) for m in chan.outbox]
            chan.bare = False
        return chan.outbox

    def mark_dirty(self, chan: OutChannel) -> None:
        """*chan*'s outbox has messages: flush it by the end of this loop iteration."""
        chan.seen = len(chan.outbox)  # the settling look compares with this (flush_dirty)
        self.dirty.add(chan)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Make sure dirty outboxes are flushed by the end of this loop iteration."""
        if self.flush_scheduled or self.loop is None:
            return
        self.flush_scheduled = True
        if threading.get_ident() == self.loop_thread_id:
            # the loop's own sends (a scheduler running on it): nothing to yield to
            self.loop.call_soon(self.flush_own)
        else:
            try:
                self.loop.call_soon_threadsafe(self._flush_tick)
            except RuntimeError:  # loop closed: the system is shutting down
                self.flush_scheduled = False

    def _flush_tick(self) -> None:
        self.flush_scheduled = False
        if self.dirty:
            # Yield the GIL first: the thread that scheduled this released it only to wake
            # us (call_soon_threadsafe writes to a pipe), and is likely mid-burst; it goes
            # on until it waits or is switched out, and the burst has grown by then.
            time.sleep(0)
        self.flush_or_retry(settle=True)

    def flush_own(self) -> None:
        """The flush that the loop thread's own sends scheduled: at once, no yield."""
        self.flush_scheduled = False
        self.flush_or_retry(settle=True)

    def flush_or_retry(self, *, settle: bool = False) -> None:
        """Loop thread: flush; if a ring was full, or a channel busy, try again shortly.

        With *settle* (the flush a send scheduled, ``_flush_tick``), an outbox that grew
        since the last look is left to the next loop iteration (see ``flush_dirty``).
        """
        if self.flush_dirty(wait=False, settle=settle) or self.loop is None or (
                self.flush_scheduled):
            return
        self.flush_scheduled = True
        self.loop.call_later(0.0005, self._flush_tick)

    def flush_dirty(self, *, wait: bool = True, settle: bool = False) -> bool:
        """Write every non-empty outbox to its ring; True if all of it got in.

        Without *wait* (the loop's own end-of-iteration flush, ``flush_or_retry``), a
        channel another thread holds is skipped: that thread is in the middle of a send
        and flushes full bursts itself, and waiting would hand the lock, then the GIL,
        back and forth between the two at every burst. The channel stays dirty and
        ``flush_or_retry`` comes back to it shortly. Flushes that must be complete
        before going on (before a handler runs, before a wait) wait.

        With *settle*, an outbox that grew since it was marked dirty or last looked at
        (``OutChannel.seen``) is skipped the same way (``unsettled`` says so), and looked
        at again about a millisecond later: a thread streaming tells would otherwise have
        the loop thread take the GIL and flush a handful of messages at a time (measured:
        a flush every 5-13 tells, the loop woken as often, at a third of the rate); it
        flushes its full bursts itself. A lone tell, or a burst that ended before the
        loop looked, goes out at once, as before.
        """
        complete = True
        self.unsettled = False
        for chan in list(self.dirty):
            if settle:
                size = len(chan.outbox)
                if size != chan.seen:
                    chan.seen = size
                    self.unsettled = True
                    complete = False
                    continue
            lock = chan.lock
            if not lock.acquire(blocking=wait):
                complete = False
                continue
            try:
                chan.seen = 0
                if chan.flush_locked(self.encode):
                    self.dirty.discard(chan)
                else:
                    complete = False
            finally:
                lock.release()
        return complete

    def encode(self, msgs: list[Any], plain: bool = False,
               bare: bool = False) -> tuple[bytes, int]:
        """Pickle a burst as one record; return it and how many messages it holds.

        *msgs* is the caller's to give away: it may be emptied.

        A burst of *plain* data only (calls and tells whose data was checked at their
        call site: scalars, small tuples and lists of them; ``OutChannel.plain``) is
        marshalled instead, as a tuple: about half the cost of pickling on both sides
        (``oob.load_payload`` tells the two apart), no big buffer can be among it, and
        its receiver skips looking for replies. A burst of tells only, *bare* (the told
        messages themselves, ``OutChannel.bare``), is marshalled as ``(OP_TELL,
        messages)``: no wire tuple per message on either side. A message that cannot be pickled is
        replaced (an error reply) or dropped (``unpicklable``), so the count may be lower
        than ``len(msgs)``: the record's header must say how many it really holds, or its
        receiver would wait forever for the missing ones before committing it.
        """
        if plain:  # a tuple: the receiver knows at once that no reply is among them
            burst = tuple(msgs)
            # *msgs* is emptied so that each message is referenced once: marshal keeps a
            # table of the objects referenced more than once (+300 instructions a message)
            msgs.clear()
            body = _marshal((OP_TELL, burst) if bare else burst)
            if len(body) <= self.max_inline:
                return body, len(burst)
            msgs = list(burst)
        if bare:
            msgs = [(OP_TELL, 0, m) for m in msgs]
        cfg = self.config
        try:
            return encode_batch(msgs, oob_threshold=cfg.oob_threshold,
                                max_inline=self.max_inline, namer=self.namer,
                                pool=self.pool), len(msgs)
        except Exception as exc:
            # one message that does not pickle, or does not fit in shared memory: it
            # fails alone (``unpicklable``), the rest of the burst goes
            alone = isinstance(exc, MessageTooLarge)
            good = [m for m in (self._encodable(m, alone) for m in msgs) if m is not None]
            try:
                return encode_batch(good, oob_threshold=cfg.oob_threshold,
                                    max_inline=self.max_inline, namer=self.namer,
                                    pool=self.pool), len(good)
            except MessageTooLarge as too_large:  # each fits alone, not all together
                left = [m for m in (self.unpicklable(m, too_large) for m in good)
                        if m is not None]  # error replies: small
                return encode_batch(left, oob_threshold=cfg.oob_threshold,
                                    max_inline=self.max_inline, namer=self.namer,
                                    pool=self.pool), len(left)

    def _encodable(self, msg: tuple[Any, ...], alone: bool = False) -> tuple[Any, ...] | None:
        """*msg* if it can be sent, else what ``unpicklable`` makes of it. With *alone*
        (shared memory ran out), whether it fits in shared memory on its own is tried."""
        try:
            if alone:
                cfg = self.config
                release_payload(encode_batch([msg], oob_threshold=cfg.oob_threshold,
                                             max_inline=self.max_inline, namer=self.namer,
                                             pool=self.pool), self.pool)
            else:
                pickle.dumps(msg, protocol=5, buffer_callback=lambda _b: False)
        except Exception as exc:
            return self.unpicklable(msg, exc)
        return msg

    def unpicklable(self, msg: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...] | None:
        """Deal with a message that failed to pickle at flush time; maybe replace it."""
        too_large = isinstance(exc, MessageTooLarge)
        if msg[1] and msg[0] in (OP_CALL, OP_DCALL):
            reply = self.pending.pop(msg[1], None)
            if reply is not None:
                reply.set_exception(
                    MessageTooLarge(f"{reply.describe}: {exc}") if too_large else
                    EncodeError(f"{reply.describe}: a message could not be pickled: {exc}"))
                return None
        if msg[0] == OP_REPLY:
            if too_large:
                return (OP_REPLY, msg[1], False,
                        MessageTooLarge(f"the handler's return value: {exc}"), "")
            err = EncodeError(f"the handler's return value could not be pickled: {exc}")
            return (OP_REPLY, msg[1], False, err, format_remote(exc))
        logger.error("dropped a message that could not be %s: %s",
                     "put in shared memory" if too_large else "pickled", exc)
        return None
