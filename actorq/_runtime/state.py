"""What the runtime's parts share: the cells, the names, the hub, the closing flags.

``Runtime`` (runtime.py) makes one ``RuntimeState`` and hands it to each of its parts:
``Launcher`` (launch.py: processes and warm spares), ``Deaths`` (deaths.py: deaths and
restarts), ``Stopper`` (stopping.py: stops, gone for good, teardown) and ``Requests``
(requests.py: control messages from actors). Each part owns the rest of its state; what
one part needs of another is handed to it as a reference when it is made.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actorq._config import SystemConfig
from actorq._core.events import ActorEvent, EventBus, EventKind
from actorq._runtime.cells import ActorCell
from actorq._runtime.systemhub import SystemHub
from actorq._supervision.deadletters import DeadLetters


@dataclass(eq=False)
class RuntimeState:
    """The state every part of the runtime reads; ``closing``/``closed``/``unguarded``
    change (under ``lock`` for ``closing``), the containers are mutated in place."""

    config: SystemConfig
    run_id: str
    hub: SystemHub
    cells: dict[int, ActorCell]
    dead: DeadLetters
    bus: EventBus
    lock: threading.RLock = field(default_factory=threading.RLock)
    names: dict[str, int] = field(default_factory=dict)
    # cells with a hang timeout or a memory limit: the only ones ``_monitor`` visits
    # (a walk over 1000 cells every 50 ms cost 1 % of a core at idle)
    monitored: dict[int, ActorCell] = field(default_factory=dict)
    finished: deque[int] = field(default_factory=deque)  # ids gone for good, oldest first
    closing: bool = False  # close() began
    closed: bool = False  # close() is done with the processes and the hub
    unguarded: str | None = None  # why no actor can start (an unguarded main)

    def on_loop(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread soon (nothing once the loop is closed)."""
        loop = self.hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def publish(self, kind: EventKind, cell: ActorCell, cause: str | None = None,
                detail: str = "", supervisor: str | None = None) -> None:
        """Publish a lifecycle event of *cell* (built only when someone listens)."""
        if self.bus.active:
            self.bus.publish(ActorEvent(kind, cell.id, cell.name, cell.cls_name, cell.pid,
                                        cause, detail, cell.restarts, supervisor))
