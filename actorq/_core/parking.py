"""Parking: a hub sleeps on its doorbell, is woken, and is watched for lost wake-ups.

A hub marks itself parked (``park``: ``C_PARKED`` in its control block made odd) before it
sleeps on its doorbell eventfd; producers ring the doorbell of a parked consumer only.
``watchdog`` is the safety net for a wake-up lost between the two (docs/internals.md);
an idle actor's backs off, then hands over to the system's idle sweep
(``_runtime/idle.py``).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from actorq._core.hubstate import HubState
from actorq._core.protocol import C_WATCH_MS
from actorq._transport.channel import C_LOST, C_PARKED, C_WAKEUPS, fence
from actorq._transport.ring import H_TAIL

# An idle actor's lost wake-up watchdog backs off to one look per this many park
# timeouts (10 s by default): 1000 idle actors woke 10k times a second without it, and
# still ≈ 0.8 % of a core with 64 (each look costs ≈ 50 µs of a loaded machine).
IDLE_BACKOFF = 100
# A hub that was woken since the watchdog's last look read every ring then (a wake-up
# drains them all): nothing stayed stranded, and while wake-ups come the watchdog looks
# half as often each time, down to once per this many park timeouts (0.4 s by default).
# The system's loop thread of a 400-task job graph was woken by it 20 times in a 2 s run
# (≈ 90 µs of CPU each on a loaded 2-core VM, taken from the workers); now ≈ 6.
BUSY_BACKOFF = 4


class Parking(HubState):
    """Parking, waking and the lost wake-up watchdog of a hub (a part of ``Hub``)."""

    def has_unread(self) -> bool:
        """True if some inbound ring has a record this hub has not read yet."""
        # a snapshot (the loop thread may add a ring); a plain loop, not any(): no generator
        for ch in self.inbound.all:  # noqa: SIM110
            if ch.ring.hdr[H_TAIL] != ch.cursor:
                return True
        return False

    def park(self) -> bool:
        """Mark this consumer parked; False (and unparked) if data arrived meanwhile."""
        slots = self.ctl.slots
        seq = slots[C_PARKED]
        slots[C_PARKED] = seq + 1 if not seq & 1 else seq + 2
        fence()
        if self.has_unread():
            self.unpark()
            return False
        return True

    def watchdog(self, busy: Callable[[], bool], serve: Callable[[], None],
                 active: Callable[[], bool]) -> None:
        """Safety net for lost wake-ups (docs/internals.md: park with a timeout, count, keep 0).

        Every ``park_timeout``: data present while parked with no doorbell pending is
        suspicious only if it is still there, untouched by any wake-up, at a second look
        shortly after (a producer may be between publishing and ringing at the first
        look). Then it is counted in ``lost_wakeups`` and served.

        With ``idle_backoff`` (actors), a hub that stayed parked with no wake-up since
        the last look is looked at half as often each time, down to once every
        ``IDLE_BACKOFF`` x ``park_timeout``. A ``swept`` hub (an actor) stops looking
        instead of backing off that far (``C_WATCH_MS`` 0): the system's idle sweep
        (``_runtime/idle.py``) looks at the rings of every such actor at that pace, in
        one pass of its own, and asks one with data waiting to look again
        (``watch_sooner``); idle actors then cost no wake-ups, however many there are.
        The first wake-up after a quiet stretch (``watch_sooner``) brings the next look
        back to ``park_timeout``.

        With ``busy_backoff`` (the system's hub), a hub woken since the last look (every
        wake-up reads every ring) is looked at half as often each time, down to once
        every ``BUSY_BACKOFF`` x ``park_timeout``, while wake-ups keep coming
        (``watch_busy``): a lost wake-up matters only once they stop, and is then found
        within that interval.
        """
        self.watch_handle = None
        if not active() or self.loop is None:
            return
        slots = self.ctl.slots
        wakeups = slots[C_WAKEUPS]
        quiet = wakeups == self.watch_seen and slots[C_PARKED] & 1
        woken = self.watch_seen >= 0 and wakeups != self.watch_seen
        if self._parked_with_data(busy()):
            quiet = woken = False

            def second_look() -> None:
                if self.ctl.slots[C_WAKEUPS] == wakeups and self._parked_with_data(busy()):
                    self.ctl.slots[C_LOST] += 1
                    serve()
                    self.watch_sooner()

            self.loop.call_later(0.01, second_look)
        base = self.config.park_timeout
        interval = base
        self.watch_args = (busy, serve, active)
        self.watch_busy = False
        if self.busy_backoff and woken:
            interval = min(self.watch_interval * 2, base * BUSY_BACKOFF)
            self.watch_busy = True
        elif self.idle_backoff and quiet:
            interval = min(self.watch_interval * 2, base * IDLE_BACKOFF)
            if self.swept and interval == base * IDLE_BACKOFF:
                slots[C_WATCH_MS] = 0  # stopped: the system's idle sweep watches it now
                return
        self.watch_seen = wakeups
        self.watch_interval = interval
        slots[C_WATCH_MS] = round(interval * 1e3)  # 0 only once stopped
        self.watch_handle = self.loop.call_later(interval, self.watchdog, busy, serve, active)

    def watch_sooner(self) -> None:
        """A wake-up after a quiet stretch, or the system's idle sweep asking: the
        watchdog looks again after ``park_timeout`` (not after the long interval it had
        backed off to; started again if it had stopped). Loop thread."""
        handle = self.watch_handle
        if self.loop is None or not self.watch_args:
            return  # not started yet
        if handle is not None:
            handle.cancel()
        self.watch_interval = self.config.park_timeout
        self.ctl.slots[C_WATCH_MS] = round(self.watch_interval * 1e3)
        self.watch_seen = -1  # the next look does not back off
        self.watch_handle = self.loop.call_later(self.watch_interval, self.watchdog,
                                                 *self.watch_args)

    def _parked_with_data(self, busy: bool) -> bool:
        if busy or not self.ctl.slots[C_PARKED] & 1 or not self.has_unread():
            return False
        fence()
        readable, _w, _x = select.select([self.efd], [], [], 0)
        return not readable

    def unpark(self) -> None:
        """Mark this consumer awake: producers stop ringing its doorbell."""
        slots = self.ctl.slots
        seq = slots[C_PARKED]
        if seq & 1:
            slots[C_PARKED] = seq + 1

    def clear_doorbell(self) -> None:
        """Consume pending doorbell rings (non-blocking)."""
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
