"""actorq: actors in their own processes, talking through shared-memory mailboxes.

Everything public is importable from here; see ``docs/`` for the guide.
"""

from __future__ import annotations

import logging

from actorq._config import SystemConfig
from actorq._core.actor import Actor, ActorContext, ActorOptions
from actorq._core.events import ActorEvent, EventKind
from actorq._core.ref import ActorRef, ChannelStatistics
from actorq._core.reply import Reply
from actorq._core.waiting import as_completed, wait
from actorq._errors import (
    ActorCrashed,
    ActorqError,
    ActorStopped,
    Backpressure,
    CallTimeout,
    CircuitOpen,
    DeadlockError,
    DecodeError,
    EncodeError,
    GraphError,
    InitializerFailed,
    MessageTooLarge,
    RemoteTraceback,
    StartTimeout,
)
from actorq._executor.executor import Executor
from actorq._graph import Graph, GraphResult, GraphStats, Node, TaskStats
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry, RetryBudget
from actorq._supervision.deadletters import DeadLetter
from actorq._supervision.supervisor import Supervisor, SupervisorStatistics
from actorq._system import ActorSystem

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorEvent",
    "ActorOptions",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "ActorqError",
    "Backoff",
    "Backpressure",
    "CallTimeout",
    "ChannelStatistics",
    "CircuitBreaker",
    "CircuitOpen",
    "DeadLetter",
    "DeadlockError",
    "DecodeError",
    "EncodeError",
    "EventKind",
    "Executor",
    "Graph",
    "GraphError",
    "GraphResult",
    "GraphStats",
    "InitializerFailed",
    "MessageTooLarge",
    "Node",
    "RemoteTraceback",
    "Reply",
    "Retry",
    "RetryBudget",
    "StartTimeout",
    "Supervisor",
    "SupervisorStatistics",
    "SystemConfig",
    "TaskStats",
    "as_completed",
    "wait",
]

for _name in ("ActorContext", "ActorEvent", "EventKind", "SupervisorStatistics",
              "SystemConfig", "as_completed", "wait"):
    globals()[_name].__module__ = "actorq"

logging.getLogger("actorq").addHandler(logging.NullHandler())
