"""The system's machinery: actor cells, their processes, crashes and restarts.

Everything here runs on the hub loop thread, except ``_start_process`` (starter thread)
and what ``ActorSystem`` calls from user threads under ``_lock``. ``ActorSystem`` (in
``_system``) is the public facade over this class.

A crash, from the process sentinel to the next instance::

    _on_exit ── classify (signal / exit / exception / hang / oom / start / lost)
       ├─ attribute_crash (crashes.py): the slot names the message being handled → its caller gets
       │    ActorCrashed (or it is redelivered, until poison_after) → dead letters
       ├─ its own children (context.spawn) are stopped: they die with their supervisor
       └─ restart type + restart_on say restart? → supervisor.child_failed (strategy,
          intensity, backoff) → restart_group; else → _finish (gone for good)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import psutil
import uvloop

from actorq import _serialization
from actorq._actorproc import host as _host
from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.actor import Actor, ActorOptions, handler_names
from actorq._core.events import ActorEvent, EventBus, EventCounts, EventKind
from actorq._core.protocol import (
    C_BUSY,
    C_SINCE,
    C_STOP,
    SYSTEM_ID,
    Boot,
    Ctl,
)
from actorq._core.ref import ActorRef, register_hub, unregister_hub
from actorq._core.reply import Reply
from actorq._errors import ActorCrashed, ActorStopped, NoSuchActor, StartTimeout
from actorq._ids import new_run_prefix
from actorq._process import lifelock
from actorq._process.reap import kill_if_child, kill_tree
from actorq._process.spares import QUIT, WarmPool
from actorq._process.spawn import fork_server_unguarded, get_context
from actorq._resilience.backoff import Backoff
from actorq._runtime.cells import DEAD_STATES, ActorCell, CellState, RestartPlan
from actorq._runtime.crashes import attribute_crash, crash_words, dead_letter_queued
from actorq._runtime.idle import IdleSweep
from actorq._runtime.stats import (
    ActorStatistics,
    SystemStatistics,
    actor_statistics,
    hub_figures,
)
from actorq._runtime.systemhub import SystemHub
from actorq._supervision.deadletters import DeadLetter, DeadLetters
from actorq._supervision.policy import (
    RESTART_TYPES,
    RestartType,
    SupervisorDecision,
    classify_exit,
    should_restart,
)
from actorq._supervision.supervisor import Supervisor
from actorq._transport import control
from actorq._transport.aimd import AIMDWindow
from actorq._transport.channel import (
    C_WINDOW,
    CTL_SIZE,
    ControlBlock,
    InChannel,
    OutChannel,
)
from actorq._transport.oob import Orphans, forget_mapped
from actorq._transport.oob import traffic as oob_traffic
from actorq._transport.ring import (
    Ring,
)
from actorq._transport.shm import SHM_DIR, Segment, sweep, unlink_prefix

logger = logging.getLogger("actorq")

A = TypeVar("A", bound=Actor)
SPARE_REFILL_DELAY = 0.05
# After a restart, the next spare is started this long after the new instance is up (its
# first answers go out first), not only SPARE_REFILL_DELAY after its start: on a loaded
# machine a start takes 100 ms or more, and the actor's next crash found no spare.
REFILL_AFTER_READY = 0.005
ORPHAN_SWEEP_INTERVAL = 0.05  # seconds between looks at blocks of dead processes
LAUNCH_AHEAD = 4  # processes launched at once for a burst of starts (forkserver)
# Bytes of a new ring touched up front (its header and where its first messages go);
# the rest is allocated when first written. Touching all of both 1 MiB rings cost
# ≈ 1.7 ms per spawn, and 2 GiB of memory for a thousand idle actors.
RING_PREFAULT = 64 * 1024

class Runtime:
    """Cells, processes, crashes, restarts: the machinery that ``ActorSystem`` holds.

    Its public methods are what the facade, supervisors (``SupervisorOps``) and the
    layers above reach it through; everything starting with ``_`` is its own.
    """

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self._closing = False
        self._closed = False
        self._cells: dict[int, ActorCell] = {}
        # cells with a hang timeout or a memory limit: the only ones ``_monitor`` visits
        # (a walk over 1000 cells every 50 ms cost 1 % of a core at idle)
        self._monitored: dict[int, ActorCell] = {}
        self._monitor_on = False  # _monitor is scheduled (loop thread)
        self._names: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._dead = DeadLetters(config.dead_letters)
        self._unguarded: str | None = None  # why no actor can start (an unguarded main)
        self._finished: deque[int] = deque()  # ids of actors gone for good, oldest first
        self._bus = EventBus()
        self._counts = EventCounts()
        self._bus.subscribe(self._counts)  # metrics: the first listener
        sweep()  # what dead runs left in /dev/shm
        self.run_id = new_run_prefix()
        self._ctx = get_context(config.start_method)
        ctl_seg = Segment.create(self.run_id + "ctl0", CTL_SIZE)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._hub = SystemHub(self.run_id, config, ControlBlock(ctl_seg), efd, self._state_of)
        register_hub(self.run_id, self._hub)
        self._hub.on_dead = lambda what, why: self._dead.add("(caller)", what, why)
        self._orphans = Orphans(self.run_id)  # out-of-band blocks of processes gone
        self._orphans_due = False  # a sweep of the blocks that must wait is scheduled
        self.root = Supervisor(self, "root", max_restarts=config.root_max_restarts,
                               within=config.root_within, give_up_per_child=True)
        self._spares = WarmPool(self._ctx, _host.main, config.warm_spares)
        # the early death notice (lifelock.py); the sentinel stays the authority
        self._life = lifelock.Watcher(self._on_life_lost)
        self._dying: list[Any] = []  # processes handled as dead, not reaped yet
        self._likely: ActorCell | None = None  # the actor that restarted last
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "actorq-starter")
        # Starts queued behind each other (a burst of spawns) launch their processes in
        # parallel, ahead of the starter thread, which boots them in order (a process is
        # anyone's until its boot message). Forkserver only: under fork a process must be
        # forked from a thread that lives as long as the system (deathsig.py).
        self._launcher = (concurrent.futures.ThreadPoolExecutor(LAUNCH_AHEAD, "actorq-launch")
                          if config.start_method == "forkserver" else None)
        self._launched: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._launching = 0  # launches in flight or not yet taken (starter thread only)
        self._submitted = 0  # starts submitted (under _lock) ...
        self._begun = 0  # ... and begun by the starter thread
        self._starter.submit(self._refill)
        self._idle = IdleSweep(self._cells.values, config.park_timeout)
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="actorq-hub", daemon=True)
        self._thread.start()
        self._loop_ready.wait(10)
        LIVE_RUNTIMES.add(self)

    @property
    def hub(self) -> SystemHub:
        """The user process's hub (its channels to every actor)."""
        return self._hub

    @property
    def closing(self) -> bool:
        """True once ``close()`` began."""
        return self._closing

    def __repr__(self) -> str:
        state = "closed" if self._closing else "running"
        return f"<ActorSystem {self.run_id} {state} actors={len(self._cells)}>"

    @property
    def actor_count(self) -> int:
        """How many actors this runtime knows (live or stopped)."""
        return len(self._cells)

    # -- the loop thread ----------------------------------------------------------------

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
        self._idle.start(loop)  # lost wake-ups of idle actors (their own watchdog stops)
        self._loop_ready.set()
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(hub.efd)
            loop.close()

    # -- loop helpers ---------------------------------------------------------------------

    def _on_loop(self, fn: Any, *args: Any) -> None:
        loop = self._hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _state_of(self, actor_id: int) -> str | None:
        cell = self._cells.get(actor_id)
        return cell.state if cell is not None else None

    def _publish(self, kind: EventKind, cell: ActorCell, cause: str | None = None,
                 detail: str = "", supervisor: str | None = None) -> None:
        """Publish a lifecycle event of *cell* (built only when someone listens)."""
        if self._bus.active:
            self._bus.publish(ActorEvent(kind, cell.id, cell.name, cell.cls_name, cell.pid,
                                         cause, detail, cell.restarts, supervisor))

    def supervisor_event(self, decision: SupervisorDecision, supervisor: Supervisor,
                         child: Any, why: str) -> None:
        """Publish a supervisor's decision about a child (SupervisorOps)."""
        kind = EventKind(decision)
        if isinstance(child, ActorCell):
            self._publish(kind, child, detail=why, supervisor=supervisor.name)
        elif self._bus.active:  # a child supervisor
            self._bus.publish(ActorEvent(kind, 0, child.name, detail=why,
                                         supervisor=supervisor.name))

    # -- cells ----------------------------------------------------------------------------

    def _spawn_blob(self, blob: bytes, cls_name: str, handlers: frozenset[str],
                    name: str | None, restart: str, supervisor: Supervisor,
                    options: ActorOptions) -> ActorRef[Any]:
        if restart not in RESTART_TYPES:
            msg = f"restart must be one of {RESTART_TYPES}, not {restart!r}"
            raise ValueError(msg)
        restart_type = cast(RestartType, restart)
        if self._closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        if self._unguarded is not None:
            raise ActorCrashed(self._unguarded, "start")
        with self._lock:
            if supervisor.state != "running":
                msg = f"supervisor {supervisor.name!r} is stopped"
                raise ActorStopped(msg)
            actor_id = next(self._ids)
            name = name or f"{cls_name}-{actor_id}"
            if name in self._names:
                msg = f"an actor named {name!r} already exists"
                raise ValueError(msg)
            cell = self._new_cell(actor_id, name, cls_name, handlers, restart_type, options,
                                  blob, supervisor)
            supervisor.children.append(cell)
            self._cells[actor_id] = cell
            if options.hang_timeout or options.max_rss:
                self._monitored[actor_id] = cell
                self._on_loop(self._start_monitor)
            self._names[name] = actor_id
            self._submitted += 1
        self._starter.submit(self._start_process, cell, cell.generation)
        return ActorRef(self._hub, self.run_id, actor_id, name, handlers, cls_name)

    def _new_cell(self, actor_id: int, name: str, cls_name: str, handlers: frozenset[str],
                  restart: RestartType, options: ActorOptions, blob: bytes,
                  supervisor: Supervisor) -> ActorCell:
        window = 0  # not adaptive: senders use their own (the system's) window
        if options.window_target is not None:
            # The actor's own starting window, as its process will set it at boot: a
            # channel opened before then (its first senders) must not take credit from
            # the system's default window and cache it (issue #10).
            window = AIMDWindow(target=options.window_target, minimum=options.window_min,
                                maximum=options.window_max or self.config.window,
                                increase=options.window_step).window
        prefix = f"{self.run_id}a{actor_id}_"
        spec = Segment.create(prefix + "spec", max(len(blob), 1), prefault=False)
        spec.buf[: len(blob)] = blob
        ctl = ControlBlock(Segment.create(prefix + "ctl", CTL_SIZE))
        lifelock.init(ctl.seg.buf)
        ctl.slots[C_WINDOW] = window
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        cell = ActorCell(actor_id, name, cls_name, handlers, restart, options, spec,
                         len(blob), ctl, efd, supervisor)
        to_actor = self._new_ring(f"{prefix}in{SYSTEM_ID}")
        from_actor = self._new_ring(f"{prefix}out{SYSTEM_ID}")
        cell.inbound[SYSTEM_ID] = to_actor
        cell.outbound[SYSTEM_ID] = from_actor.name
        hub = self._hub
        hub.outbound[actor_id] = OutChannel(actor_id, Segment.attach(to_actor.name, prefault=False),
                                            ctl, efd, self.config.window)
        # What an actor sends the system is replies only, which spend no credit: its
        # producer never waits for any, so the channel has no doorbell to ring back.
        hub.inbound[actor_id] = InChannel(actor_id, from_actor)
        return cell

    def _new_ring(self, name: str) -> Segment:
        seg = Segment.create(name, Ring.size_for(self.config.ring_size), prefault=RING_PREFAULT)
        Ring(seg.buf, init=True).release()
        return seg

    def _main_module_hint(self) -> str:
        """Why a new process may die before it boots: the user's script re-imported."""
        if self.config.start_method == "fork":
            return ""
        return (" (if your main script starts the actor system at import time, put that "
                "under `if __name__ == \"__main__\":` — with forkserver and spawn every "
                "new process imports the main module again)")

    # -- processes (starter thread) -------------------------------------------------------

    def _start_process(self, cell: ActorCell, generation: int, *, inline: bool = False) -> bool:
        """Start *cell*'s process (a warm spare if there is one) and send its boot message.

        On the starter thread; or *inline*, on the loop thread, only with a spare prepared
        for this very actor (``_prepare_spare``: then the start is one short message, sent
        without a hop to another thread); False if there was none.
        """
        if not inline:
            self._begun += 1
        if self._closing or cell.state != "starting" or cell.generation != generation:
            return True
        try:
            got = self._spares.take(cell.id, only_prepared=inline)
            if got is None:
                if inline:
                    return False
                launched = self._launch_for_burst()
                proc, sock = launched if launched is not None else self._spares.start_one()
                tag = None
            else:
                proc, sock, tag = got
        except Exception:
            if self.config.start_method == "forkserver" and fork_server_unguarded():
                self._on_loop(self._main_unguarded, cell)  # the fork server said why
                return True
            logger.exception("could not start a process for %s", cell.describe())
            why = "its process could not be started" + self._main_module_hint()
            self._on_loop(self._finish, cell, CellState.FAILED, why)
            return True
        if cell.restarts:
            self._likely = cell  # it restarted: the next spare is prepared for it
        cell.ctl.slots[C_STOP] = 0
        info, fds = self._boot_for(cell)
        msg: tuple[Any, ...] = (Ctl.BOOT, info)
        if (tag is not None and tag[0] == cell.id and tag[2] == fds
                and tag[1] == dataclasses.replace(info, restarts=tag[1].restarts)):
            msg, fds = (Ctl.GO, cell.restarts), []  # it has mapped all that, as it is now
        cell.proc, cell.ctrl = proc, sock
        cell.pid = proc.pid  # known now (before it can answer); confirmed by "ready"
        try:
            control.send(sock, msg, fds)
        except OSError:
            pass  # it died already: its sentinel tells the loop
        if inline:
            self._watch(cell, proc, sock)
            self._refill_later()
        else:
            self._on_loop(self._watch, cell, proc, sock)
            # Refill later: a process started now competes for the CPU with the actor
            # that is booting (a restart measured 9.9 ms p50 with an immediate refill,
            # 8.3 ms with this delay; benchmarks/bench_restart.py).
            self._on_loop(self._refill_later)
        return True

    def _boot_for(self, cell: ActorCell) -> tuple[Boot, list[int]]:
        """*cell*'s boot message as of now, and the fds that go with it."""
        fds = [cell.efd, self._hub.efd]
        outbound = {}
        for target, ring_name in cell.outbound.items():
            if target == SYSTEM_ID:
                outbound[target] = (ring_name, self._hub.ctl.seg.name, 1)
            elif (peer := self._cells.get(target)) is not None and peer.state not in DEAD_STATES:
                outbound[target] = (ring_name, peer.ctl.seg.name, len(fds))
                fds.append(peer.efd)
        inbound = {}
        for sender, seg in cell.inbound.items():
            if sender == SYSTEM_ID:
                inbound[sender] = (seg.name, 1)
            elif (peer := self._cells.get(sender)) is not None:
                inbound[sender] = (seg.name, len(fds))
                fds.append(peer.efd)
        opts = cell.options
        info = Boot(cell.id, cell.name, self.run_id, self.config, cell.ctl.seg.name,
                    cell.spec.name, cell.spec_size, inbound, outbound, cell.restarts,
                    opts.hang_timeout, opts.window_target, opts.window_min, opts.window_max,
                    opts.window_step)
        return info, fds

    def _refill(self) -> None:
        """Starter thread: start spares up to their number, then prepare one of them for
        the actor that restarted last (its next restart is then one message: GO)."""
        self._spares.refill()
        self._prepare_spare()

    def _prepare_spare(self) -> None:
        cell = self._likely
        if (cell is None or self._closing or cell.state != "running"
                or cell.options.window_target is not None  # its window is the live one's
                or any(tag[0] == cell.id for tag in self._spares.tags())):
            return

        def prepare(_proc: Any, sock: Any) -> Any:
            info, fds = self._boot_for(cell)
            try:
                control.send(sock, (Ctl.PREPARE, info), fds)
            except OSError:
                return None
            return (cell.id, info, fds)

        self._spares.prepare(prepare)

    def _launch_for_burst(self) -> tuple[Any, Any] | None:
        """Starter thread: a process launched ahead for this start, or None (no burst).

        With starts queued behind this one, up to ``LAUNCH_AHEAD`` processes are being
        launched at once: each start then waits on the fork server in parallel with the
        others rather than one after the other (the waits, not the CPU, made 1000 starts
        slow on a loaded machine).
        """
        if self._launcher is None:
            return None
        backlog = self._submitted - self._begun  # starts queued behind this one
        want = min(backlog + 1, LAUNCH_AHEAD) if backlog > 0 else 0
        while self._launching < want:
            self._launching += 1
            self._launcher.submit(self._launch_one)
        if not self._launching:
            return None
        got = self._launched.get()  # every launch puts exactly one item
        self._launching -= 1
        if isinstance(got, BaseException):
            raise got
        return cast(tuple[Any, Any], got)

    def _launch_one(self) -> None:
        """Launcher thread: start a process; hand it (or why not) to the starter."""
        try:
            self._launched.put(self._spares.start_one())
        except BaseException as exc:
            self._launched.put(exc)

    def _stop_launched(self) -> None:
        """At close: stop the processes launched ahead and never booted."""
        if self._launcher is not None:
            self._launcher.shutdown(wait=True)
        while True:
            try:
                got = self._launched.get_nowait()
            except queue.Empty:
                return
            if isinstance(got, BaseException):
                continue
            proc, sock = got
            try:
                sock.send(QUIT)
            except OSError:
                pass
            sock.close()
            proc.join(5.0)
            if proc.exitcode is None:
                proc.kill()
                proc.join(5.0)
            proc.close()

    def _refill_later(self) -> None:
        if self._hub.loop is not None and not self._closing:
            self._hub.loop.call_later(SPARE_REFILL_DELAY, self._submit_refill)

    def _submit_refill(self) -> None:
        if not self._closing and self._unguarded is None:
            try:
                self._starter.submit(self._refill)
            except RuntimeError:  # the starter is shut down: closing
                pass

    def _watch(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        loop = self._hub.loop
        assert loop is not None
        sock.setblocking(False)
        loop.add_reader(sock, self._on_ctrl, cell, sock)
        loop.add_reader(proc.sentinel, self._on_exit, cell, proc, sock)

    # -- control messages from actors (loop thread) ---------------------------------------

    def _on_ctrl(self, cell: ActorCell, sock: Any) -> None:
        while True:
            try:
                got = control.recv(sock)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                if self._hub.loop is not None:
                    self._hub.loop.remove_reader(sock)
                return
            try:
                self._handle_ctrl(cell, sock, got[0])
            except Exception:
                logger.exception("control message from %s failed", cell.describe())

    def _handle_ctrl(self, cell: ActorCell, sock: Any, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == Ctl.READY:
            cell.pid = msg[1]
            # not at once: the watcher thread, woken now, would take the GIL from the
            # loop just as the new process's first answers arrive
            assert self._hub.loop is not None
            self._hub.loop.call_later(WATCH_AFTER, self._watch_life, cell, cell.pid)
            if cell.state == "starting":
                cell.state = CellState.RUNNING
            # running: prepare a spare for it now, if one is free (after a restart with
            # one spare there is none: the refill prepares the next; waking the starter
            # thread for nothing would take the GIL just as the first answers arrive)
            if cell is self._likely and not self._closing and self._spares.unprepared():
                try:
                    self._starter.submit(self._prepare_spare)
                except RuntimeError:  # the starter is shut down: closing
                    pass
            if cell.restarts and not self._closing and self._spares.missing():
                self._hub.loop.call_later(REFILL_AFTER_READY, self._submit_refill)
            cell.ready.set()
            self._publish(EventKind.STARTED, cell)
            logger.debug("%s started (pid %s, restarts %d)", cell.describe(), cell.pid,
                         cell.restarts)
        elif kind == Ctl.FAILED:
            cell.failed_start = (msg[1], msg[2])
            cell.reported = "start"
        elif kind == Ctl.CRASHING:
            cell.reported = "exception"
            logger.error("%s: an exception escaped its handlers:\n%s", cell.describe(), msg[1])
        elif kind == Ctl.CONNECT:
            answer, fds = self._connect(cell, msg[2])
            control.send(sock, (Ctl.ANSWER, msg[1], answer), fds)
        elif kind == Ctl.LOOKUP:
            target = self._cells.get(self._names.get(msg[2], -1))
            found: tuple[Any, ...] = ("missing",)
            if target is not None and target.state not in DEAD_STATES:
                found = ("ref", target.id, target.handlers, target.cls_name)
            control.send(sock, (Ctl.ANSWER, msg[1], found))
        elif kind == Ctl.SPAWN:
            control.send(sock, (Ctl.ANSWER, msg[1], self._spawn_for(cell, *msg[2:])))
        elif kind == Ctl.STOP_CHILD:
            control.send(sock, (Ctl.ANSWER, msg[1], self._stop_for(cell, msg[2])))
        elif kind == Ctl.DEAD_LETTER:  # a message the actor could not unpickle
            self._dead.add(cell.name, msg[1], msg[2])

    def _connect(self, cell: ActorCell, target_id: int) -> tuple[tuple[Any, ...], list[int]]:
        target = self._cells.get(target_id)
        if target is None or target.state in DEAD_STATES:
            why = self._hub.gone.get(target_id, "no such actor")
            return (Ctl.GONE, target_id, why), []
        if target_id not in cell.outbound:
            seg = self._new_ring(f"{self.run_id}a{target_id}_in{cell.id}")
            target.inbound[cell.id] = seg
            cell.outbound[target_id] = seg.name
            if target.ctrl is not None:
                try:
                    control.send(target.ctrl, (Ctl.INBOUND, cell.id, seg.name), [cell.efd])
                except OSError:
                    pass  # restarting: the boot message will list this ring
        ring_name = cell.outbound[target_id]
        return ("channel", target_id, ring_name, target.ctl.seg.name), [target.efd]

    def _spawn_for(self, parent: ActorCell, blob: bytes, name: str | None, restart: str,
                   options: ActorOptions | None = None,
                   group: tuple[str, int, float] | None = None) -> tuple[Any, ...]:
        """An actor spawns a child: it is supervised on the actor's behalf, by the
        supervisor of its children or, with *group*, by one under it (a pool's: its own
        restart intensity, per child)."""
        try:
            cls, _args, _kwargs = _serialization.loads(blob)

            if parent.kids is None:
                parent.kids = Supervisor(self, f"{parent.name}.children",
                                         give_up_per_child=True)
            sup = parent.kids if group is None else self._group_of(parent.kids, *group)
            options = options or getattr(cls, "actor_options", None) or ActorOptions()
            ref = self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart,
                                   sup, options)
        except Exception as exc:
            return ("error", exc)
        return ("ref", ref.actor_id, ref.name, ref.handlers, ref.cls_name)

    def _group_of(self, kids: Supervisor, name: str, max_restarts: int,
                  within: float) -> Supervisor:
        """The supervisor *name* under an actor's children supervisor (made on first use):
        it gives up on one child at a time, past *max_restarts* within *within* each."""
        for child in kids.children:
            if isinstance(child, Supervisor) and child.name == name:
                return child
        return Supervisor(self, name, max_restarts=max_restarts, within=within, parent=kids,
                          give_up_per_child=True)

    def _stop_for(self, parent: ActorCell, child_id: int) -> tuple[Any, ...]:
        """An actor stops one of its children (asynchronously: the answer comes at once)."""
        child = self._cells.get(child_id)
        if child is None or parent.kids is None or child not in parent.kids.cells():
            err = ValueError(f"actor #{child_id} is not a child of {parent.describe()}")
            return ("error", err)
        parent.kids.remove(child)
        for sup in parent.kids.children:  # or under a group of them (a pool's)
            if isinstance(sup, Supervisor):
                sup.remove(child)
        self.finish_group([child], f"stopped by its parent {parent.name!r}")
        return ("ok",)

    # -- deaths (loop thread) -------------------------------------------------------------

    def _watch_life(self, cell: ActorCell, pid: int) -> None:
        if cell.proc is not None and cell.pid == pid and not self._closing:
            self._life.watch(cell.id, os.path.join(SHM_DIR, cell.ctl.seg.name), pid)

    def _on_life_lost(self, key: object, pid: int, status: int) -> None:
        """Watcher thread: the process *pid* of actor *key* is exiting (lifelock.py)."""
        loop = self._hub.loop
        if loop is None or self._closed:
            return
        cell = self._cells.get(cast(int, key))
        if cell is not None:
            try:
                loop.call_soon_threadsafe(self._on_early_exit, cell, pid, status)
            except RuntimeError:  # the loop is closed: closing
                pass

    def _on_early_exit(self, cell: ActorCell, pid: int, status: int) -> None:
        """The process is exiting (it runs no code any more) but is not torn down and
        reported yet: handle its death now, reap it when its sentinel fires."""
        proc = cell.proc
        if proc is None or proc.pid != pid or cell.ctrl is None:
            return
        if cell.state != "running" or self._closing:
            # a stop (or a group restart) it was asked for: stop() and close() return once
            # the process is gone, files and sockets closed, so wait for the sentinel
            return
        self._died(cell, proc, cell.ctrl, lifelock.exitcode_of(status))

    def _on_exit(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        loop = self._hub.loop
        assert loop is not None
        loop.remove_reader(proc.sentinel)
        if cell.proc is not proc:  # handled already, on its early death notice
            self._reap_dying(proc)
            return
        self._died(cell, proc, sock, None)

    def _reap_dying(self, proc: Any, timeout: float = 1.0) -> None:
        if proc in self._dying:
            self._dying.remove(proc)
        proc.join(timeout)
        if proc.exitcode is None:
            kill_if_child(proc.pid)
        else:
            proc.close()

    def _died(self, cell: ActorCell, proc: Any, sock: Any, code: int | None) -> None:
        """*cell*'s process *proc* died: with *code* None, its sentinel fired (reap it
        now); else it is exiting with that exit code, and is reaped later."""
        loop = self._hub.loop
        assert loop is not None
        if code is None:  # on an early notice the watcher has let it go already
            self._life.forget(cell.id)
        self._on_ctrl(cell, sock)  # a last "failed"/"crashing" message may be waiting
        loop.remove_reader(sock)
        sock.close()
        if code is not None:
            self._dying.append(proc)  # its sentinel reader stays: _on_exit reaps it
        else:
            proc.join(1.0)
            code = proc.exitcode
            if code is None:
                # No exit status: another part of this process reaped it (os.wait(), a
                # SIGCHLD handler), or it closed its end of the sentinel and lives on.
                # Kill it if it is still our child; the Process object cannot be closed.
                kill_if_child(proc.pid)
            else:
                proc.close()
        cell.proc = cell.ctrl = None
        with self._hub.drain_lock:
            self._hub.drain()  # replies it published before dying
        if cell.pid and not self._closing and self._orphans.process_gone(cell.pid):
            self._sweep_orphans_later()
        cell.exited.set()
        if cell.kids is not None:  # its children die with it (it supervised them)
            self._stop_kids(cell, f"their parent {cell.describe()} stopped")
        if cell.state == "restarting":
            self._plan_exited(cell)
            return
        if cell.state == "stopping" or self._closing:
            self._finish(cell, CellState.STOPPED, cell.finish_why)
            return
        if code == _host.EXIT_MAIN_UNGUARDED:  # deterministic: every start would end so
            self._main_unguarded(cell)
            return
        cause = classify_exit(code, cell.killed_for, cell.reported)
        cell.killed_for = cell.reported = None
        cell.crashes[cause] += 1
        text = f"{cell.describe()} (pid {cell.pid}) {crash_words(cell, cause, code)}"
        self._publish(EventKind.CRASHED, cell, cause, text)
        if cell.state == "starting" and cell.failed_start is None and code == 1:
            text += self._main_module_hint()  # died before it could even boot
        logger.warning("%s", text)
        if cause == "start" and cell.failed_start is not None:
            exc, tb = cell.failed_start
            text = f"{cell.describe()} failed to start: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", text, tb)
            if not should_restart(cell.restart, cause, code, cell.options):
                self._finish(cell, CellState.FAILED, text, cause="start", error=exc)
                cell.supervisor.remove(cell)
                return
        else:
            attribute_crash(cell, text, cause, self._dead, self._fail_caller)
        if should_restart(cell.restart, cause, code, cell.options):
            cell.state = CellState.RESTARTING
            cell.supervisor.child_failed(cell, text)
        else:
            words = crash_words(cell, cause, code)
            why = f"{words} and was not restarted (restart={cell.restart!r})"
            self._finish(cell, CellState.STOPPED, why, cause=cause)
            cell.supervisor.remove(cell)

    def _sweep_orphans_later(self) -> None:
        """Loop thread: blocks of a process gone wait for their record's commit; look
        again in a while (only while some wait: an idle system wakes no more often)."""
        if self._orphans_due or self._hub.loop is None:
            return
        self._orphans_due = True

        def again() -> None:
            self._orphans_due = False
            if not self._closing and self._orphans.sweep():
                self._sweep_orphans_later()

        self._hub.loop.call_later(ORPHAN_SWEEP_INTERVAL, again)

    def _main_unguarded(self, cell: ActorCell) -> None:
        """An actor process found the main script creating a system at import time."""
        if self._unguarded is None:
            main = sys.modules.get("__main__")
            script = getattr(main, "__file__", None) or "your main script"
            self._unguarded = (
                f"{script} creates an ActorSystem when it is imported, and every actor "
                f"process imports it again (start method {self.config.start_method!r}): "
                "put the code that creates the system under "
                "`if __name__ == \"__main__\":`")
            logger.error("no actor can start: %s", self._unguarded)
        self._finish(cell, CellState.FAILED, f"could not start: {self._unguarded}", cause="start")

    def _fail_caller(self, caller: int, token: int, text: str, cause: str) -> None:
        if caller == SYSTEM_ID:
            reply = self._hub.pending.pop(token, None)
            if reply is not None:
                reply.set_exception(ActorCrashed(f"{reply.describe}: {text}", cause))
        else:
            self._hub.reply_to_actor(caller, token, ActorCrashed(text, cause))

    # -- SupervisorOps ----------------------------------------------------------------------

    def restart_group(self, cells: list[ActorCell], delay: float) -> None:
        """Stop the live *cells* (reverse start order), then start them all (start order)."""
        plan = RestartPlan(cells, delay)
        for cell in reversed(cells):
            if cell.state in DEAD_STATES:
                continue
            if cell.alive() and cell.state in ("running", "starting"):
                plan.waiting.add(cell.id)
                self._ask_to_stop(cell)
            cell.state = CellState.RESTARTING
            cell.plan = plan
        if not plan.waiting:
            self._plan_go(plan)

    def _plan_exited(self, cell: ActorCell) -> None:
        plan = cell.plan
        if plan is None:
            return
        plan.waiting.discard(cell.id)
        if not plan.waiting:
            self._plan_go(plan)

    def _plan_go(self, plan: RestartPlan) -> None:
        def start_all() -> None:
            for cell in plan.cells:
                if self._closing or cell.state != "restarting" or cell.plan is not plan:
                    continue
                cell.plan = None
                cell.restarts += 1
                cell.generation += 1
                cell.state = CellState.STARTING
                cell.ready.clear()
                cell.exited.clear()
                if self._start_process(cell, cell.generation, inline=True):
                    continue  # a spare prepared for it took over, from this thread
                with self._lock:
                    self._submitted += 1
                self._starter.submit(self._start_process, cell, cell.generation)

        assert self._hub.loop is not None
        if plan.delay > 0:
            self._hub.loop.call_later(plan.delay, start_all)
        else:
            start_all()

    def finish_group(self, cells: list[ActorCell], why: str) -> None:
        """Stop *cells* for good, in reverse start order (SupervisorOps)."""
        for cell in reversed(cells):
            if cell.state in DEAD_STATES:
                continue
            cell.finish_why = why
            self._release_name(cell)  # a successor may take the name at once
            if cell.alive():
                self._ask_to_stop(cell)
                cell.state = CellState.STOPPING
            else:
                self._finish(cell, CellState.STOPPED, why)

    def _ask_to_stop(self, cell: ActorCell) -> None:
        """Graceful stop now, SIGKILL (process tree) after the stop timeout."""
        cell.ctl.slots[C_STOP] = 1  # a busy actor sees it between two messages
        if cell.ctrl is not None:
            try:
                control.send(cell.ctrl, (Ctl.STOP,))
            except OSError:
                pass
        proc = cell.proc
        assert self._hub.loop is not None
        self._hub.loop.call_later(self.config.stop_timeout, self._kill_if_still, cell, proc)

    def _kill_if_still(self, cell: ActorCell, proc: Any) -> None:
        if cell.proc is proc and proc is not None:
            logger.warning("%s did not stop within %gs: killing it", cell.describe(),
                           self.config.stop_timeout)
            self._kill(cell)

    def _kill(self, cell: ActorCell) -> None:
        proc = cell.proc
        if proc is not None and proc.pid is not None:
            kill_tree(proc.pid)

    def _stop_kids(self, cell: ActorCell, why: str) -> None:
        kids = cell.kids
        if kids is None:
            return
        cells = kids.cells()
        kids.children.clear()
        self.finish_group(cells, why)

    # -- gone for good ----------------------------------------------------------------------

    def _finish(self, cell: ActorCell, state: CellState, why: str, cause: str = "stopped",
                error: BaseException | None = None) -> None:
        """The actor is gone for good: fail what waits on it, tell its callers."""
        if cell.state in DEAD_STATES:
            return
        hub = self._hub
        hub.gone[cell.id] = why
        self._release_name(cell)
        cell.state = state
        if cell.supervisor is not None:
            cell.supervisor.remove(cell)
        if cell.kids is not None:
            self._stop_kids(cell, f"their parent {cell.describe()} stopped")

        about = why if cell.describe() in why else f"{cell.describe()} {why}"

        def failure(reply: Reply[Any]) -> BaseException:
            if state == "failed":
                exc: BaseException = ActorCrashed(f"{reply.describe}: {about}", "start")
                exc.__cause__ = error
                return exc
            if cause not in ("stopped",):
                return ActorCrashed(f"{reply.describe}: {about}", cause)
            return ActorStopped(f"{reply.describe}: {about}")

        with hub.drain_lock:
            chan = hub.outbound.pop(cell.id, None)
            inchan = hub.inbound.pop(cell.id, None)
        unsent: list[tuple[Any, ...]] = []
        if chan is not None:
            unsent = hub.close_channel(chan, about, fail_replies=False)
            chan.close()
        if inchan is not None:
            inchan.close()
        # dead letters first, callers second: a caller whose call just failed finds its
        # message among the dead letters
        dead_letter_queued(cell, why, self._dead, unsent)
        hub.fail_pending(cell.id, failure)
        for other in self._cells.values():
            if other.ctrl is not None and cell.id in other.outbound:
                try:
                    control.send(other.ctrl, (Ctl.GONE, cell.id, why))
                except OSError:
                    pass
        cell.exited.set()
        cell.ready.set()
        self._publish(EventKind.STOPPED, cell, None if cause == "stopped" else cause, about)
        self._finished.append(cell.id)
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Past ``stopped_kept`` actors gone for good, forget the oldest: its record (no
        longer in ``metrics()``), and its shared memory and doorbell (loop thread)."""
        while len(self._finished) > self.config.stopped_kept and not self._closing:
            cell = self._cells.get(self._finished[0])
            if cell is not None and cell.proc is not None:
                return  # its process is still on its way out: next time
            self._finished.popleft()
            if cell is None:
                continue
            with self._lock:
                del self._cells[cell.id]
                self._monitored.pop(cell.id, None)
            for seg in cell.inbound.values():
                seg.close()
                seg.unlink()
            cell.inbound.clear()
            cell.ctl.close()
            cell.ctl.seg.unlink()
            cell.spec.close()
            cell.spec.unlink()
            os.close(cell.efd)

    def _release_name(self, cell: ActorCell) -> None:
        with self._lock:
            if self._names.get(cell.name) == cell.id:
                del self._names[cell.name]

    # -- monitors (loop thread) -------------------------------------------------------------

    def _start_monitor(self) -> None:
        """Loop thread: an actor with a hang timeout or a memory limit exists; make sure
        ``_monitor`` runs (it stops while there is none: an idle system wakes less)."""
        if not self._monitor_on and self._hub.loop is not None and not self._closing:
            self._monitor_on = True
            self._hub.loop.call_later(self.config.monitor_interval, self._monitor)

    def _monitor(self) -> None:
        """Kill actors whose handler hangs past ``hang_timeout`` or that pass ``max_rss``."""
        if self._closing or self._hub.loop is None or not self._monitored:
            self._monitor_on = False
            return
        now_ns = time.monotonic_ns()
        for cell in list(self._monitored.values()):
            opts = cell.options
            if cell.state != "running" or cell.proc is None or cell.killed_for:
                continue
            slots = cell.ctl.slots
            since = slots[C_SINCE]
            if (opts.hang_timeout and slots[C_BUSY] and since
                    and now_ns - since > opts.hang_timeout * 1e9):
                cell.killed_for = "hang"
                self._kill(cell)
                continue
            if opts.max_rss and cell.pid:
                try:
                    rss = psutil.Process(cell.pid).memory_info().rss
                except psutil.Error:
                    continue
                if rss > opts.max_rss:
                    cell.killed_for = "oom"
                    self._kill(cell)
        self._hub.loop.call_later(self.config.monitor_interval, self._monitor)

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
        with self._lock:
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
        with self._lock:
            cell = self._cells.get(self._names.get(name, -1))
        if cell is None or cell.state in DEAD_STATES:
            msg = f"no actor named {name!r}"
            raise NoSuchActor(msg)
        return ActorRef(self._hub, self.run_id, cell.id, cell.name, cell.handlers,
                        cell.cls_name)

    def stop_actor(self, actor_id: int, timeout: float | None = None) -> None:
        """Stop an actor for good; blocks until its process is gone (see ``ActorSystem.stop``)."""
        cell = self._cells.get(actor_id)
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
            self._kill_late(cell, deadline.timeout)
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

    def _kill_late(self, cell: ActorCell, seconds: float) -> None:
        if cell.proc is not None:
            logger.warning("%s did not stop within %gs: killing it", cell.describe(), seconds)
            self._kill(cell)

    def dead_letters(self) -> list[DeadLetter]:
        """Messages that were never handled (their actor stopped) or that poisoned it."""
        return self._dead.snapshot()

    def statistics(self) -> tuple[SystemStatistics, dict[str, ActorStatistics]]:
        """Snapshots of the system and of every actor it knows (by name)."""
        open_ = not self._closed
        actors = {}
        for cell in list(self._cells.values()):
            try:
                actors[cell.name] = actor_statistics(cell, self.config.window,
                                                     with_mailbox=open_)
            except ValueError:  # forgotten meanwhile (_forget_oldest): its rings released
                continue
        sent, received = oob_traffic()
        system = SystemStatistics(self.run_id, dict(self._counts.counts), self._dead.total,
                                  self._closed, oob_bytes_sent=sent,
                                  oob_bytes_received=received)
        if open_:
            wakeups, lost = hub_figures(self._hub.ctl)
            system = dataclasses.replace(system, pending_replies=len(self._hub.pending),
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
        cell = self._cells.get(actor_id)
        if cell is None:
            msg = f"no actor #{actor_id} (it never existed, or stopped long ago)"
            raise NoSuchActor(msg)
        if not cell.ready.wait(timeout if timeout is not None else self.config.start_timeout):
            msg = f"{cell.describe()} did not start in time"
            raise StartTimeout(msg)

    def pid_of(self, actor_id: int) -> int | None:
        """The pid of the process running (or booting) the actor; None without one."""
        cell = self._cells.get(actor_id)
        return cell.pid if cell is not None and cell.proc is not None else None


    def check_open(self) -> None:
        """Raise ``ActorStopped`` once the system is closing."""
        if self._closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)


    def close(self) -> None:
        """Stop every actor, join every process, unlink every segment; idempotent.

        Actors get ``stop_timeout`` to finish their current message; past half a second
        of waiting, a one-line notice says so (see ``notice``). A ``KeyboardInterrupt``
        during that wait (a second Ctrl-C) kills them at once; everything is still
        joined and unlinked, and the interrupt is raised again afterwards.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
        LIVE_RUNTIMES.discard(self)
        self.root.state = "stopped"
        cells = list(self._cells.values())
        interrupted: KeyboardInterrupt | None = None
        try:
            self._spares.close()  # no refills from here on
            # The starter thread is the parent thread of every process under fork and
            # spawn (PR_SET_PDEATHSIG fires when it exits): it is shut down last.
            self._on_loop(self.finish_group, cells, "the actor system was closed")
            self._wait_stopped(cells)
        except KeyboardInterrupt as exc:
            interrupted = exc
            for cell in cells:
                self._kill(cell)
        try:
            self._teardown(cells)
        except BaseException:
            # interrupted once more: the processes and the segments go regardless
            for cell in cells:
                self._kill(cell)
            unlink_prefix(self.run_id)
            raise
        if interrupted is not None:
            raise interrupted

    def _wait_stopped(self, cells: list[ActorCell]) -> None:
        """Wait up to ``stop_timeout`` for every actor to stop; kill those that do not."""
        deadline = Deadline.after(self.config.stop_timeout)
        told = False
        for cell in cells:
            if cell.proc is None:
                continue
            if not told and not cell.exited.wait(min(NOTICE_AFTER, deadline.remaining())):
                told = True
                live = sum(1 for c in cells if c.proc is not None and not c.exited.is_set())
                notice(f"waiting up to {deadline.remaining():.1f}s for {live} actor(s) to "
                       "finish their current message and stop (Ctrl-C kills them now)")
            if cell.proc is not None and not cell.exited.wait(deadline.remaining()):
                self._kill_late(cell, self.config.stop_timeout)
        for cell in cells:
            if cell.proc is not None:
                cell.exited.wait(5.0)

    def _teardown(self, cells: list[ActorCell]) -> None:
        self._spares.close()
        self._stop_loop()
        self._life.close()
        for cell in cells:
            self._reap(cell)
        for proc in list(self._dying):  # still torn down by the kernel (lifelock)
            self._reap_dying(proc, self.config.stop_timeout)
        self._starter.shutdown(wait=True)
        self._stop_launched()
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
        forget_mapped(self.run_id)
        hub.ctl.close()
        os.close(hub.efd)
        unlink_prefix(self.run_id)


WATCH_AFTER = 0.02  # seconds after READY its early death notice is armed (lifelock)
LIVE_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()  # open, not closed yet
NOTICE_AFTER = 0.5  # seconds close() waits for actors before it says that it waits


def notice(text: str) -> None:
    """Tell the user something they are waiting on: a warning of the ``actorq`` logger.

    Without any logging configured (only the library's NullHandler), the warning would be
    swallowed, so the line goes to stderr instead, prefixed with ``actorq:``.
    """
    configured = logging.getLogger().handlers or any(
        not isinstance(h, logging.NullHandler) for h in logger.handlers)
    if configured:
        logger.warning("%s", text)
    else:
        sys.stderr.write(f"actorq: {text}\n")
        sys.stderr.flush()
