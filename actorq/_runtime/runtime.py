"""The system's machinery: actor cells, their processes, crashes and restarts.

``Runtime`` is the small facade over the parts that do the work, and what wires them;
``ActorSystem`` (in ``_system``) is the public facade over it. The parts share one
``RuntimeState`` (state.py) and are handed what they need of each other:

- ``Launcher`` (launch.py): processes, warm spares, the boot message (starter thread);
- ``Deaths`` (deaths.py): a process's death, crash attribution, restarts of a group;
- ``Stopper`` (stopping.py): stops for good, an actor gone for good, the teardown steps;
- ``Requests`` (requests.py): control messages from actors (ready, connect, spawn, ...).

Here: the loop thread, new cells and their rings, the hang and memory monitor, the
facade's operations, ``SupervisorOps`` and the shutdown order (``close``). Everything runs
on the hub loop thread, except what ``ActorSystem`` calls from user threads (under the
state's lock where it changes cells or names).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

import psutil
import uvloop

from actorq import _serialization
from actorq._config import SystemConfig
from actorq._core.actor import Actor, ActorOptions, handler_names
from actorq._core.events import ActorEvent, EventBus, EventCounts, EventKind
from actorq._core.protocol import C_BUSY, C_SINCE, SYSTEM_ID
from actorq._core.ref import ActorRef, register_hub, unregister_hub
from actorq._errors import ActorCrashed, ActorStopped, NoSuchActor, StartTimeout
from actorq._ids import new_run_prefix
from actorq._process import lifelock
from actorq._process.spawn import get_context
from actorq._resilience.backoff import Backoff
from actorq._runtime.cells import DEAD_STATES, ActorCell, new_ring
from actorq._runtime.deaths import Deaths
from actorq._runtime.idle import IdleSweep
from actorq._runtime.launch import Launcher
from actorq._runtime.requests import Requests
from actorq._runtime.state import RuntimeState
from actorq._runtime.stats import (
    ActorStatistics,
    SystemStatistics,
    actor_statistics,
    hub_figures,
)
from actorq._runtime.stopping import Stopper
from actorq._runtime.systemhub import SystemHub
from actorq._supervision.deadletters import DeadLetter, DeadLetters
from actorq._supervision.policy import RESTART_TYPES, RestartType, SupervisorDecision
from actorq._supervision.supervisor import Supervisor
from actorq._transport.aimd import AIMDWindow
from actorq._transport.channel import (
    C_WINDOW,
    CTL_SIZE,
    ControlBlock,
    InChannel,
    OutChannel,
)
from actorq._transport.oob import traffic as oob_traffic
from actorq._transport.shm import Segment, sweep, unlink_prefix

logger = logging.getLogger("actorq")

A = TypeVar("A", bound=Actor)


class Runtime:
    """Cells, processes, crashes, restarts: the machinery that ``ActorSystem`` holds.

    Its public methods are what the facade, supervisors (``SupervisorOps``) and the
    layers above reach it through; everything starting with ``_`` is its own.
    """

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        cells: dict[int, ActorCell] = {}
        self._cells = cells
        self._monitor_on = False  # _monitor is scheduled (loop thread)
        self._ids = itertools.count(1)
        sweep()  # what dead runs left in /dev/shm
        self.run_id = new_run_prefix()
        ctl_seg = Segment.create(self.run_id + "ctl0", CTL_SIZE)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        hub = SystemHub(self.run_id, config, ControlBlock(ctl_seg), efd, self._state_of)
        self._s = s = RuntimeState(config, self.run_id, hub, cells,
                                   DeadLetters(config.dead_letters), EventBus())
        self._counts = EventCounts()
        s.bus.subscribe(self._counts)  # metrics: the first listener
        register_hub(self.run_id, hub)
        hub.on_dead = lambda what, why: s.dead.add("(caller)", what, why)
        self.root = Supervisor(self, "root", max_restarts=config.root_max_restarts,
                               within=config.root_within, give_up_per_child=True)
        self._stop = Stopper(s)
        self._launch = Launcher(s, get_context(config.start_method), self._stop, self._watch)
        self._deaths = Deaths(s, self._launch, self._stop, self._on_ctrl)
        self._requests = Requests(s, self._launch, self._deaths, self._stop, self,
                                  self._spawn_blob)
        self._idle = IdleSweep(cells.values, config.park_timeout)
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="actorq-hub", daemon=True)
        self._thread.start()
        self._loop_ready.wait(10)
        LIVE_RUNTIMES.add(self)

    @property
    def hub(self) -> SystemHub:
        """The user process's hub (its channels to every actor)."""
        return self._s.hub

    @property
    def closing(self) -> bool:
        """True once ``close()`` began."""
        return self._s.closing

    def __repr__(self) -> str:
        state = "closed" if self._s.closing else "running"
        return f"<ActorSystem {self.run_id} {state} actors={len(self._cells)}>"

    @property
    def actor_count(self) -> int:
        """How many actors this runtime knows (live or stopped)."""
        return len(self._cells)

    # -- SupervisorOps: carried out by the parts ------------------------------------------

    def restart_group(self, cells: list[ActorCell], delay: float) -> None:
        """Stop the live *cells* (reverse start order), then start them all (start order)."""
        self._deaths.restart_group(cells, delay)

    def finish_group(self, cells: list[ActorCell], why: str) -> None:
        """Stop *cells* for good, in reverse start order (SupervisorOps)."""
        self._stop.finish_group(cells, why)

    def _on_ctrl(self, cell: ActorCell, sock: Any) -> None:
        self._requests.on_ctrl(cell, sock)

    # -- the loop thread ----------------------------------------------------------------

    def _run_loop(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        hub = self._s.hub
        hub.loop = loop
        hub.loop_thread_id = threading.get_ident()
        loop.add_reader(hub.efd, hub.on_wake)
        hub.park()
        loop.call_later(self._s.config.park_timeout, hub.watchdog, lambda: bool(hub.ring_spinners),
                        hub.on_wake, lambda: not self._s.closing)
        self._idle.start(loop)  # lost wake-ups of idle actors (their own watchdog stops)
        self._loop_ready.set()
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(hub.efd)
            loop.close()

    def _state_of(self, actor_id: int) -> str | None:
        cell = self._cells.get(actor_id)
        return cell.state if cell is not None else None

    def supervisor_event(self, decision: SupervisorDecision, supervisor: Supervisor,
                         child: Any, why: str) -> None:
        """Publish a supervisor's decision about a child (SupervisorOps)."""
        kind = EventKind(decision)
        if isinstance(child, ActorCell):
            self._s.publish(kind, child, detail=why, supervisor=supervisor.name)
        elif self._s.bus.active:  # a child supervisor
            self._s.bus.publish(ActorEvent(kind, 0, child.name, detail=why,
                                           supervisor=supervisor.name))

    # -- cells ----------------------------------------------------------------------------

    def _spawn_blob(self, blob: bytes, cls_name: str, handlers: frozenset[str],
                    name: str | None, restart: str, supervisor: Supervisor,
                    options: ActorOptions) -> ActorRef[Any]:
        if restart not in RESTART_TYPES:
            msg = f"restart must be one of {RESTART_TYPES}, not {restart!r}"
            raise ValueError(msg)
        restart_type = cast(RestartType, restart)
        if self._s.closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        if self._s.unguarded is not None:
            raise ActorCrashed(self._s.unguarded, "start")
        with self._s.lock:
            if supervisor.state != "running":
                msg = f"supervisor {supervisor.name!r} is stopped"
                raise ActorStopped(msg)
            actor_id = next(self._ids)
            name = name or f"{cls_name}-{actor_id}"
            if name in self._s.names:
                msg = f"an actor named {name!r} already exists"
                raise ValueError(msg)
            cell = self._new_cell(actor_id, name, cls_name, handlers, restart_type, options,
                                  blob, supervisor)
            supervisor.children.append(cell)
            self._s.cells[actor_id] = cell
            if options.hang_timeout or options.max_rss:
                self._s.monitored[actor_id] = cell
                self._s.on_loop(self._start_monitor)
            self._s.names[name] = actor_id
        self._launch.submit(cell)
        return ActorRef(self._s.hub, self._s.run_id, actor_id, name, handlers, cls_name)

    def _new_cell(self, actor_id: int, name: str, cls_name: str, handlers: frozenset[str],
                  restart: RestartType, options: ActorOptions, blob: bytes,
                  supervisor: Supervisor) -> ActorCell:
        window = 0  # not adaptive: senders use their own (the system's) window
        if options.window_target is not None:
            # The actor's own starting window, as its process will set it at boot: a
            # channel opened before then (its first senders) must not take credit from
            # the system's default window and cache it (issue #10).
            window = AIMDWindow(target=options.window_target, minimum=options.window_min,
                                maximum=options.window_max or self._s.config.window,
                                increase=options.window_step).window
        prefix = f"{self._s.run_id}a{actor_id}_"
        spec = Segment.create(prefix + "spec", max(len(blob), 1), prefault=False)
        spec.buf[: len(blob)] = blob
        ctl = ControlBlock(Segment.create(prefix + "ctl", CTL_SIZE))
        lifelock.init(ctl.seg.buf)
        ctl.slots[C_WINDOW] = window
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        cell = ActorCell(actor_id, name, cls_name, handlers, restart, options, spec,
                         len(blob), ctl, efd, supervisor)
        to_actor = new_ring(self._s.config, f"{prefix}in{SYSTEM_ID}")
        from_actor = new_ring(self._s.config, f"{prefix}out{SYSTEM_ID}")
        cell.inbound[SYSTEM_ID] = to_actor
        cell.outbound[SYSTEM_ID] = from_actor.name
        hub = self._s.hub
        hub.outbound[actor_id] = OutChannel(actor_id, Segment.attach(to_actor.name, prefault=False),
                                            ctl, efd, self._s.config.window)
        # What an actor sends the system is replies only, which spend no credit: its
        # producer never waits for any, so the channel has no doorbell to ring back.
        hub.inbound[actor_id] = InChannel(actor_id, from_actor)
        return cell

    def _watch(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        """Loop thread: read *proc*'s control socket *sock*, and learn of its death."""
        loop = self._s.hub.loop
        assert loop is not None
        sock.setblocking(False)
        loop.add_reader(sock, self._requests.on_ctrl, cell, sock)
        loop.add_reader(proc.sentinel, self._deaths.on_exit, cell, proc, sock)

    # -- monitors (loop thread) -------------------------------------------------------------

    def _start_monitor(self) -> None:
        """Loop thread: an actor with a hang timeout or a memory limit exists; make sure
        ``_monitor`` runs (it stops while there is none: an idle system wakes less)."""
        if not self._monitor_on and self._s.hub.loop is not None and not self._s.closing:
            self._monitor_on = True
            self._s.hub.loop.call_later(self._s.config.monitor_interval, self._monitor)

    def _monitor(self) -> None:
        """Kill actors whose handler hangs past ``hang_timeout`` or that pass ``max_rss``."""
        if self._s.closing or self._s.hub.loop is None or not self._s.monitored:
            self._monitor_on = False
            return
        now_ns = time.monotonic_ns()
        for cell in list(self._s.monitored.values()):
            opts = cell.options
            if cell.state != "running" or cell.proc is None or cell.killed_for:
                continue
            slots = cell.ctl.slots
            since = slots[C_SINCE]
            if (opts.hang_timeout and slots[C_BUSY] and since
                    and now_ns - since > opts.hang_timeout * 1e9):
                cell.killed_for = "hang"
                self._stop.kill(cell)
                continue
            if opts.max_rss and cell.pid:
                try:
                    rss = psutil.Process(cell.pid).memory_info().rss
                except psutil.Error:
                    continue
                if rss > opts.max_rss:
                    cell.killed_for = "oom"
                    self._stop.kill(cell)
        self._s.hub.loop.call_later(self._s.config.monitor_interval, self._monitor)

    # -- the facade's operations (user threads) ---------------------------------------

    def spawn_under(self, supervisor: Supervisor, cls: type[A], args: tuple[Any, ...],
                    kwargs: dict[str, Any], name: str | None,
                    restart: str) -> ActorRef[A]:
        """Start an actor of *cls* under *supervisor* (``ActorSystem.spawn``'s checks)."""
        self.check_open()
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

    def supervisor_under(self, parent: Supervisor, strategy: str, max_restarts: int,
                         within: float, backoff: Backoff | None,
                         name: str | None, *, give_up_per_child: bool = False) -> Supervisor:
        """Create a supervisor under *parent* (*give_up_per_child*: past its intensity it
        gives up on the one child instead of failing; a pool's supervisor does)."""
        self.check_open()
        with self._s.lock:
            if parent.state != "running":
                msg = f"supervisor {parent.name!r} is stopped"
                raise ActorStopped(msg)
            name = name or f"supervisor-{len(parent.children) + 1}"
            return Supervisor(self, name, strategy=strategy, max_restarts=max_restarts,
                              within=within, backoff=backoff, parent=parent,
                              give_up_per_child=give_up_per_child)

    def stop_supervisor(self, sup: Supervisor) -> None:
        """Stop *sup*'s whole subtree for good; blocks until every actor in it is gone."""
        cells = sup.cells()
        sup.mark_stopped()
        if sup.parent is not None:
            sup.parent.remove(sup)
        for cell in reversed(cells):
            self.stop_actor(cell.id, None)

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the live actor registered as *name* (``KeyError`` if none)."""
        with self._s.lock:
            cell = self._s.cells.get(self._s.names.get(name, -1))
        if cell is None or cell.state in DEAD_STATES:
            msg = f"no actor named {name!r}"
            raise NoSuchActor(msg)
        return ActorRef(self._s.hub, self._s.run_id, cell.id, cell.name, cell.handlers,
                        cell.cls_name)

    def stop_actor(self, actor_id: int, timeout: float | None = None) -> None:
        """Stop an actor for good; blocks until its process is gone (see ``ActorSystem.stop``)."""
        cell = self._s.cells.get(actor_id)
        if cell is not None:
            self._stop.stop_cell(cell, timeout)

    def subscribe(self, listener: Callable[[ActorEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` for every lifecycle event of every actor from now on.

        Events (:class:`ActorEvent`): ``started``, ``crashed`` (with its cause),
        ``restarted``, ``stopped``, ``gave_up``, ``escalated``. The listener runs on the
        system's loop thread: it must be quick and must not block. Returns a function
        that unsubscribes it.
        """
        return self._s.bus.subscribe(listener)

    def dead_letters(self) -> list[DeadLetter]:
        """Messages that were never handled (their actor stopped) or that poisoned it."""
        return self._s.dead.snapshot()

    def statistics(self) -> tuple[SystemStatistics, dict[str, ActorStatistics]]:
        """Snapshots of the system and of every actor it knows (by name)."""
        open_ = not self._s.closed
        actors = {}
        for cell in list(self._s.cells.values()):
            try:
                actors[cell.name] = actor_statistics(cell, self._s.config.window,
                                                     with_mailbox=open_)
            except ValueError:  # forgotten meanwhile (_forget_oldest): its rings released
                continue
        sent, received = oob_traffic()
        system = SystemStatistics(self._s.run_id, dict(self._counts.counts), self._s.dead.total,
                                  self._s.closed, oob_bytes_sent=sent,
                                  oob_bytes_received=received)
        if open_:
            wakeups, lost = hub_figures(self._s.hub.ctl)
            system = dataclasses.replace(system, pending_replies=len(self._s.hub.pending),
                                         wakeups=wakeups, lost_wakeups=lost)
        return system, actors

    def metrics(self) -> dict[str, Any]:
        """A snapshot: per actor (by name) state, pid, restarts, crashes by cause, mailbox.

        ``system`` holds the counts of supervisor events (``restarted``, ``gave_up``,
        ``escalated``, ``crash:<cause>``), dead letters and the hub's own figures. Plain
        data built from ``statistics()``.
        """
        system, actors = self.statistics()
        return {"actors": {name: st.as_dict() for name, st in actors.items()},
                "system": system.as_dict()}

    def wait_ready(self, actor_id: int, timeout: float | None = None) -> None:
        """Block until the actor has started (constructor and ``on_start`` done)."""
        cell = self._s.cells.get(actor_id)
        if cell is None:
            msg = f"no actor #{actor_id} (it never existed, or stopped long ago)"
            raise NoSuchActor(msg)
        if not cell.ready.wait(timeout if timeout is not None else self._s.config.start_timeout):
            msg = f"{cell.describe()} did not start in time"
            raise StartTimeout(msg)

    def pid_of(self, actor_id: int) -> int | None:
        """The pid of the process running (or booting) the actor; None without one."""
        cell = self._s.cells.get(actor_id)
        return cell.pid if cell is not None and cell.proc is not None else None

    def check_open(self) -> None:
        """Raise ``ActorStopped`` once the system is closing."""
        if self._s.closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every actor, join every process, unlink every segment; idempotent.

        Actors get ``stop_timeout`` to finish their current message; past half a second
        of waiting, a one-line notice says so (see ``notice``). A ``KeyboardInterrupt``
        during that wait (a second Ctrl-C) kills them at once; everything is still
        joined and unlinked, and the interrupt is raised again afterwards.
        """
        with self._s.lock:
            if self._s.closing:
                return
            self._s.closing = True
        LIVE_RUNTIMES.discard(self)
        self.root.state = "stopped"
        cells = list(self._s.cells.values())
        interrupted: KeyboardInterrupt | None = None
        try:
            self._launch.spares.close()  # no refills from here on
            # The starter thread is the parent thread of every process under fork and
            # spawn (PR_SET_PDEATHSIG fires when it exits): it is shut down last.
            self._s.on_loop(self.finish_group, cells, "the actor system was closed")
            self._stop.wait_stopped(cells)
        except KeyboardInterrupt as exc:
            interrupted = exc
            for cell in cells:
                self._stop.kill(cell)
        try:
            self._teardown(cells)
        except BaseException:
            # interrupted once more: the processes and the segments go regardless
            for cell in cells:
                self._stop.kill(cell)
            unlink_prefix(self._s.run_id)
            raise
        if interrupted is not None:
            raise interrupted

    def _teardown(self, cells: list[ActorCell]) -> None:
        self._launch.spares.close()
        self._stop_loop()
        self._deaths.stop_watching()  # no more early death notices
        for cell in cells:
            self._stop.reap(cell)
        self._deaths.reap_all()  # handled as dead, still torn down by the kernel
        self._launch.close()  # the starter thread goes last (see close())
        for reply in list(self._s.hub.pending.values()):
            reply.set_exception(ActorStopped(f"{reply.describe}: the actor system was closed"))
        self._s.hub.pending.clear()
        self._s.closed = True
        self._stop.release_all(cells)
        unregister_hub(self._s.run_id)

    def _stop_loop(self) -> None:
        loop = self._s.hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        self._thread.join(10)


LIVE_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()  # open, not closed yet
