"""The graph's task workers: a system pool (``system.pool``) of ``TaskWorker`` members.

The pool layer does the supervision (a member killed by SIGKILL, or by the scheduler for
a task past its timeout, is restarted by the pool's supervisor; no restart limit that a
graph could reach) and the membership (``resize``). A worker is restarted at once
(``RESTART_BACKOFF``: the system's warm spare process takes over when one is ready), not
after a backoff: a lost worker is not a transient condition that waiting would cure, and
the tasks it had carry their own retry policy. Only a worker that dies again within
``WITHIN`` seconds of its restart waits (10 ms, doubling, at most 1 s), so that a worker
that cannot live does not spin. The scheduler does the routing: it
picks the member itself (expected finish time, credit) and calls it through
``Pool.call_member``, so the pool's statistics count the graph's batches.

The pool is kept by the system between runs, so a second run starts with warm workers
whose function caches are full; one run uses it at a time (a concurrent run makes a
private pool, stopped when it ends). Resizing blocks (a member leaving is stopped and
joined), so it is done by a thread of the pool's own, never by the scheduler: the
scheduler asks for a size and picks the new members up when they are there.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from actorq._graph.worker import TaskWorker
from actorq._resilience.backoff import Backoff, RestartAtOnce

if TYPE_CHECKING:
    from actorq._core.events import ActorEvent
    from actorq._core.ref import ActorRef
    from actorq._core.reply import Reply

logger = logging.getLogger(__name__)

# A worker that is starting (or restarting after a crash) is charged this many seconds
# of expected work, so that dispatch prefers live workers while it comes up.
START_PENALTY = 0.05
# The pool's supervisor never gives up on a task worker: a graph with many timeouts kills
# many workers, and each is replaced at once.
MAX_RESTARTS, WITHIN = 1_000_000_000, 1.0

# the same as a supervisor's default (backoff=None), said here where it matters most
RESTART_BACKOFF = RestartAtOnce(initial=0.01, maximum=1.0)
_private_ids = itertools.count(1)


class SystemOps(Protocol):
    """What the graph needs of the actor system (injected, not imported)."""

    config: Any

    @property
    def run_id(self) -> str:
        """The prefix of the run's shared-memory segments."""
        ...

    def pool(self, cls: type, *args: Any, size: int | tuple[int, int] | None = ...,
             name: str | None = ..., max_restarts: int = ..., within: float = ...,
             restart_backoff: Backoff | None = ..., **kwargs: Any) -> Any:
        """A new pool of *cls* actors (``actorq.Pool``)."""
        ...

    def pid_of(self, ref: ActorRef[Any]) -> int | None:
        """The pid of *ref*'s process."""
        ...

    def subscribe(self, listener: Callable[[ActorEvent], object]) -> Callable[[], None]:
        """Lifecycle events."""
        ...


class Worker:
    """The scheduler's view of one pool member."""

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
        """The member's actor id (events name it)."""
        return self.ref.actor_id


class Batch:
    """Tasks sent to one worker in one message."""

    __slots__ = ("est", "fused", "id", "reply", "sent", "tids", "timed_out", "worker")

    def __init__(self, bid: int, worker: Worker, tids: list[int], est: float,
                 sent: float, fused: set[int] | None = None) -> None:
        self.id = bid
        self.fused = fused or set()  # tasks fused in (fusion.py)
        self.worker = worker
        self.tids = tids
        self.est = est
        self.sent = sent
        self.reply: Reply[Any] | None = None
        self.timed_out = False



class WorkerPool:
    """The graph's view of its ``actorq.Pool`` (see the module docstring)."""

    def __init__(self, system: SystemOps, name: str) -> None:
        self.system = system
        self.pool = system.pool(TaskWorker, system.run_id, system.config.oob_threshold,
                                size=1, name=name, max_restarts=MAX_RESTARTS, within=WITHIN,
                                restart_backoff=RESTART_BACKOFF)
        self.workers: list[Worker] = []  # views of the members in use, in slot order
        self.lock = threading.Lock()  # held by the run using the pool
        self.broken = False  # a member is gone for good: the next run makes a new pool
        self._views: dict[int, Worker] = {}  # actor id -> view (kept across runs)
        self._leaving: set[int] = set()  # members asked to leave (shrink pending)
        self._dead: set[int] = set()
        self._closed = False
        self._cond = threading.Condition()
        self._target = 1
        self._resizer: threading.Thread | None = None
        self.error: BaseException | None = None  # why resizing failed (the system closed?)
        self.on_change: Callable[[], None] | None = None  # the run's: members changed
        self._up: dict[int, bool] = {}  # actor id -> its process is running
        # function digest -> seconds per task (wall, work), kept from run to run: a
        # later run's first batches are sized like the last ones, not sent one task each
        self.est: dict[bytes, float] = {}
        self.est_cpu: dict[bytes, float] = {}
        self._unsubscribe = system.subscribe(self._on_event)

    # -- membership ---------------------------------------------------------------------

    def sync(self, now: float) -> list[Worker]:
        """Bring ``workers`` up to the pool's members; return the views that are new."""
        new = []
        workers = []
        for ref in self.pool.members():
            aid = ref.actor_id
            if aid in self._leaving or aid in self._dead:
                continue
            view = self._views.get(aid)
            if view is None:
                view = self._views[aid] = Worker(ref, now)
                if self._up.get(aid):
                    view.up, view.penalty_until = True, 0.0
                new.append(view)
            workers.append(view)
        self.workers = workers
        return new

    def grow_to(self, count: int, now: float) -> None:
        """Ask for *count* usable members: members asked to leave come back first (unless
        the pool has stopped them meanwhile), new ones appear in ``workers`` later."""
        with self._cond:
            if self._leaving and len(self.workers) < count:
                back = set(list(self._leaving)[: count - len(self.workers)])
                self._leaving -= back
                self._target += len(back)
        self.sync(now)
        if count + len(self._dead) > self._target:
            self._want(count + len(self._dead))

    def retire(self, worker: Worker) -> None:
        """Take *worker* out of use and ask the pool to retire that very member."""
        self.workers.remove(worker)
        self._leaving.add(worker.actor_id)
        self._want(self._target - 1)

    def _on_event(self, event: ActorEvent) -> None:
        """Lifecycle events (the system's loop thread): members going up and down."""
        if event.cls_name != TaskWorker.__name__:
            return
        aid = event.actor_id
        if event.kind == "started":
            self._up[aid] = True
            view = self._views.get(aid)
            if view is not None:
                view.up = True
                view.penalty_until = 0.0
                notify = self.on_change  # the run's: a task may wait for a live worker
                if notify is not None:
                    notify()
        elif event.kind in ("crashed", "stopped", "gave_up"):
            self._up[aid] = False
            view = self._views.get(aid)
            if view is not None:
                view.up = False
                view.known.clear()  # a fresh process has an empty function cache
                view.penalty_until = time.monotonic() + START_PENALTY

    def lost(self, worker: Worker) -> None:
        """*worker*'s actor is gone for good (could not start, or stopped)."""
        self._dead.add(worker.actor_id)
        self.broken = True
        if worker in self.workers:
            self.workers.remove(worker)

    def _want(self, size: int) -> None:
        with self._cond:
            self._target = max(1, size)
            if self._resizer is None:
                self._resizer = threading.Thread(target=self._resize_loop,
                                                 name="actorq-graph-resize", daemon=True)
                self._resizer.start()
            self._cond.notify()

    def _resize_loop(self) -> None:
        applied = self.pool.size
        while True:
            with self._cond:
                while self._target == applied and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                target = self._target
                leaving = [self._views[aid].ref
                           for aid in self._leaving][: max(0, applied - target)]
            try:
                for ref in leaving:  # the members taken out of use, wherever they sit
                    self._retire_member(ref)
                self.pool.resize(target)  # grows, or shrinks by what is left (least busy)
            except Exception as exc:  # the system closed meanwhile, or cannot start actors
                logger.debug("resizing the graph workers failed", exc_info=True)
                self.error = exc
                notify = self.on_change
                if notify is not None:
                    notify()
                return
            applied = target
            members = {r.actor_id for r in self.pool.members()}
            self._leaving &= members
            notify = self.on_change
            if notify is not None:
                notify()

    def _retire_member(self, ref: ActorRef[Any]) -> None:
        try:
            self.pool.retire(ref)
        except ValueError:
            pass  # not a member any more (replaced), or the last one: resize decides

    # -- calls and kills ----------------------------------------------------------------

    def call(self, worker: Worker, method: str, *args: Any,
             then: Callable[[Any, BaseException | None], object] | None = None
             ) -> Reply[Any]:
        """Call *method* on *worker* (the scheduler's choice), counted by the pool;
        *then(value, exc)* is told the outcome (``Pool.call_member``)."""
        return self.pool.call_member(  # type: ignore[no-any-return]
            worker.ref, method, *args, then=then)

    def kill(self, worker: Worker) -> None:
        """SIGKILL *worker*'s process (the pool's supervisor starts a fresh one at once)."""
        pid = self.system.pid_of(worker.ref)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def halt(self) -> None:
        """The system is closing and stops the members itself: end the resizer thread
        (it would wait for a new target forever, holding this pool and the system)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._unsubscribe()

    def close(self) -> None:
        """Stop every worker; idempotent (blocks until they are gone)."""
        if self._closed:
            return
        self.halt()
        try:
            self.pool.stop()
        except Exception:
            logger.debug("stopping the graph workers failed", exc_info=True)
        self.workers.clear()


_pools: weakref.WeakKeyDictionary[Any, WorkerPool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def release_pools(system: SystemOps) -> None:
    """*system* is closing: its shared pool ends with it (private ones end with their run)."""
    with _pools_lock:
        pool = _pools.pop(system, None)
    if pool is not None:
        pool.halt()


def acquire_pool(system: SystemOps) -> tuple[WorkerPool, bool]:
    """The system's shared pool, locked for this run; or a private one (True: close it)."""
    with _pools_lock:
        pool = _pools.get(system)
        if pool is not None and pool.broken and pool.lock.acquire(blocking=False):
            threading.Thread(target=pool.close, name="actorq-graph-close", daemon=True).start()
            pool = None
        if pool is None or pool._closed:
            pool = _pools[system] = WorkerPool(system, "graph-workers")
    if pool.lock.acquire(blocking=False):
        return pool, False
    private = WorkerPool(system, f"graph-workers-private-{next(_private_ids)}")
    private.lock.acquire()
    return private, True
