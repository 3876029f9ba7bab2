"""ActorSystem: the public facade; it holds a ``Runtime`` (``_runtime/runtime.py``).

Threads of the user's process::

    user thread(s)  ── spawn / calls / result() ──┐  (a sync waiter spins on the rings
                                                  │   itself for a moment, then sleeps)
    hub loop thread (uvloop) ◀────────────────────┘  doorbell, control sockets, process
                                                      sentinels: replies, channel set-up,
                                                      crashes, restarts, monitors
    starter thread                                    starts processes and warm spares,
                                                      sends boot messages (never the loop)

Shutdown order, written once (``close``): refuse new work, stop the starter, ask every
actor to stop, SIGKILL (with its process tree) what is still alive after
``stop_timeout``, join every process and spare, fail what is still pending, stop the
loop, unmap and unlink every segment of this run, close every fd.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import os
import platform
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from actorq._actorproc import preload as _preload
from actorq._config import SystemConfig
from actorq._core.actor import Actor
from actorq._core.events import ActorEvent
from actorq._core.ref import ActorRef
from actorq._errors import ActorStopped
from actorq._graph import run as _graph_run
from actorq._graph.graph import Graph, Node
from actorq._graph.result import GraphResult
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.pool import (
    SCALE_WINDOW,
    Pool,
    SupervisorHost,
    hang_options,
    parse_size,
    validate_options,
)
from actorq._runtime.runtime import LIVE_RUNTIMES, Runtime
from actorq._supervision.deadletters import DeadLetter
from actorq._supervision.supervisor import Supervisor

logger = logging.getLogger("actorq")

A = TypeVar("A", bound=Actor)


class ActorSystem:
    """Hosts actors, each in its own process; the root supervisor (``one_for_one``).

    Use it as ``with ActorSystem() as system:`` or ``async with ActorSystem() as system:``.
    Leaving the block stops every actor, joins every process and unlinks every
    shared-memory segment, also when the block raised.

    Args:
        workers: default parallelism for job graphs (default: every core).
        start_method: ``"forkserver"`` (default), ``"fork"`` or ``"spawn"``.
        **options: any field of :class:`SystemConfig` (timeouts, ring size, window, ...).
    """

    def __init__(self, *, workers: int | None = None, start_method: str | None = None,
                 **options: Any) -> None:
        _preload.exit_if_importing_main()
        config = SystemConfig()
        if start_method is not None:
            options["start_method"] = start_method
        self.config = config.replace(**options) if options else config
        self.workers = workers or os.cpu_count() or 1
        if platform.machine() not in ("x86_64", "AMD64"):
            logger.warning(
                "actorq's shared-memory rings rely on x86-64 store ordering; on %s their "
                "ordering is not guaranteed by pure Python (see docs/concepts.md)",
                platform.machine())
        self._runtime = Runtime(self.config)
        self._pools: weakref.WeakSet[Pool[Any]] = weakref.WeakSet()

    @property
    def run_id(self) -> str:
        """This system's run id: the prefix of its shared-memory segments."""
        run_id: str = self._runtime.run_id
        return run_id

    # -- spawning -------------------------------------------------------------------------

    def spawn(self, cls: type[A], *args: Any, name: str | None = None,
              restart: str = "permanent", **kwargs: Any) -> ActorRef[A]:
        """Start an actor of *cls* in its own process, under the root supervisor.

        Returns its ref at once; ``args``/``kwargs`` go to ``cls.__init__`` (in the
        actor's process), and calls made before the process is up are delivered once it
        is. ``restart`` is ``"permanent"`` (always restarted), ``"transient"`` (only
        after an abnormal end) or ``"temporary"`` (never). The keyword ``actor_options``
        (an :class:`ActorOptions`) overrides the class's ``actor_options``.

        Raises ``TypeError`` for a class that is not an ``Actor`` or arguments that
        cannot be pickled, ``ValueError`` for a name in use or an unknown restart type.
        """
        rt = self._runtime
        return rt.spawn_under(rt.root, cls, args, kwargs, name, restart)

    def supervisor(self, *, strategy: str = "one_for_one", max_restarts: int = 1,
                   within: float = 5.0, backoff: Backoff | None = None,
                   name: str | None = None) -> Supervisor:
        """Create a supervisor under the root; ``sup.spawn(...)`` adds actors to it.

        The defaults are OTP's: at most 1 restart within 5 seconds.

        More than *max_restarts* restarts within *within* seconds: the supervisor stops
        its children and fails, and its parent restarts it (or, at the root, gives up:
        its actors are stopped for good and their refs raise ``ActorStopped``).
        """
        rt = self._runtime
        return rt.supervisor_under(rt.root, strategy, max_restarts, within, backoff, name)

    def pool(self, cls: type[A], *args: Any, size: int | tuple[int, int] | None = None,
             routing: str = "round_robin", circuit: CircuitBreaker | None = None,
             retry: Retry | None = None, timeout: float | None = None,
             name: str | None = None, hang_margin: float = 1.0,
             max_restarts: int = 100, within: float = 10.0, idle_timeout: float = 5.0,
             oversubscribe: bool = False, replace_backoff: Backoff | None = None,
             scale_window: int = SCALE_WINDOW, restart_backoff: Backoff | None = None,
             **kwargs: Any) -> Pool[A]:
        """Start a pool of *size* actors of *cls* (``args``/``kwargs`` to each) and return it.

        *size*: an int, or ``(min, max)`` to scale with the load (never past the cores
        unless *oversubscribe*): it grows while calls wait for credit on its channels to
        the members, whose credit window is then *scale_window* messages, and shrinks
        after *idle_timeout* seconds with a member idle; default: one per core.
        *routing*: ``"round_robin"``, ``"least_loaded"``, ``"fastest"`` or ``"hash"``
        (each call then needs ``key=``).
        *circuit*: a ``CircuitBreaker`` copied for each member; *retry*: a ``Retry``;
        *timeout*: each call's deadline (seconds, all attempts); a member still running a
        call *hang_margin* seconds past the timeout is killed and restarted. Members are
        restarted after crashes by the pool's supervisor (*max_restarts* within *within*,
        counted per member), after a delay drawn from *restart_backoff* (default, as
        for any supervisor: the first restart within the window at once, the next ones
        after ``Backoff()``'s delays); a member it gives up on is replaced by a
        new one after a delay drawn from *replace_backoff*, so the pool keeps its size.
        See docs/concepts.md, "Pools and resilience".
        """
        if self._runtime.closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        validate_options(size, routing, circuit, retry, timeout, idle_timeout, oversubscribe)
        if restart_backoff is not None and not isinstance(restart_backoff, Backoff):
            msg = f"restart_backoff must be an actorq.Backoff or None, not {restart_backoff!r}"
            raise TypeError(msg)
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            msg = f"pool() needs a subclass of actorq.Actor, not {cls!r}"
            raise TypeError(msg)
        lo, hi = parse_size(size, oversubscribe)
        options = hang_options(cls, timeout, hang_margin, kwargs,
                               scale_window if hi > lo else None)
        pool_name = name or f"pool-{cls.__name__}-{len(self._pools) + 1}"
        rt = self._runtime
        sup = rt.supervisor_under(rt.root, "one_for_one", max_restarts, within,
                                  restart_backoff, pool_name, give_up_per_child=True)
        host = SupervisorHost(self, sup, member_options=options)
        try:
            new: Pool[A] = Pool(host, cls, args, kwargs, size=size, routing=routing,
                                circuit=circuit, retry=retry, timeout=timeout, name=pool_name,
                                idle_timeout=idle_timeout, oversubscribe=oversubscribe,
                                replace_backoff=replace_backoff)
        except BaseException:
            host.close()
            raise
        self._pools.add(new)
        return new

    # -- operations -----------------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the live actor registered as *name* (``KeyError`` if none)."""
        return self._runtime.lookup(name)

    def stop(self, ref: ActorRef[Any] | Supervisor, timeout: float | None = None) -> None:
        """Stop an actor (or a supervisor's whole subtree) for good.

        The actor finishes its current message, runs ``on_stop`` and exits; blocks until
        its process is gone (SIGKILL after the stop timeout). Messages still queued for it
        go to the dead letters; their callers get ``ActorStopped``. A ref (or supervisor)
        of another system raises ``ValueError``.
        """
        if isinstance(ref, Supervisor):
            if ref._ops is not self._runtime:
                msg = f"stop(): {ref!r} belongs to another actor system, not to {self!r}"
                raise ValueError(msg)
            self._runtime.stop_supervisor(ref)
            return
        self._runtime.stop_actor(self._own(ref, "stop"), timeout)

    def _own(self, ref: ActorRef[Any], what: str) -> int:
        """*ref*'s actor id; ``ValueError`` if *ref* is not an ``ActorRef`` of this system
        (two systems number their actors alike: it would name one of ours)."""
        if not isinstance(ref, ActorRef):
            msg = f"{what}() needs an ActorRef, not {ref!r}"
            raise TypeError(msg)
        if ref.run_id != self.run_id:
            msg = (f"{what}(): {ref!r} belongs to another actor system (run {ref.run_id}), "
                   f"not to this one (run {self.run_id}); use that system's {what}()")
            raise ValueError(msg)
        return ref.actor_id

    def subscribe(self, listener: Callable[[ActorEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` for every lifecycle event of every actor from now on.

        Events (:class:`ActorEvent`): ``started``, ``crashed`` (with its cause),
        ``restarted``, ``stopped``, ``gave_up``, ``escalated``. The listener runs on the
        system's loop thread: it must be quick and must not block. Returns a function
        that unsubscribes it.
        """
        return self._runtime.subscribe(listener)

    def dead_letters(self) -> list[DeadLetter]:
        """Messages that were never handled (their actor stopped) or that poisoned it."""
        return self._runtime.dead_letters()

    def metrics(self) -> dict[str, Any]:
        """A snapshot: per actor (by name) state, pid, restarts, crashes by cause, mailbox.

        ``system`` holds the counts of supervisor events (``restarted``, ``gave_up``,
        ``escalated``, ``crash:<cause>``), dead letters and the hub's own figures.
        """
        out: dict[str, Any] = self._runtime.metrics()
        out["pools"] = {p.name: dataclasses.asdict(p.statistics()) for p in list(self._pools)}
        return out

    def wait_ready(self, ref: ActorRef[Any], timeout: float | None = None) -> None:
        """Block until *ref*'s actor has started (constructor and ``on_start`` done)."""
        self._runtime.wait_ready(self._own(ref, "wait_ready"), timeout)

    def pid_of(self, ref: ActorRef[Any]) -> int | None:
        """The pid of the process running (or booting) *ref*'s actor; None without one.

        None between a crash and the start of its successor, and once it is stopped.
        """
        return self._runtime.pid_of(self._own(ref, "pid_of"))

    # -- job graphs -----------------------------------------------------------------------

    def run(self, graph: Graph, *, workers: int | None = None, journal: str | None = None,
            progress: bool | None = None, fail_fast: bool = False,
            keep: list[Node] | None = None, retry: Retry | None = None,
            max_memory: int | None = None) -> GraphResult:
        """Run a job graph across *workers* processes (default: every core).

        Validates first (cycles, unpicklable functions or arguments, bad options:
        ``GraphError`` naming the node, before anything runs), then blocks until every
        node has finished or failed. A failed task (after its retries) fails its
        dependents; independent branches go on, unless *fail_fast*. With
        ``journal="run.db"`` (SQLite), tasks already finished in an earlier run of the
        same graph are not run again. *progress* (default: when stderr is a terminal)
        draws a live line on stderr. Large results of intermediate nodes are freed once
        their dependents have them; list nodes in *keep* to read them from the result.
        *retry* (an ``actorq.Retry``) is the retry policy of every task that has neither
        ``retries=`` nor ``retry=`` of its own, and its backoff that of ``retries=N``.
        (A lost worker is restarted at once; the tasks it had are tried again.)
        *max_memory* caps the bytes they hold at once (default: half the available
        memory): at the cap, tasks that would add large results wait for room.
        """
        if self._runtime.closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        return _graph_run.run_graph(self, graph, loop=self._loop(), workers=workers,
                                          journal=journal,
                                          progress=progress, fail_fast=fail_fast, keep=keep,
                                          retry=retry, max_memory=max_memory)

    async def run_async(self, graph: Graph, **options: Any) -> GraphResult:
        """``await system.run_async(graph)``: :meth:`run` without blocking the event loop
        (and without a thread: the scheduler runs on the system's loop either way)."""
        if self._runtime.closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        return await _graph_run.run_graph_async(self, graph, loop=self._loop(),
                                                      **options)

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The system's loop (the hub's), where job graphs are scheduled."""
        loop = self._runtime.hub.loop
        if loop is None or loop.is_closed():
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        return loop

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ActorSystem:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> ActorSystem:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop every actor, join every process, unlink every segment; idempotent.

        Blocks up to the system's ``stop_timeout`` for actors to stop, then kills them.
        """
        self._runtime.close()
        for pool in list(self._pools):  # their timers and autoscalers end with it
            pool.halt()
        _graph_run.release_pools(self)  # and the job graphs' resizer thread

    def __repr__(self) -> str:
        state = "closed" if self._runtime.closing else "running"
        return f"<ActorSystem {self.run_id} {state} actors={self._runtime.actor_count}>"


# Open runtimes, not this facade: their threads keep them alive when the user drops a
# system without closing it; they are closed at exit (and by the leak guard).
_live_systems = LIVE_RUNTIMES


@atexit.register
def _close_live_systems() -> None:
    for system in list(_live_systems):
        try:
            system.close()
        except Exception:
            logger.exception("closing %r at exit failed", system)


ActorSystem.__module__ = "actorq"
