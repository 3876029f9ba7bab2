"""Actor cells: what the system keeps of one actor across its incarnations."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from actorq._config import SystemConfig
from actorq._core.actor import ActorOptions
from actorq._supervision.policy import RestartType
from actorq._supervision.supervisor import Supervisor
from actorq._transport.channel import ControlBlock
from actorq._transport.ring import Ring
from actorq._transport.shm import Segment

# Bytes of a new ring touched up front (its header and where its first messages go);
# the rest is allocated when first written. Touching all of both 1 MiB rings cost
# ≈ 1.7 ms per spawn, and 2 GiB of memory for a thousand idle actors.
RING_PREFAULT = 64 * 1024


class CellState(StrEnum):
    """Where an actor is in its life (``metrics()["actors"][name]["state"]``)."""

    STARTING = "starting"  # its process is being started, or booting
    RUNNING = "running"  # up: constructor and on_start done
    RESTARTING = "restarting"  # died (or stopped for a group restart); starts again soon
    STOPPING = "stopping"  # asked to stop for good; its process is still alive
    STOPPED = "stopped"  # gone for good
    FAILED = "failed"  # gone for good: it could not start


DEAD_STATES = (CellState.STOPPED, CellState.FAILED)


@dataclass(eq=False)
class ActorCell:
    """What the system keeps of one actor across its incarnations."""

    id: int
    name: str
    cls_name: str
    handlers: frozenset[str]
    restart: RestartType
    options: ActorOptions
    spec: Segment
    spec_size: int
    ctl: ControlBlock
    efd: int
    supervisor: Supervisor  # the Supervisor this actor is a child of
    kids: Supervisor | None = None  # children it spawned itself (context.spawn)
    inbound: dict[int, Segment] = field(default_factory=dict)  # rings it reads, by sender
    outbound: dict[int, str] = field(default_factory=dict)  # rings it writes, by target
    state: CellState = CellState.STARTING
    generation: int = 0  # bumped at every planned start: a stale start is dropped
    restarts: int = 0
    pid: int | None = None
    proc: Any = None
    ctrl: Any = None
    killed_for: str | None = None  # "hang" / "oom" when actorq killed it
    reported: str | None = None  # "exception" / "start" when it said why before dying
    failed_start: tuple[BaseException, str] | None = None
    finish_why: str = "it was stopped"
    plan: Any = None
    poison_key: tuple[int, int, int] | None = None
    poison_count: int = 0
    crashes: Counter[str] = field(default_factory=Counter)
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        """``"Counter 'c'"``."""
        return f"{self.cls_name} {self.name!r}"

    def alive(self) -> bool:
        """True while a process of it runs (or is being started)."""
        return self.proc is not None


@dataclass(eq=False)
class RestartPlan:
    """Cells a supervisor restarts together: stop the live ones, then start all."""

    cells: list[ActorCell]
    delay: float
    waiting: set[int] = field(default_factory=set)


def new_ring(config: SystemConfig, name: str) -> Segment:
    """Create the shared-memory segment of a new, empty ring called *name*."""
    seg = Segment.create(name, Ring.size_for(config.ring_size), prefault=RING_PREFAULT)
    Ring(seg.buf, init=True).release()
    return seg
