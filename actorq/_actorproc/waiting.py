"""How an actor waits: a sync handler waiting on a reply keeps reading its rings (calls
queue meanwhile); an actor out of work spins a while on its rings before it parks.
"""

from __future__ import annotations

import asyncio
import select
import time
from typing import Any

from actorq._actorproc.handling import Handling
from actorq._clock import Deadline
from actorq._core.reply import Reply
from actorq._transport.ring import H_TAIL


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class Waiting(Handling):
    """Waiting inside an actor: on replies, for credit, for work (a part of ``ActorHub``)."""

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
        if self.held is not None and not self.wait_for_reader(end, stop, now):
            end = 0.0  # the caller is late: do not spin on (see wait_for_reader)
        chans = self.inbound.all  # no ring is added while we spin (the loop adds
        if len(chans) == 1 and stop is None:  # them, and this is the loop)
            chan = chans[0]
            hdr = chan.ring.hdr
            while now < end:
                if hdr[H_TAIL] != chan.cursor:
                    # note_gap(now - start), written out: once per message waited for
                    self.gap_ewma += 0.25 * (now - start - self.gap_ewma)
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

    def note_gap(self, seconds: float) -> None:
        """Feed the spin heuristic with the time the last idle stretch lasted (``spin``
        writes this line out for its one-ring case: a call less per message)."""
        self.gap_ewma += 0.25 * (seconds - self.gap_ewma)
