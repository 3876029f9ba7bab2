"""Lifecycle events of actors, published to listeners: ``system.subscribe(listener)``.

The runtime publishes an :class:`ActorEvent` when an actor's process is up (``started``,
also after each restart: ``restarts`` counts them), when it died (``crashed``, with its
cause), when its supervisor decided to restart it (``restarted``), gave up on it
(``gave_up``) or escalated (``escalated``), and when it is gone for good (``stopped``).
Metrics are the first listener; pools and the graph scheduler follow.

Events are built and published only on the system's loop thread, never on the message
path: a call or a tell costs the same with or without listeners. A listener must be
quick and must not block (it runs on that loop); an exception it raises is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

logger = logging.getLogger(__name__)


class CrashCause(StrEnum):
    """Why an actor's process died (the table above). Compares equal to its string."""

    SIGNAL = "signal"
    EXIT = "exit"
    EXCEPTION = "exception"
    HANG = "hang"
    OOM = "oom"
    START = "start"
    LOST = "lost"


CAUSES = frozenset(cause.value for cause in CrashCause)


class EventKind(StrEnum):
    """What happened to an actor. Compares equal to its string (``"crashed"``)."""

    STARTED = "started"  # its process is up: constructor and on_start done
    CRASHED = "crashed"  # its process died (cause says why)
    RESTARTED = "restarted"  # its supervisor decided to restart it (after a backoff)
    STOPPED = "stopped"  # gone for good: stopped, not restarted, or failed to start
    GAVE_UP = "gave_up"  # its supervisor passed its restart intensity and gave up on it
    ESCALATED = "escalated"  # ... and failed in turn, escalating to its own parent


@dataclass(frozen=True, slots=True)
class ActorEvent:
    """One lifecycle event of one actor.

    Attributes:
        kind: what happened.
        actor_id: the actor's id (``ref.actor_id``); 0 for a supervisor's own event.
        name: the actor's name (or the supervisor's, for a supervisor's own event).
        cls_name: the actor's class name ("" for a supervisor).
        pid: its process id when known.
        cause: for ``crashed`` (and a ``stopped`` after a crash): ``"signal"``,
            ``"exit"``, ``"exception"``, ``"hang"``, ``"oom"``, ``"start"`` or ``"lost"``.
        detail: a sentence for people ("was killed by SIGKILL").
        restarts: how many times this actor has been restarted so far.
        supervisor: the name of the supervisor that decided (``restarted``, ``gave_up``,
            ``escalated``), else None.
        time: ``time.monotonic()`` when it was published.
    """

    kind: EventKind
    actor_id: int
    name: str
    cls_name: str = ""
    pid: int | None = None
    cause: str | None = None
    detail: str = ""
    restarts: int = 0
    supervisor: str | None = None
    time: float = field(default_factory=time.monotonic)


Listener = Callable[[ActorEvent], object]


class EventBus:
    """Listeners of lifecycle events; ``publish`` calls each, in subscription order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # a tuple, replaced on (un)subscribe: publish reads it without the lock
        self._listeners: tuple[Listener, ...] = ()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event from now on; return an unsubscriber."""
        if not callable(listener):
            msg = f"a listener must be callable, not {listener!r}"
            raise TypeError(msg)
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    @property
    def active(self) -> bool:
        """True when someone listens (build an event only then)."""
        return bool(self._listeners)

    def publish(self, event: ActorEvent) -> None:
        """Hand *event* to every listener; one that raises is logged and skipped."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("a listener of actor events raised on %r", event)


@dataclass
class EventCounts:
    """The first listener: counts events for ``system.metrics()["system"]["events"]``.

    Keys: ``started``, ``restarted``, ``gave_up``, ``escalated`` and ``crash:<cause>``
    (``stopped`` is not counted: every actor ends so).
    """

    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, event: ActorEvent) -> None:
        kind = event.kind
        if kind is EventKind.CRASHED:
            self.counts[f"crash:{event.cause}"] += 1
        elif kind is not EventKind.STOPPED:
            self.counts[kind.value] += 1
