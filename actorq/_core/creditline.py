"""The credit line: producers that found no credit wait here, in order, for it to come back.

A send that finds no credit (``Sending.send``) joins the channel's line
(``_join_line_locked``): a thread that may block waits its turn (``_wait_turn``); on a
running event loop the message is parked instead, sent when its credit is granted
(``_send_granted``) or failed after the send timeout (``_expire_later``). ``grant`` hands
the credit that came back to the line in its order; ``close_channel`` releases the line
when the receiver is gone for good.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from actorq._clock import Deadline
from actorq._core.outbox import Outboxes
from actorq._errors import ActorStopped, Backpressure
from actorq._transport.channel import OutChannel, fence
from actorq._transport.credit import Waiter
from actorq._transport.oob import decode_batch, run_after_commit

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

logger = logging.getLogger(__name__)


class CreditLine(Outboxes):
    """Producers waiting for a channel's credit (a part of ``Hub``)."""

    def _join_line_locked(self, chan: OutChannel, ref: ActorRef[Any], msg: tuple[Any, ...],
                          nowait: bool) -> Waiter | None:
        gate = chan.gate
        if nowait:
            gate.backpressure += 1
            chan.set_want(gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox has no credit left ({chan.limit()} "
                    "messages in flight); retry later, or use tell() to wait for credit")
            raise Backpressure(text)
        now = time.monotonic()
        if self.may_block():
            event = threading.Event()
            waiter = gate.enqueue(ref._priority, now, lambda _w: event.set())
            waiter.event = event
        else:
            if gate.waiting >= self.config.max_parked:
                gate.backpressure += 1
                chan.set_want(True)
                text = (f"{ref._describe()}: {gate.waiting} messages already wait for its "
                        f"mailbox (max_parked={self.config.max_parked}); await some "
                        "replies before sending more (bound the fan-out, e.g. with an "
                        "asyncio.Semaphore)")
                raise Backpressure(text)
            waiter = gate.enqueue(ref._priority, now,
                                  lambda w: self._send_granted(chan, w, msg))
            waiter.message = msg
            self._expire_later(chan, waiter, ref, msg)
        chan.credits = 0
        chan.set_want(True)
        self.waiting_chans.add(chan)
        self.schedule_grant(chan)
        return waiter if waiter.event is not None else None

    def _wait_turn(self, chan: OutChannel, ref: ActorRef[Any], waiter: Waiter,
                   msg: tuple[Any, ...]) -> None:
        """Called with ``chan.lock`` held: release it, wait for our credit, send."""
        chan.lock.release()
        try:
            self.flush_dirty()  # our own queued messages must reach the receiver first
            deadline = Deadline.after(self.config.send_timeout)
            event: threading.Event = waiter.event
            # The receiver rings our doorbell when credit comes back and the loop grants
            # it; polling here is only the safety net, so it is slow on purpose (a fast
            # poll by every blocked producer cost a core under overload).
            delay = 0.001
            while not waiter.granted and not chan.closed and not deadline.expired():
                self.grant(chan)
                if waiter.granted:
                    break
                self.idle_wait(event, min(delay, deadline.remaining()))
                delay = min(delay * 2, 0.02)
        finally:
            chan.lock.acquire()
        gate = chan.gate
        if chan.closed:
            text = f"{ref._describe()} is stopped: {self.gone.get(ref.actor_id, 'it stopped')}"
            raise ActorStopped(text)
        if not waiter.granted:
            gate.cancel(waiter, time.monotonic())
            gate.backpressure += 1
            chan.set_want(gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox stayed full for {self.config.send_timeout:g}s "
                    f"(send timeout; {chan.limit()} messages in flight, {gate.waiting} "
                    "more producers waiting)")
            raise Backpressure(text)
        gate.consume(waiter)
        if self._append_locked(chan, msg):
            self.mark_dirty(chan)

    def _send_granted(self, chan: OutChannel, waiter: Waiter, msg: tuple[Any, ...]) -> None:
        """A parked message got its credit: into the outbox it goes."""
        with chan.lock:
            if waiter.cancelled:
                return
            chan.gate.consume(waiter)
            dirty = self._append_locked(chan, msg)
        if dirty:
            self.mark_dirty(chan)

    def _expire_later(self, chan: OutChannel, waiter: Waiter, ref: ActorRef[Any],
                      msg: tuple[Any, ...]) -> None:
        def expire() -> None:
            with chan.lock:
                if waiter.granted or waiter.cancelled:
                    return
                chan.gate.cancel(waiter, time.monotonic())
                chan.gate.backpressure += 1
                chan.set_want(chan.gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox stayed full for "
                    f"{self.config.send_timeout:g}s (send timeout; the message was parked)")
            reply = self.pending.pop(msg[1], None) if msg[1] else None
            if reply is not None:
                reply.set_exception(Backpressure(text))
            else:
                logger.warning("dropped a told message: %s", text)

        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                lambda: self.loop.call_later(self.config.send_timeout, expire))  # type: ignore[union-attr]

    def close_channel(self, chan: OutChannel, why: str, *,
                      fail_replies: bool = True) -> list[tuple[Any, ...]]:
        """The receiver is gone for good: release everyone waiting for its credit.

        Returns the messages that never reached its ring (still in the outbox, encoded
        but not written, or parked for credit), for the dead letters. Their callers get
        ``ActorStopped`` here, or (``fail_replies=False``) from the caller's own
        ``fail_pending`` once it has recorded them.
        """
        with chan.lock:
            chan.closed = True
            left = chan.gate.close(time.monotonic())
            self.waiting_chans.discard(chan)
            self.dirty.discard(chan)
            unsent = self._unsent(chan)
        for waiter in left:
            if waiter.event is not None:
                waiter.event.set()  # a blocked producer wakes and raises ActorStopped
            elif waiter.message is not None:
                unsent.append(waiter.message)
        if fail_replies:
            for msg in unsent:
                reply = self.pending.pop(msg[1], None) if msg[1] else None
                if reply is not None:
                    reply.set_exception(ActorStopped(f"{reply.describe}: {why}"))
        return unsent

    @staticmethod
    def _unsent(chan: OutChannel) -> list[tuple[Any, ...]]:
        """Take what never reached *chan*'s ring (caller holds its lock)."""
        msgs: list[tuple[Any, ...]] = list(Outboxes.wrap_bare(chan))
        chan.outbox = []
        chan.plain = 0
        while chan.encoded:
            payload, _count = chan.encoded.popleft()
            unlink: list[Any] = []
            try:
                msgs.extend(decode_batch(memoryview(payload), unlink, salvage=True))
            except Exception:  # pragma: no cover - it was pickled by this process
                logger.exception("could not read back unsent messages to a stopped actor")
            run_after_commit(unlink)
        chan.encoded_count = 0
        return msgs

    def grant(self, chan: OutChannel) -> None:
        """Hand the credit that came back to the producers in line, in their order."""
        granted: list[Waiter] = []
        with chan.lock:
            gate = chan.gate
            if chan.closed:
                self.waiting_chans.discard(chan)
                return
            if gate.waiting:
                free = chan.credit()
                if free > 0:
                    granted = gate.grant(free, time.monotonic())
            chan.set_want(gate.waiting > 0)
            again = False
            if gate.waiting:
                # want is re-armed after we looked: credit returned in between rang
                # nobody, so look once more (store want, then load handled: fence)
                fence()
                again = chan.credit() > 0
            else:
                self.waiting_chans.discard(chan)
        for waiter in granted:
            if waiter.on_grant is not None:
                waiter.on_grant(waiter)
        if again:
            self.schedule_grant(chan)

    def grant_all(self) -> None:
        """Grant on every channel that has producers in line (after a doorbell)."""
        for chan in list(self.waiting_chans):
            self.grant(chan)

    def schedule_grant(self, chan: OutChannel) -> None:
        """Re-check *chan* soon on the loop (credit may have come back meanwhile)."""
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.grant, chan)
            except RuntimeError:
                pass

    def idle_wait(self, event: threading.Event, seconds: float) -> None:
        """Wait up to *seconds* for *event* while waiting for credit."""
        event.wait(seconds)
