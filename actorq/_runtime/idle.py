"""The system's idle sweep: lost wake-ups of idle actors found without waking them.

An actor's own watchdog (``Hub.watchdog``) looks for a lost wake-up every ``park_timeout``
while the actor works, less and less often while it idles, and stops where it would
back off to one look every ``IDLE_BACKOFF`` x ``park_timeout`` (its ``C_WATCH_MS`` slot
then reads 0). From then on this sweep stands in for it: every
``IDLE_BACKOFF`` x ``park_timeout`` (10 s by default), one pass on the system's loop
thread over the running actors whose watchdog stopped reads, from shared memory, the
parked mark in each one's control block and the head and tail of each of its inbound
rings: no message, no wake-up. An actor parked with unconsumed data in a ring and no
doorbell pending, at two looks ``SECOND_LOOK`` apart with no wake-up in between (a
producer may be between publishing and ringing at the first), is sent ``(WATCH,)``: its
watchdog looks again at once and, if the data is really stranded, counts the lost
wake-up and serves it, as it would have itself. An actor is asked at most once per park
(one parked with data on purpose, under an async handler, is not asked at every pass).

Why (issue 15): each idle actor's watchdog woke it every 10 s, ≈ 50-300 µs of CPU a
look (a process switch in, a loop turn, a switch out; more with a thousand processes'
working sets competing for the caches): 1000 idle actors cost 0.006-0.03 of a core, and
twice that many twice as much. A pass here reads a few words per actor in one process.
"""

from __future__ import annotations

import logging
import select
import struct
from collections.abc import Callable, Iterable
from typing import Any

from actorq._core.parking import IDLE_BACKOFF
from actorq._core.protocol import C_BUSY, C_WATCH_MS, Ctl
from actorq._runtime.cells import ActorCell, CellState
from actorq._transport import control
from actorq._transport.channel import C_PARKED, C_WAKEUPS

logger = logging.getLogger(__name__)

SECOND_LOOK = 0.01  # seconds between the two looks at a suspect (as the watchdog's own)
_HEAD_TAIL = struct.Struct("<Q56xQ")  # a ring's head (bytes consumed) and tail (published)


def stranded(cell: ActorCell) -> bool:
    """True if a ring *cell*'s actor reads holds data it has not consumed."""
    for seg in list(cell.inbound.values()):
        try:
            head, tail = _HEAD_TAIL.unpack_from(seg.buf, 0)
        except (ValueError, TypeError):  # unmapped meanwhile: its actor is going
            continue
        if head != tail:
            return True
    return False


def suspect(cell: ActorCell) -> tuple[int, int] | None:
    """``(parked mark, wake-ups)`` if *cell*'s actor looks stranded: running, parked and
    idle, its own watchdog stopped, data in a ring; else None."""
    if cell.state != CellState.RUNNING or cell.ctrl is None:
        return None
    slots = cell.ctl.slots
    parked = slots[C_PARKED]
    if not parked & 1 or slots[C_WATCH_MS] or slots[C_BUSY] or not stranded(cell):
        return None
    return parked, slots[C_WAKEUPS]


class IdleSweep:
    """The sweep over *cells* (the runtime's, read on its loop thread), every *interval*."""

    def __init__(self, cells: Callable[[], Iterable[ActorCell]], park_timeout: float) -> None:
        self._cells = cells
        self.interval = park_timeout * IDLE_BACKOFF
        self._asked: dict[int, int] = {}  # actor id -> the park it was asked to look in
        self.passes = 0
        self.asked = 0  # WATCH messages sent (tests and metrics read it)
        self._loop: Any = None

    def start(self, loop: Any) -> None:
        """Schedule the first pass (loop thread)."""
        self._loop = loop
        loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        """One pass: remember the suspects, look at them again ``SECOND_LOOK`` later."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self.passes += 1
        found = []
        asked = self._asked
        for cell in list(self._cells()):
            seen = suspect(cell)
            if seen is not None and asked.get(cell.id) != seen[0]:
                found.append((cell, seen))
        if found:
            loop.call_later(SECOND_LOOK, self._second_look, found)
        if len(asked) > 64:  # forget the actors that parked again since, or are gone
            live = {cell.id: cell.ctl.slots[C_PARKED] for cell in self._cells()
                    if cell.state == CellState.RUNNING}
            self._asked = {k: v for k, v in asked.items() if live.get(k) == v}
        loop.call_later(self.interval, self.sweep)

    def _second_look(self, found: list[tuple[ActorCell, tuple[int, int]]]) -> None:
        for cell, seen in found:
            if suspect(cell) != seen:
                continue  # it woke, moved on or is gone: nothing was lost
            try:
                readable, _w, _x = select.select([cell.efd], [], [], 0)
            except (OSError, ValueError):
                continue
            if readable:
                continue  # rung, and about to wake: nothing was lost
            self._asked[cell.id] = seen[0]
            self.asked += 1
            try:
                control.send(cell.ctrl, (Ctl.WATCH,))
            except OSError:
                pass  # it is dying: its sentinel tells the loop
