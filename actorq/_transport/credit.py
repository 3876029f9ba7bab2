"""Credit-based flow control, the producer's side of one channel.

Credits are counted in messages: the producer may have at most ``limit`` messages sent
but not yet *handled* by the receiver (read is not enough: a slow handler pushes back).
The receiver returns credit by advancing its ``handled`` counter in the ring header, so
the return is batched for free; a producer with waiters raises ``want`` in the header,
and the receiver rings the producer's doorbell after a commit that finds it raised.

Waiting producers are served by priority, then first come first served; a producer that
arrives while others wait queues behind them unless its priority is higher (no barging,
so no starvation). A granted waiter holds a *reservation* until it appends its message;
a waiter that gives up (timeout, cancellation) leaves nothing behind: its reservation, if
it had one, goes back. Pure: no syscalls, no shared memory, so it is property-tested.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Waiter:
    """One producer waiting for a credit."""

    __slots__ = ("cancelled", "consumed", "event", "granted", "message", "on_grant", "priority",
                 "seq", "since")

    def __init__(self, priority: int, seq: int, on_grant: Callable[[Waiter], Any] | None,
                 since: float) -> None:
        self.priority = priority
        self.seq = seq
        self.on_grant = on_grant
        self.since = since
        self.granted = False
        self.cancelled = False
        self.consumed = False
        self.event: Any = None  # a threading.Event for a producer that blocks
        self.message: Any = None  # what a parked (non-blocking) producer will send

    def __lt__(self, other: Waiter) -> bool:
        return (-self.priority, self.seq) < (-other.priority, other.seq)


class CreditGate:
    """Credit accounting and the waiting line for one channel (guard it with its lock)."""

    __slots__ = ("_granted", "_heap", "_seq", "backpressure", "granted", "reserved", "wait_seconds",
                 "waiting", "waits", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            msg = f"window must be at least 1, not {window}"
            raise ValueError(msg)
        self.window = window
        self.reserved = 0  # credits granted to waiters that have not sent yet
        self.waiting = 0  # waiters neither granted nor cancelled
        self._heap: list[Waiter] = []
        self._granted: set[Waiter] = set()  # granted, neither sent nor cancelled yet
        self._seq = itertools.count()
        self.waits = 0  # statistics: waiters ever queued
        self.wait_seconds = 0.0  # statistics: time waiters spent waiting
        self.backpressure = 0  # statistics: Backpressure raised
        self.granted = 0

    def free(self, in_flight: int, queued: int, limit: int | None = None) -> int:
        """Credits free now: the limit, less what is in flight, queued and reserved."""
        window = self.window if limit is None else min(self.window, limit)
        return window - in_flight - queued - self.reserved

    def may_pass(self, priority: int) -> bool:
        """True if a new sender of *priority* need not queue behind a waiter."""
        heap = self._heap
        while heap and (heap[0].cancelled or heap[0].granted):
            heapq.heappop(heap)
        return not heap or priority > heap[0].priority

    def enqueue(self, priority: int, now: float,
                on_grant: Callable[[Waiter], Any] | None = None) -> Waiter:
        """Join the line; *on_grant* (if any) runs when a credit is reserved for it."""
        waiter = Waiter(priority, next(self._seq), on_grant, now)
        heapq.heappush(self._heap, waiter)
        self.waiting += 1
        self.waits += 1
        return waiter

    def grant(self, free: int, now: float) -> list[Waiter]:
        """Reserve up to *free* credits for the first waiters in line; return them."""
        out = []
        heap = self._heap
        while free > 0 and heap:
            waiter = heapq.heappop(heap)
            if waiter.cancelled or waiter.granted:
                continue
            waiter.granted = True
            self._granted.add(waiter)
            self.waiting -= 1
            self.reserved += 1
            self.granted += 1
            self.wait_seconds += max(0.0, now - waiter.since)
            free -= 1
            out.append(waiter)
        return out

    def consume(self, waiter: Waiter) -> None:
        """The granted *waiter* sends now: its reservation becomes a message in flight."""
        if waiter.granted and not (waiter.consumed or waiter.cancelled):
            waiter.consumed = True
            self._granted.discard(waiter)
            self.reserved -= 1

    def close(self, now: float) -> list[Waiter]:
        """The channel is gone: everyone in line (and granted, not yet sent) gives up."""
        left = [w for w in self._heap if not (w.cancelled or w.granted)]
        left += sorted(self._granted)  # granted, not sent: their credit goes back too
        for waiter in left:
            self.cancel(waiter, now)
        self._heap = []
        return left

    def cancel(self, waiter: Waiter, now: float) -> None:
        """*waiter* gives up: out of the line, and its reservation (if any) goes back."""
        if waiter.consumed or waiter.cancelled:
            return
        waiter.cancelled = True
        if waiter.granted:
            self._granted.discard(waiter)
            self.reserved -= 1
        else:
            self.waiting -= 1
            self.wait_seconds += max(0.0, now - waiter.since)
        if len(self._heap) > 64 and len(self._heap) > 4 * (self.waiting + 1):
            self._heap = [w for w in self._heap if not (w.cancelled or w.granted)]
            heapq.heapify(self._heap)
