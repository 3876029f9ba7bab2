"""The graph's task workers: a supervised set of ``TaskWorker`` actors, one per system.

Workers are spawned under a supervisor of their own that always restarts them (a
worker killed by SIGKILL, or by the scheduler for a task past its timeout, comes back
at once: no backoff, no restart limit). The set is kept by the system between runs, so
a second run starts with warm workers whose function caches are full; one run uses it
at a time (a concurrent run makes a private set, closed when it ends).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from actorq._graph.worker import TaskWorker
from actorq._resilience.backoff import Backoff

if TYPE_CHECKING:
    from actorq._core.events import ActorEvent
    from actorq._core.ref import ActorRef

logger = logging.getLogger(__name__)

# A worker that is starting (or restarting after a crash) is charged this many seconds
# of expected work, so that dispatch prefers live workers while it comes up.
START_PENALTY = 0.05


class SystemOps(Protocol):
    """What the graph needs of the actor system (injected, not imported)."""

    config: Any

    @property
    def run_id(self) -> str:
        """The prefix of the run's shared-memory segments."""
        ...

    def supervisor(self, *, strategy: str = ..., max_restarts: int = ..., within: float = ...,
                   backoff: Backoff | None = ..., name: str | None = ...) -> Any:
        """A new supervisor under the root."""
        ...

    def pid_of(self, ref: ActorRef[Any]) -> int | None:
        """The pid of *ref*'s process."""
        ...

    def stop(self, ref: Any, timeout: float | None = None) -> None:
        """Stop an actor or a supervisor."""
        ...

    def subscribe(self, listener: Callable[[ActorEvent], object]) -> Callable[[], None]:
        """Lifecycle events."""
        ...


class Worker:
    """The scheduler's view of one task worker."""

    __slots__ = ("batches", "busy", "idle_since", "known", "load", "penalty_until", "ref",
                 "speed", "up")

    def __init__(self, ref: ActorRef[Any], now: float) -> None:
        self.ref = ref
        self.batches: dict[int, Any] = {}  # batch id -> batch, in flight
        self.load = 0.0  # estimated seconds of work in flight
        self.speed = 1.0  # measured / estimated time (slow or contended workers > 1)
        self.known: set[bytes] = set()  # function digests it has cached
        self.penalty_until = now + START_PENALTY
        self.busy = 0.0  # seconds of task time it ran in this run
        self.idle_since = now  # when its last batch came back
        self.up = False  # its process is running (a "started" event came, no crash since)

    @property
    def actor_id(self) -> int:
        """The worker actor's id (events name it)."""
        return self.ref.actor_id


class WorkerPool:
    """Task workers of one system (see the module docstring)."""

    def __init__(self, system: SystemOps, name: str) -> None:
        self.system = system
        self.sup = system.supervisor(strategy="one_for_one", max_restarts=1_000_000_000,
                                     within=1.0, backoff=Backoff(initial=0.0, maximum=0.0),
                                     name=name)
        self.workers: list[Worker] = []
        self.lock = threading.Lock()  # held by the run using the pool
        self._closed = False

    def grow(self, count: int, now: float) -> list[Worker]:
        """Spawn *count* more workers (they take calls at once, and run them once up)."""
        new = []
        for _ in range(count):
            ref = self.sup.spawn(TaskWorker, self.system.run_id,
                                 self.system.config.oob_threshold)
            new.append(Worker(ref, now))
        self.workers.extend(new)
        return new

    def kill(self, worker: Worker) -> None:
        """SIGKILL *worker*'s process (its supervisor starts a fresh one at once)."""
        pid = self.system.pid_of(worker.ref)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def retire(self, worker: Worker, *, kill: bool = False) -> None:
        """Remove *worker* from the pool and stop it in the background."""
        if worker in self.workers:
            self.workers.remove(worker)
        if kill:
            self.kill(worker)
        threading.Thread(target=self._stop_quietly, args=(worker.ref,),
                         name="actorq-graph-retire", daemon=True).start()

    def _stop_quietly(self, ref: ActorRef[Any]) -> None:
        try:
            self.system.stop(ref)
        except Exception:  # the system closed meanwhile: nothing left to stop
            logger.debug("retiring a graph worker failed", exc_info=True)

    def close(self) -> None:
        """Stop every worker; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.system.stop(self.sup)
        except Exception:
            logger.debug("stopping the graph workers failed", exc_info=True)
        self.workers.clear()


_pools: weakref.WeakKeyDictionary[Any, WorkerPool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def acquire_pool(system: SystemOps) -> tuple[WorkerPool, bool]:
    """The system's shared pool, locked for this run; or a private one (True: close it)."""
    with _pools_lock:
        pool = _pools.get(system)
        if pool is None or pool._closed:
            pool = _pools[system] = WorkerPool(system, "graph-workers")
    if pool.lock.acquire(blocking=False):
        return pool, False
    private = WorkerPool(system, "graph-workers-private")
    private.lock.acquire()
    return private, True
