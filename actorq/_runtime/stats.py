"""Statistics of the system and its actors: frozen snapshots, and the plain data of
``system.metrics()`` built from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import psutil

from actorq._core.protocol import C_HANDLED
from actorq._runtime.cells import ActorCell, CellState
from actorq._transport.channel import C_LOST, C_WAKEUPS, C_WINDOW, ControlBlock
from actorq._transport.ring import Ring, RingStatistics


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """An actor's mailbox: every channel into it, summed (``RingStatistics`` of each).

    Attributes:
        handled: messages the actor has handled, all channels.
        wakeups: times its doorbell woke it.
        lost_wakeups: park timeouts that found data waiting (must stay 0).
        window: its credit window per channel (the adaptive one when it is on).
        credits_in_use: messages sent to it and not handled yet (= ``in_flight``).
        in_flight, waiting_producers, waits, wait_seconds, backpressure: as in
            ``RingStatistics``, summed over its channels.
    """

    handled: int
    wakeups: int
    lost_wakeups: int
    window: int
    credits_in_use: int
    in_flight: int
    waiting_producers: int
    waits: int
    wait_seconds: float
    backpressure: int


@dataclass(frozen=True, slots=True)
class ActorStatistics:
    """One actor, as ``system.metrics()["actors"][name]`` shows it.

    Attributes:
        id: its actor id. state: its ``CellState``. pid: its process, when known.
        restarts: restarts so far. crashes: crashes by cause.
        mailbox: its mailbox figures (None once the system is closed).
        rss: resident memory of its process in bytes, cpu_seconds: user + system CPU
            time of its process (both None unless it is running).
    """

    id: int
    state: CellState
    pid: int | None
    restarts: int
    crashes: dict[str, int]
    mailbox: MailboxStatistics | None = None
    rss: int | None = None
    cpu_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plain entry of ``system.metrics()["actors"]`` (mailbox figures inlined)."""
        entry: dict[str, Any] = {"id": self.id, "state": self.state, "pid": self.pid,
                                 "restarts": self.restarts, "crashes": dict(self.crashes)}
        if self.mailbox is not None:
            entry.update(dataclasses.asdict(self.mailbox))
        if self.rss is not None:
            entry["rss"] = self.rss
        if self.cpu_seconds is not None:
            entry["cpu_seconds"] = self.cpu_seconds
        return entry


@dataclass(frozen=True, slots=True)
class SystemStatistics:
    """The system itself, as ``system.metrics()["system"]`` shows it.

    Attributes:
        run_id: the run's id (the prefix of its segments).
        events: counts of lifecycle events (``started``, ``restarted``, ``gave_up``,
            ``escalated``, ``crash:<cause>``).
        dead_letters: messages that went to the dead letters so far.
        closed: True once the system is closed.
        pending_replies, wakeups, lost_wakeups: the user process's hub (None once closed).
        oob_bytes_sent, oob_bytes_received: bytes of large buffers the user's process
            copied out of band into shared memory, and mapped from it, so far.
    """

    run_id: str
    events: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    closed: bool = False
    pending_replies: int | None = None
    wakeups: int | None = None
    lost_wakeups: int | None = None
    oob_bytes_sent: int = 0
    oob_bytes_received: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The plain ``system.metrics()["system"]`` (hub figures only while open)."""
        out = dataclasses.asdict(self)
        if self.closed:
            for key in ("pending_replies", "wakeups", "lost_wakeups"):
                del out[key]
        return out


def mailbox_statistics(cell: ActorCell, default_window: int) -> MailboxStatistics:
    """Read *cell*'s mailbox figures from its control block and ring headers."""
    totals = [0, 0, 0, 0.0, 0]
    for seg in list(cell.inbound.values()):
        ring = Ring(seg.buf)
        st: RingStatistics = ring.statistics()
        ring.release()
        totals[0] += st.in_flight
        totals[1] += st.waiting_producers
        totals[2] += st.waits
        totals[3] += st.wait_seconds
        totals[4] += st.backpressure
    slots = cell.ctl.slots
    in_flight = int(totals[0])
    return MailboxStatistics(slots[C_HANDLED], slots[C_WAKEUPS], slots[C_LOST],
                             slots[C_WINDOW] or default_window, in_flight, in_flight,
                             int(totals[1]), int(totals[2]), float(totals[3]), int(totals[4]))


def actor_statistics(cell: ActorCell, default_window: int, *,
                     with_mailbox: bool) -> ActorStatistics:
    """A snapshot of *cell* (its mailbox too while the system is open)."""
    mailbox = mailbox_statistics(cell, default_window) if with_mailbox else None
    rss = cpu = None
    if with_mailbox and cell.pid and cell.state == CellState.RUNNING:
        try:
            p = psutil.Process(cell.pid)
            rss = p.memory_info().rss
            cpu = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return ActorStatistics(cell.id, cell.state, cell.pid, cell.restarts, dict(cell.crashes),
                           mailbox, rss, cpu)


def hub_figures(ctl: ControlBlock) -> tuple[int, int]:
    """Wake-ups and lost wake-ups of a hub, from its control block."""
    return ctl.slots[C_WAKEUPS], ctl.slots[C_LOST]
