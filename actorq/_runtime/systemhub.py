"""The user process's hub: its loop runs in a background thread; sync callers help it.

A synchronous caller waiting for a reply spins for a moment on the ring its reply comes
from, reading it itself (no thread hand-off when the answer is quick). While it does, it
marks that ring as read (``H_READER`` in the ring's header), so that the actor does not
ring the doorbell for it; the hub itself stays parked, and every other ring rings as
usual. Then the caller sleeps on the reply's event, and the loop thread, woken by the
doorbell, reads the rings and resolves the reply.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from actorq import _native
from actorq._config import SystemConfig
from actorq._core.hub import Hub
from actorq._core.protocol import OP_REPLY, SYSTEM_ID
from actorq._core.ref import ActorRef
from actorq._core.reply import Reply
from actorq._errors import ActorStopped
from actorq._process.lifelock import LIFE_SLOT, SLOT_OWNER_DIED
from actorq._transport.channel import (
    C_WAKEUPS,
    ControlBlock,
    InChannel,
    fence,
)
from actorq._transport.ring import H_READER, H_TAIL, READER_SPINNING

# The running loop of this thread, or None (no exception raised when there is none: this
# is asked on every synchronous wait)
_running_loop = asyncio._get_running_loop


POLITE_AFTER = 100e-6  # seconds a caller spins before it yields at each turn (wait_spin)
sched_yield = os.sched_yield


class SystemHub(Hub):
    """The user process's hub: its loop runs in a background thread."""

    # its watchdog backs off while idle too: with 1000 actors a look (every inbound
    # ring) cost ≈ 2 % of a core at 10 a second
    idle_backoff = True
    # and while woken: each wake-up reads every ring (parking.py, BUSY_BACKOFF)
    busy_backoff = True
    expects_readers = True  # a sync caller spins on its reply's ring (wait_spin)
    spins = True  # ... in wait_spin, which Reply.result asks first

    def __init__(self, run_id: str, config: SystemConfig, ctl: ControlBlock, efd: int,
                 state_of: Callable[[int], str | None]) -> None:
        super().__init__(SYSTEM_ID, run_id, config, ctl, efd)
        self.state_of = state_of  # an actor's cell state, for error messages
        # keeps a dead letter (method, reason): set by the runtime
        self.on_dead: Callable[[str, str], None] | None = None
        # the actor id of each thread spinning on a ring in wait_spin, once per thread
        # (empty: nobody spins). Changed only by ``append`` and ``remove``, each one C
        # call under the GIL: no lock (a lock pair per spin cost ~1k instructions of a
        # round trip; see ``_stop_spinning`` for why a race between two is harmless)
        self.ring_spinners: list[int] = []

    def open_channel(self, ref: ActorRef[Any]) -> Any:
        """Channels to actors exist from spawn; a missing one means the actor is gone."""
        why = self.gone.get(ref.actor_id) or self.state_of(ref.actor_id) or "unknown actor"
        msg = f"{ref._describe()} is stopped: {why}"
        raise ActorStopped(msg)

    def may_block(self) -> bool:
        """A user thread may wait; the hub loop, or any running event loop, may not."""
        if threading.get_ident() == self.loop_thread_id:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    def wait_reply(self, reply: Reply[Any], deadline: Any) -> None:
        """Flush, spin on the rings for a moment (no thread hand-off), then sleep."""
        if not self.wait_spin(reply):
            while not reply.done() and not deadline.expired():
                reply.sleep_until_done(deadline.remaining())

    def wait_spin(self, reply: Reply[Any]) -> bool:
        """Flush, then poll the ring the reply comes from, from this thread, for
        ``spin_seconds`` x 4; return ``reply.done()``. ``Reply.result`` asks this first
        (``spins``), and builds its deadline only if the spin ran out.

        The ring is marked as read while we spin (the actor then does not ring the
        doorbell for it); the hub stays parked, so replies on other rings wake the loop
        thread as usual. (One method, not a flush and a spin: a frame less per call.)
        """
        # the loop thread runs its loop whenever it runs our code: a thread with no
        # running loop is not it (one C call, not two, for a plain caller)
        if _running_loop() is not None:
            if threading.get_ident() == self.loop_thread_id:
                msg = (f"{reply.describe}: result() called on the actor system's own loop; "
                       "use await")
                raise RuntimeError(msg)
            msg = (f"{reply.describe}: result() blocks this thread's running event loop until "
                   "the reply comes; in async code use `await reply`")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self.burst = 0  # a caller waits: the fan-out burst, if any, ends here
        if self.dirty:
            self.flush_dirty()
        # the spin (its loop asks reply.done() first)
        target = reply.target_id
        chan = self.inbound.get(target)
        if chan is None:
            return reply.done()
        spinners = self.ring_spinners
        spinners.append(target)  # before the mark: a mark is never left without spinner
        try:
            ring = chan.ring
            hdr = ring.hdr
            hdr[H_READER] = READER_SPINNING
        except ValueError:  # the ring was released: its actor is gone
            spinners.remove(target)
            return reply.done()
        done = reply.done  # asked after each record taken, and at each idle turn
        got = False
        try:
            clock = time.perf_counter
            now = clock()
            end = now + self.config.spin_seconds * 4
            polite = now + POLITE_AFTER
            drain_lock = self.drain_lock
            # (with a producer to ring for credit, commit_now's job: read_plain's path)
            take_reply = (_native.take_reply if chan.producer_efd < 0
                          else _native.take_reply_py)
            pending = self.pending
            while True:
                # Data, and nobody else reading: take one record (if the reply was not in
                # it, the next turn reads on). Otherwise the clock: a spin that found the
                # lock taken must still end on time.
                tail = hdr[H_TAIL]
                # acquire(False), not blocking=False: a keyword costs ~1k instructions
                if tail != chan.cursor and drain_lock.acquire(False):
                    try:
                        # chan.read_next(), written out; the tail read above bounds the
                        # read, unless another reader went past it meanwhile. A lone
                        # plain reply that only this thread waits for is completed and
                        # committed by ``take_reply`` itself (the C helpers: it returns
                        # the new cursor); any other record is handled here
                        cursor = chan.cursor
                        bound = tail if cursor <= tail else None
                        rec: Any
                        if chan.open_records:  # commit in order: nothing skips those
                            rec = ring.core.read_plain(cursor, bound)
                        else:
                            rec = take_reply(ring.core, cursor, bound, pending)
                        if type(rec) is int:
                            chan.cursor = rec
                        elif rec is not None:
                            chan.cursor = rec.end
                            self._take_record(chan, rec, 0.0)
                    finally:
                        drain_lock.release()
                    if done():
                        got = True
                        break
                else:
                    if done():  # (resolved by another thread, or before we began)
                        got = True
                        break
                    now = clock()
                    if now > end:
                        break
                    if now > polite:
                        # A slow answer. Its process died (or has not taken over yet):
                        # the answer comes from the next one, through the loop thread;
                        # the GIL we would keep re-taking here is what the death notice
                        # and the restart wait for. Else give this thread's GIL and CPU
                        # to whoever waits for them, not only at the end of the spin.
                        out = self.outbound.get(target)  # its life lock (lifelock.py)
                        if out is not None and out.ctl.slots[LIFE_SLOT] & SLOT_OWNER_DIED:
                            break
                        sched_yield()
        except ValueError:  # the ring was released: its actor is gone (the reply failed)
            pass
        finally:
            self._stop_spinning(chan, target)
        return got or done()

    def _stop_spinning(self, chan: InChannel, target: int) -> None:
        """Unmark the ring (if we were its last spinner); hand on what nobody rang for.

        Store the mark, fence, load the tail: a record published before the actor could
        see the mark cleared rang no doorbell, so it must be seen here (the actor stores
        the tail, fences, and loads the mark).

        Without a lock: another thread may start spinning on the same ring between our
        look at ``ring_spinners`` and our store, and have its mark cleared by it. That
        costs only a doorbell (the actor rings for a ring nobody marks, as for any other)
        and the other thread reads on; a mark is never left set with nobody spinning,
        since each thread adds itself before it marks and looks after it removed itself.
        """
        spinners = self.ring_spinners
        spinners.remove(target)
        if target in spinners:  # another thread spins on it still: it unmarks it
            return
        try:
            hdr = chan.ring.hdr
            hdr[H_READER] = 0
        except ValueError:  # released: the actor is gone
            return
        fence()  # store the mark, then load the tail
        try:
            stranded = hdr[H_TAIL] != chan.cursor
        except ValueError:  # released meanwhile: the actor is gone
            return
        if stranded:
            if self.drain_lock.acquire(False):
                try:  # still ours to read? (its actor's removal unmaps it under this lock)
                    if self.inbound.get(target) is chan:
                        self.read_to_end(chan, 0.0)
                finally:
                    self.drain_lock.release()
            else:  # someone else is reading; make sure the loop looks at this ring
                os.eventfd_write(self.efd, 1)

    def drain_from(self, actor_id: int) -> None:
        """Read what the actor *actor_id* published to this process, and only that (its
        process died: its last replies are taken before its crash is attributed; the
        other rings are read when they ring, as always)."""
        with self.drain_lock:
            chan = self.inbound.get(actor_id)
            if chan is not None:
                self.read_to_end(chan, time.perf_counter())

    def read_to_end(self, chan: InChannel, now: float) -> None:
        """Read *chan* to its end, dispatching each record; the caller holds ``drain_lock``
        and knows *chan* is still ours (its actor's removal unmaps it under that lock).

        ``drain_from`` (a death) and ``_stop_spinning`` (a reply nobody rang for) read one
        ring this way, off the hot path. ``Hub.drain`` reads a lone ring to its end too,
        inline: that is every wake-up's path, and it stops at a read-ahead limit.
        """
        while (rec := chan.read_next()) is not None:
            self._take_record(chan, rec, now)

    def on_wake(self) -> None:
        """Loop thread: the doorbell rang."""
        self.clear_doorbell()
        self.ctl.slots[C_WAKEUPS] += 1
        if self.watch_interval > self.config.park_timeout and not self.watch_busy:
            self.watch_sooner()  # busy again after a quiet stretch
        with self.drain_lock:
            self.drain()
        if self.waiting_chans:
            self.grant_all()
        if not self.park():  # data slipped in: wake ourselves again
            os.eventfd_write(self.efd, 1)

    def record_dead(self, method: str, reason: str) -> None:
        """Keep a dead letter for a reply that did not unpickle here."""
        if self.on_dead is not None:
            self.on_dead(method, reason)

    def reply_to_actor(self, caller: int, token: int, exc: BaseException) -> None:
        """Send an error reply, on a dead actor's behalf, to an actor that called it."""
        chan = self.outbound.get(caller)
        if chan is None:
            return
        with chan.lock:
            self.wrap_bare(chan).append((OP_REPLY, token, False, exc, ""))
        self.mark_dirty(chan)
