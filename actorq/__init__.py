"""actorq: actors in their own processes, talking through shared-memory mailboxes.

Everything public is importable from here; see ``docs/`` for the guide.
"""

from __future__ import annotations

import logging

from actorq._actor import Actor, ActorContext
from actorq._config import SystemConfig
from actorq._errors import (
    ActorCrashed,
    ActorqError,
    ActorStopped,
    Backpressure,
    CallTimeout,
    CircuitOpen,
    DeadlockError,
    GraphError,
    RemoteTraceback,
)
from actorq._ref import ActorRef
from actorq._reply import Reply
from actorq._system import ActorSystem

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "ActorqError",
    "Backpressure",
    "CallTimeout",
    "CircuitOpen",
    "DeadlockError",
    "GraphError",
    "RemoteTraceback",
    "Reply",
    "SystemConfig",
]

for _name in ("ActorContext", "SystemConfig"):
    globals()[_name].__module__ = "actorq"

logging.getLogger("actorq").addHandler(logging.NullHandler())
