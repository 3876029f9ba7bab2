"""Autoscaling a ``(min, max)`` pool: grow while calls wait for credit, shrink after
idling, with hysteresis (a look every ``AUTOSCALE_TICK`` seconds)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from actorq._errors import ActorStopped
from actorq._routing.members import MemberSet, logger
from actorq._routing.scheduler import SCHEDULER

AUTOSCALE_TICK = 0.1  # seconds between looks at the load of a (min, max) pool


class Autoscaler(MemberSet):
    """The autoscaling of a pool (its ticks run on the routing scheduler)."""

    __slots__ = ()  # MemberSet has the slots

    def _autoscale(self) -> None:
        """Every tick (scheduler thread): grow while calls wait for credit, shrink after
        ``idle_timeout`` with a member idle at every look.

        What it reads is the kernel's flow control on this process's channel to each
        member (``ref.channel_statistics()``): senders waiting for credit now, and
        credit waits or ``Backpressure`` since the last look. Two pressed looks in a row
        before growing (one burst does not start a process); a member without calls
        in flight (the kernel's credits in use) at every look for ``idle_timeout``
        before shrinking (any look without one starts the wait again)."""
        if self._stopped or not self._host.running():
            return  # stopped, or its system closed: no more ticks
        now = time.monotonic()
        with self._lock:
            members = list(self._candidates)
            size = len(self._members)
        pressed = idle = 0
        for m in members:
            try:
                st = m.ref.channel_statistics()
            except Exception:
                continue
            waited = st.waits + st.backpressure
            if st.waiting or waited > m.seen_waits:
                pressed += 1
            m.seen_waits = waited
            if st.in_flight == 0:
                idle += 1
        if pressed:
            self._busy_ticks += 1
            self._idle_since = now
        else:
            self._busy_ticks = 0
            if not idle:
                self._idle_since = now
        action: Callable[[], None] | None = None
        if self._busy_ticks >= 2 and size < self.max_size:
            self._busy_ticks = 0
            action = lambda: self._resize_to(size + 1)  # noqa: E731
        elif now - self._idle_since >= self.idle_timeout and size > self.min_size:
            self._idle_since = now
            action = lambda: self._resize_to(size - 1)  # noqa: E731
        if action is not None:
            # spawning returns at once, stopping waits for the process: off the scheduler
            threading.Thread(target=action, name="actorq-pool-resize", daemon=True).start()
        tick_later(self)

    def _resize_to(self, n: int) -> None:
        try:
            if not self._stopped:
                self.resize(n)
        except ActorStopped:
            pass
        except Exception:
            logger.exception("pool %r: resizing to %d failed", self.name, n)


def tick_later(pool: Autoscaler) -> None:
    """The next autoscale look, holding the pool weakly: a pool nobody holds stops."""
    ref = weakref.ref(pool)

    def tick() -> None:
        alive = ref()
        if alive is not None:
            alive._autoscale()

    SCHEDULER.call_later(AUTOSCALE_TICK, tick, pool._timers)
