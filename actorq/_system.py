"""ActorSystem: the public facade over the runtime (``_runtime``).

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
import concurrent.futures
import dataclasses
import logging
import os
import platform
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
import uvloop

from actorq import _serialization
from actorq._actorproc import host as _host
from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.actor import Actor, handler_names
from actorq._core.events import ActorEvent
from actorq._core.ref import ActorRef, register_hub, unregister_hub
from actorq._errors import ActorStopped
from actorq._ids import new_run_prefix
from actorq._process.spares import WarmPool
from actorq._process.spawn import get_context
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.pool import Pool, SupervisorHost, hang_options, validate_options
from actorq._runtime.runtime import DEAD_STATES, ActorCell, Runtime, kill_tree
from actorq._runtime.systemhub import SystemHub
from actorq._supervision.deadletters import DeadLetter
from actorq._supervision.policy import ActorOptions
from actorq._supervision.supervisor import Supervisor
from actorq._transport.channel import (
    C_HANDLED,
    C_LOST,
    C_WAKEUPS,
    C_WINDOW,
    CTL_SIZE,
    ControlBlock,
)
from actorq._transport.ring import (
    H_BACKPRESSURE,
    H_HANDLED,
    H_SENT,
    H_WAIT_NS,
    H_WAITING,
    H_WAITS,
    Ring,
)
from actorq._transport.shm import Segment, sweep, unlink_prefix

logger = logging.getLogger("actorq")

A = TypeVar("A", bound=Actor)


class ActorSystem(Runtime):
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
        config = SystemConfig()
        if start_method is not None:
            options["start_method"] = start_method
        self.config = config.replace(**options) if options else config
        self.workers = workers or os.cpu_count() or 1
        self._closing = False
        self._closed = False
        if platform.machine() not in ("x86_64", "AMD64"):
            logger.warning(
                "actorq's shared-memory rings rely on x86-64 store ordering; on %s their "
                "ordering is not guaranteed by pure Python (see docs/concepts.md)",
                platform.machine())
        self._init_runtime()
        self._pools: weakref.WeakSet[Pool[Any]] = weakref.WeakSet()
        sweep()  # what dead runs left in /dev/shm
        self.run_id = new_run_prefix()
        self._ctx = get_context(self.config.start_method)
        ctl_seg = Segment.create(self.run_id + "ctl0", CTL_SIZE)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._hub = SystemHub(self.run_id, self.config, ControlBlock(ctl_seg), efd,
                              self._state_of)
        register_hub(self.run_id, self._hub)
        self._root = Supervisor(self, "root", max_restarts=self.config.root_max_restarts,
                                within=self.config.root_within, give_up_per_child=True,
                                spawner=self)
        self._spares = WarmPool(self._ctx, _host.main, self.config.warm_spares)
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "actorq-starter")
        self._starter.submit(self._spares.refill)
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="actorq-hub", daemon=True)
        self._thread.start()
        self._loop_ready.wait(10)
        _live_systems.add(self)

    def _run_loop(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        hub = self._hub
        hub.loop = loop
        hub.loop_thread_id = threading.get_ident()
        loop.add_reader(hub.efd, hub.on_wake)
        hub.park()
        loop.call_later(self.config.park_timeout, hub.watchdog, lambda: bool(hub.ring_spinners),
                        hub.on_wake, lambda: not self._closing)
        loop.call_later(self.config.monitor_interval, self._monitor)
        self._loop_ready.set()
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(hub.efd)
            loop.close()

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
        return self._spawn_under(self._root, cls, args, kwargs, name, restart)

    def _spawn_under(self, supervisor: Supervisor, cls: type[A], args: tuple[Any, ...],
                     kwargs: dict[str, Any], name: str | None,
                     restart: str) -> ActorRef[A]:
        self._check_open()
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            msg = f"spawn() needs a subclass of actorq.Actor, not {cls!r}"
            raise TypeError(msg)
        options = kwargs.pop("actor_options", None) or getattr(cls, "actor_options", None)
        if options is None:
            options = ActorOptions()
        if not isinstance(options, ActorOptions):
            msg = f"actor_options must be an actorq.ActorOptions, not {options!r}"
            raise TypeError(msg)
        _serialization.check_picklable(f"{cls.__name__}()", args, kwargs)
        try:
            blob = _serialization.dumps_code((cls, args, kwargs))
        except Exception as exc:
            msg = f"cannot send {cls.__name__} or its arguments to a new process: {exc}"
            raise TypeError(msg) from exc
        return self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart,
                                supervisor, options)

    def supervisor(self, *, strategy: str = "one_for_one", max_restarts: int = 1,
                   within: float = 5.0, backoff: Backoff | None = None,
                   name: str | None = None) -> Supervisor:
        """Create a supervisor under the root; ``sup.spawn(...)`` adds actors to it.

        The defaults are OTP's: at most 1 restart within 5 seconds.

        More than *max_restarts* restarts within *within* seconds: the supervisor stops
        its children and fails, and its parent restarts it (or, at the root, gives up:
        its actors are stopped for good and their refs raise ``ActorStopped``).
        """
        return self._supervisor_under(self._root, strategy, max_restarts, within, backoff,
                                      name)

    def pool(self, cls: type[A], *args: Any, size: int | tuple[int, int] | None = None,
             routing: str = "round_robin", circuit: CircuitBreaker | None = None,
             retry: Retry | None = None, timeout: float | None = None,
             name: str | None = None, hang_margin: float = 1.0,
             max_restarts: int = 100, within: float = 10.0, idle_timeout: float = 5.0,
             oversubscribe: bool = False, **kwargs: Any) -> Pool[A]:
        """Start a pool of *size* actors of *cls* (``args``/``kwargs`` to each) and return it.

        *size*: an int, or ``(min, max)`` to scale with the load (never past the cores
        unless *oversubscribe*); default: one per core. *routing*: ``"round_robin"``,
        ``"least_loaded"``, ``"fastest"`` or ``"hash"`` (each call then needs ``key=``).
        *circuit*: a ``CircuitBreaker`` copied for each member; *retry*: a ``Retry``;
        *timeout*: each call's deadline (seconds, all attempts); a member still running a
        call *hang_margin* seconds past the timeout is killed and restarted. Members are
        restarted after crashes by the pool's supervisor (*max_restarts* within *within*).
        See docs/concepts.md, "Pools and resilience".
        """
        self._check_open()
        validate_options(size, routing, circuit, retry, timeout, idle_timeout, oversubscribe)
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            msg = f"pool() needs a subclass of actorq.Actor, not {cls!r}"
            raise TypeError(msg)
        options = hang_options(cls, timeout, hang_margin, kwargs)
        pool_name = name or f"pool-{cls.__name__}-{len(self._pools) + 1}"
        host = SupervisorHost(self, pool_name, max_restarts=max_restarts, within=within,
                              member_options=options)
        new: Pool[A] = Pool(host, cls, args, kwargs, size=size, routing=routing,
                            circuit=circuit, retry=retry, timeout=timeout, name=pool_name,
                            idle_timeout=idle_timeout, oversubscribe=oversubscribe)
        self._pools.add(new)
        return new

    def _supervisor_under(self, parent: Supervisor, strategy: str, max_restarts: int,
                          within: float, backoff: Backoff | None,
                          name: str | None) -> Supervisor:
        self._check_open()
        with self._lock:
            name = name or f"supervisor-{len(parent.children) + 1}"
            return Supervisor(self, name, strategy=strategy, max_restarts=max_restarts,
                              within=within, backoff=backoff, parent=parent, spawner=self)

    def _stop_supervisor(self, sup: Supervisor) -> None:
        cells = sup.cells()
        sup.mark_stopped()
        if sup.parent is not None:
            sup.parent.remove(sup)
        for cell in reversed(cells):
            self._stop_cell(cell, None)

    # -- operations -----------------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the live actor registered as *name* (``KeyError`` if none)."""
        with self._lock:
            cell = self._cells.get(self._names.get(name, -1))
        if cell is None or cell.state in DEAD_STATES:
            msg = f"no actor named {name!r}"
            raise KeyError(msg)
        return ActorRef(self._hub, self.run_id, cell.id, cell.name, cell.handlers,
                        cell.cls_name)

    def stop(self, ref: ActorRef[Any] | Supervisor, timeout: float | None = None) -> None:
        """Stop an actor (or a supervisor's whole subtree) for good.

        The actor finishes its current message, runs ``on_stop`` and exits; blocks until
        its process is gone (SIGKILL after the stop timeout). Messages still queued for it
        go to the dead letters; their callers get ``ActorStopped``.
        """
        if isinstance(ref, Supervisor):
            self._stop_supervisor(ref)
            return
        cell = self._cells.get(ref.actor_id)
        if cell is not None:
            self._stop_cell(cell, timeout)

    def _stop_cell(self, cell: ActorCell, timeout: float | None) -> None:
        if cell.state in DEAD_STATES:
            return
        deadline = Deadline.after(timeout if timeout is not None else self.config.stop_timeout)
        cell.ready.wait(deadline.remaining())  # let a starting process come up first
        done = threading.Event()

        def request() -> None:
            self.finish_group([cell], "it was stopped")
            done.set()

        self._on_loop(request)
        done.wait(5.0)
        if not cell.exited.wait(deadline.remaining() + 0.5):
            self._kill(cell)
        cell.exited.wait(self.config.stop_timeout)
        settled = threading.Event()
        self._on_loop(settled.set)  # the loop has handled the exit
        settled.wait(2.0)

    def subscribe(self, listener: Callable[[ActorEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` for every lifecycle event of every actor from now on.

        Events (:class:`ActorEvent`): ``started``, ``crashed`` (with its cause),
        ``restarted``, ``stopped``, ``gave_up``, ``escalated``. The listener runs on the
        system's loop thread: it must be quick and must not block. Returns a function
        that unsubscribes it.
        """
        return self._bus.subscribe(listener)

    def dead_letters(self) -> list[DeadLetter]:
        """Messages that were never handled (their actor stopped) or that poisoned it."""
        return self._dead.snapshot()

    def metrics(self) -> dict[str, Any]:
        """A snapshot: per actor (by name) state, pid, restarts, crashes by cause, mailbox.

        ``system`` holds the counts of supervisor events (``restarted``, ``gave_up``,
        ``escalated``, ``crash:<cause>``), dead letters and the hub's own figures.
        """
        actors: dict[str, Any] = {}
        for cell in list(self._cells.values()):
            entry: dict[str, Any] = {"id": cell.id, "state": cell.state, "pid": cell.pid,
                                     "restarts": cell.restarts, "crashes": dict(cell.crashes)}
            if not self._closed:
                self._mailbox_figures(cell, entry)
            actors[cell.name] = entry
        system: dict[str, Any] = {"run_id": self.run_id, "events": dict(self._counts.counts),
                                  "dead_letters": self._dead.total, "closed": self._closed}
        if not self._closed:
            slots = self._hub.ctl.slots
            system.update(pending_replies=len(self._hub.pending), wakeups=slots[C_WAKEUPS],
                          lost_wakeups=slots[C_LOST])
        pools = {p.name: dataclasses.asdict(p.statistics()) for p in list(self._pools)}
        return {"actors": actors, "system": system, "pools": pools}

    def _mailbox_figures(self, cell: ActorCell, entry: dict[str, Any]) -> None:
        """Flow-control figures of every channel into *cell*, from the ring headers."""
        slots = cell.ctl.slots
        flow = {"in_flight": 0, "waiting_producers": 0, "waits": 0, "wait_seconds": 0.0,
                "backpressure": 0}
        for seg in list(cell.inbound.values()):
            ring = Ring(seg.buf)
            hdr = ring.hdr
            flow["in_flight"] += hdr[H_SENT] - hdr[H_HANDLED]
            flow["waiting_producers"] += hdr[H_WAITING]
            flow["waits"] += hdr[H_WAITS]
            flow["wait_seconds"] += hdr[H_WAIT_NS] / 1e9
            flow["backpressure"] += hdr[H_BACKPRESSURE]
            ring.release()
        entry.update(handled=slots[C_HANDLED], wakeups=slots[C_WAKEUPS],
                     lost_wakeups=slots[C_LOST],
                     window=slots[C_WINDOW] or self.config.window,
                     credits_in_use=flow["in_flight"], **flow)
        if cell.pid and cell.state == "running":
            try:
                p = psutil.Process(cell.pid)
                entry["rss"] = p.memory_info().rss
                entry["cpu_seconds"] = sum(p.cpu_times()[:2])
            except psutil.Error:
                pass

    def wait_ready(self, ref: ActorRef[Any], timeout: float | None = None) -> None:
        """Block until *ref*'s actor has started (constructor and ``on_start`` done)."""
        cell = self._cells[ref.actor_id]
        if not cell.ready.wait(timeout if timeout is not None else self.config.start_timeout):
            msg = f"{cell.describe()} did not start in time"
            raise TimeoutError(msg)

    def pid_of(self, ref: ActorRef[Any]) -> int | None:
        """The pid of the process running (or booting) *ref*'s actor; None without one.

        None between a crash and the start of its successor, and once it is stopped.
        """
        cell = self._cells[ref.actor_id]
        return cell.pid if cell.proc is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)

    def __enter__(self) -> ActorSystem:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> ActorSystem:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop every actor, join every process, unlink every segment; idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        _live_systems.discard(self)
        self._root.state = "stopped"
        self._spares.close()  # no refills from here on
        # The starter thread is the parent thread of every process under fork and spawn
        # (PR_SET_PDEATHSIG fires when it exits): it is shut down last, not first.
        cells = list(self._cells.values())
        self._on_loop(self.finish_group, cells, "the actor system was closed")
        deadline = Deadline.after(self.config.stop_timeout)
        for cell in cells:
            if cell.proc is not None and not cell.exited.wait(deadline.remaining()):
                self._kill(cell)
        for cell in cells:
            if cell.proc is not None:
                cell.exited.wait(5.0)
        self._spares.close()
        self._stop_loop()
        for cell in cells:
            self._reap(cell)
        self._starter.shutdown(wait=True)
        for reply in list(self._hub.pending.values()):
            reply.set_exception(ActorStopped(f"{reply.describe}: the actor system was closed"))
        self._hub.pending.clear()
        self._closed = True
        self._release_all(cells)
        unregister_hub(self.run_id)

    def _stop_loop(self) -> None:
        loop = self._hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        self._thread.join(10)

    def _reap(self, cell: ActorCell) -> None:
        proc = cell.proc
        if proc is None:
            return
        proc.join(self.config.stop_timeout)
        if proc.exitcode is None:
            kill_tree(proc.pid)
            proc.join(5)
        if cell.ctrl is not None:
            cell.ctrl.close()
        cell.proc = cell.ctrl = None

    def _release_all(self, cells: list[ActorCell]) -> None:
        hub = self._hub
        for chan in list(hub.outbound.values()):
            chan.close()
        for inchan in list(hub.inbound.values()):
            inchan.close()
        hub.outbound.clear()
        hub.inbound.clear()
        for cell in cells:
            for seg in cell.inbound.values():
                seg.close()
            cell.ctl.close()
            cell.spec.close()
            os.close(cell.efd)
        hub.pool.close()
        hub.ctl.close()
        os.close(hub.efd)
        unlink_prefix(self.run_id)

    def __repr__(self) -> str:
        state = "closed" if self._closing else "running"
        return f"<ActorSystem {self.run_id} {state} actors={len(self._cells)}>"


_live_systems: weakref.WeakSet[ActorSystem] = weakref.WeakSet()


@atexit.register
def _close_live_systems() -> None:
    for system in list(_live_systems):
        try:
            system.close()
        except Exception:
            logger.exception("closing %r at exit failed", system)


ActorSystem.__module__ = "actorq"
