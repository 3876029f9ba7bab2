"""The system's machinery: actor cells, their processes, crashes and restarts.

Everything here runs on the hub loop thread, except ``_start_process`` (starter thread)
and what ``ActorSystem`` calls from user threads under ``_lock``. ``ActorSystem`` (in
``_system``) is the public facade over this class.

A crash, from the process sentinel to the next instance::

    _on_exit ── classify (signal / exit / exception / hang / oom / start / lost)
       ├─ _attribute_crash: the slot names the message being handled → its caller gets
       │    ActorCrashed (or it is redelivered, until poison_after) → dead letters
       ├─ its own children (context.spawn) are stopped: they die with their supervisor
       └─ restart type + restart_on say restart? → supervisor.child_failed (strategy,
          intensity, backoff) → restart_group; else → _finish (gone for good)
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil

from actorq import _serialization
from actorq._config import SystemConfig
from actorq._core.actor import handler_names
from actorq._core.events import ActorEvent, EventBus, EventCounts, EventKind
from actorq._core.hub import OP_REPLY, SYSTEM_ID, method_and_args
from actorq._core.ref import ActorRef
from actorq._core.reply import Reply
from actorq._errors import ActorCrashed, ActorStopped
from actorq._process.spares import WarmPool
from actorq._runtime.systemhub import SystemHub
from actorq._supervision.deadletters import DeadLetters
from actorq._supervision.policy import (
    RESTART_TYPES,
    ActorOptions,
    SupervisorDecision,
    classify_exit,
    describe_exit,
    should_restart,
)
from actorq._supervision.supervisor import Supervisor
from actorq._transport import control
from actorq._transport.channel import (
    C_BUSY,
    C_REPLY_TO,
    C_SINCE,
    C_STOP,
    C_TOKEN,
    CTL_SIZE,
    ControlBlock,
    InChannel,
    OutChannel,
)
from actorq._transport.oob import decode_batch, run_after_commit
from actorq._transport.ring import Ring
from actorq._transport.shm import Segment

logger = logging.getLogger("actorq")

DEAD_STATES = ("stopped", "failed")
SPARE_REFILL_DELAY = 0.05


@dataclass(eq=False)
class ActorCell:
    """What the system keeps of one actor across its incarnations."""

    id: int
    name: str
    cls_name: str
    handlers: frozenset[str]
    restart: str
    options: ActorOptions
    spec: Segment
    spec_size: int
    ctl: ControlBlock
    efd: int
    supervisor: Any = None  # the Supervisor this actor is a child of
    kids: Supervisor | None = None  # children it spawned itself (context.spawn)
    inbound: dict[int, Segment] = field(default_factory=dict)  # rings it reads, by sender
    outbound: dict[int, str] = field(default_factory=dict)  # rings it writes, by target
    state: str = "starting"  # starting | running | restarting | stopping | stopped | failed
    generation: int = 0  # bumped at every planned start: a stale start is dropped
    restarts: int = 0
    pid: int | None = None
    proc: Any = None
    ctrl: Any = None
    killed_for: str | None = None  # "hang" / "oom" when actorq killed it
    reported: str | None = None  # "exception" / "start" when it said why before dying
    failed_start: tuple[BaseException, str] | None = None
    finish_why: str = "it was stopped"
    plan: Any = None
    poison_key: tuple[int, int, int] | None = None
    poison_count: int = 0
    crashes: Counter[str] = field(default_factory=Counter)
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        """``"Counter 'c'"``."""
        return f"{self.cls_name} {self.name!r}"

    def alive(self) -> bool:
        """True while a process of it runs (or is being started)."""
        return self.proc is not None


@dataclass(eq=False)
class RestartPlan:
    """Cells a supervisor restarts together: stop the live ones, then start all."""

    cells: list[ActorCell]
    delay: float
    waiting: set[int] = field(default_factory=set)


class Runtime:
    """Cells, processes, crashes, restarts: the machinery behind ``ActorSystem``."""

    config: SystemConfig
    run_id: str
    _hub: SystemHub
    _root: Supervisor
    _ctx: Any
    _starter: Any
    _spares: WarmPool
    _closing: bool

    def _init_runtime(self) -> None:
        self._cells: dict[int, ActorCell] = {}
        self._names: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._dead = DeadLetters(self.config.dead_letters)
        self._bus = EventBus()
        self._counts = EventCounts()
        self._bus.subscribe(self._counts)  # metrics: the first listener

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
                    name: str | None, restart: str, supervisor: Any,
                    options: ActorOptions) -> ActorRef[Any]:
        if restart not in RESTART_TYPES:
            msg = f"restart must be one of {RESTART_TYPES}, not {restart!r}"
            raise ValueError(msg)
        if self._closing:
            msg = "the actor system is closed"
            raise ActorStopped(msg)
        with self._lock:
            if supervisor.state != "running":
                msg = f"supervisor {supervisor.name!r} is stopped"
                raise ActorStopped(msg)
            actor_id = next(self._ids)
            name = name or f"{cls_name}-{actor_id}"
            if name in self._names:
                msg = f"an actor named {name!r} already exists"
                raise ValueError(msg)
            cell = self._new_cell(actor_id, name, cls_name, handlers, restart, options, blob)
            cell.supervisor = supervisor
            supervisor.children.append(cell)
            self._cells[actor_id] = cell
            self._names[name] = actor_id
        self._starter.submit(self._start_process, cell, cell.generation)
        return ActorRef(self._hub, self.run_id, actor_id, name, handlers, cls_name)

    def _new_cell(self, actor_id: int, name: str, cls_name: str, handlers: frozenset[str],
                  restart: str, options: ActorOptions, blob: bytes) -> ActorCell:
        prefix = f"{self.run_id}a{actor_id}_"
        spec = Segment.create(prefix + "spec", max(len(blob), 1), prefault=False)
        spec.buf[: len(blob)] = blob
        ctl = ControlBlock(Segment.create(prefix + "ctl", CTL_SIZE))
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        cell = ActorCell(actor_id, name, cls_name, handlers, restart, options, spec,
                         len(blob), ctl, efd)
        to_actor = self._new_ring(f"{prefix}in{SYSTEM_ID}")
        from_actor = self._new_ring(f"{prefix}out{SYSTEM_ID}")
        cell.inbound[SYSTEM_ID] = to_actor
        cell.outbound[SYSTEM_ID] = from_actor.name
        hub = self._hub
        hub.outbound[actor_id] = OutChannel(actor_id, Segment.attach(to_actor.name), ctl, efd,
                                            self.config.window)
        # What an actor sends the system is replies only, which spend no credit: its
        # producer never waits for any, so the channel has no doorbell to ring back.
        hub.inbound[actor_id] = InChannel(actor_id, from_actor)
        return cell

    def _new_ring(self, name: str) -> Segment:
        seg = Segment.create(name, Ring.size_for(self.config.ring_size))
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

    def _start_process(self, cell: ActorCell, generation: int) -> None:
        """Start *cell*'s process (a warm spare if there is one) and send its boot message."""
        if self._closing or cell.state != "starting" or cell.generation != generation:
            return
        try:
            got = self._spares.take()
            proc, sock = got if got is not None else self._spares.start_one()
        except Exception:
            logger.exception("could not start a process for %s", cell.describe())
            why = "its process could not be started" + self._main_module_hint()
            self._on_loop(self._finish, cell, "failed", why)
            return
        cell.ctl.slots[C_STOP] = 0
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
        info = {
            "id": cell.id, "name": cell.name, "run_id": self.run_id, "config": self.config,
            "ctl": cell.ctl.seg.name, "spec": cell.spec.name, "spec_size": cell.spec_size,
            "inbound": inbound,
            "outbound": outbound, "restarts": cell.restarts,
            "hang_timeout": cell.options.hang_timeout,
            "window_target": cell.options.window_target,
            "window_min": cell.options.window_min,
            "window_max": cell.options.window_max,
            "window_step": cell.options.window_step,
        }
        cell.proc, cell.ctrl = proc, sock
        cell.pid = proc.pid  # known now (before it can answer); confirmed by "ready"
        try:
            control.send(sock, ("boot", info), fds)
        except OSError:
            pass  # it died already: its sentinel tells the loop
        self._on_loop(self._watch, cell, proc, sock)
        # Refill later: a process started now competes for the CPU with the actor that
        # is booting (a restart measured 9.9 ms p50 with an immediate refill, 8.3 ms
        # with this delay; benchmarks/bench_restart.py).
        self._on_loop(self._refill_later)

    def _refill_later(self) -> None:
        if self._hub.loop is not None and not self._closing:
            self._hub.loop.call_later(SPARE_REFILL_DELAY, self._submit_refill)

    def _submit_refill(self) -> None:
        if not self._closing:
            try:
                self._starter.submit(self._spares.refill)
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
        if kind == "ready":
            cell.pid = msg[1]
            if cell.state == "starting":
                cell.state = "running"
            cell.ready.set()
            self._publish(EventKind.STARTED, cell)
            logger.debug("%s started (pid %s, restarts %d)", cell.describe(), cell.pid,
                         cell.restarts)
        elif kind == "failed":
            cell.failed_start = (msg[1], msg[2])
            cell.reported = "start"
        elif kind == "crashing":
            cell.reported = "exception"
            logger.error("%s: an exception escaped its handlers:\n%s", cell.describe(), msg[1])
        elif kind == "connect":
            answer, fds = self._connect(cell, msg[2])
            control.send(sock, ("answer", msg[1], answer), fds)
        elif kind == "lookup":
            target = self._cells.get(self._names.get(msg[2], -1))
            found: tuple[Any, ...] = ("missing",)
            if target is not None and target.state not in DEAD_STATES:
                found = ("ref", target.id, target.handlers, target.cls_name)
            control.send(sock, ("answer", msg[1], found))
        elif kind == "spawn":
            control.send(sock, ("answer", msg[1], self._spawn_for(cell, *msg[2:])))
        elif kind == "stop_child":
            control.send(sock, ("answer", msg[1], self._stop_for(cell, msg[2])))

    def _connect(self, cell: ActorCell, target_id: int) -> tuple[tuple[Any, ...], list[int]]:
        target = self._cells.get(target_id)
        if target is None or target.state in DEAD_STATES:
            why = self._hub.gone.get(target_id, "no such actor")
            return ("gone", target_id, why), []
        if target_id not in cell.outbound:
            seg = self._new_ring(f"{self.run_id}a{target_id}_in{cell.id}")
            target.inbound[cell.id] = seg
            cell.outbound[target_id] = seg.name
            if target.ctrl is not None:
                try:
                    control.send(target.ctrl, ("inbound", cell.id, seg.name), [cell.efd])
                except OSError:
                    pass  # restarting: the boot message will list this ring
        ring_name = cell.outbound[target_id]
        return ("channel", target_id, ring_name, target.ctl.seg.name), [target.efd]

    def _spawn_for(self, parent: ActorCell, blob: bytes, name: str | None, restart: str,
                   options: ActorOptions | None = None) -> tuple[Any, ...]:
        """An actor spawns a child: it is supervised on the actor's behalf."""
        try:
            cls, _args, _kwargs = _serialization.loads(blob)

            if parent.kids is None:
                parent.kids = Supervisor(self, f"{parent.name}.children",
                                         give_up_per_child=True, spawner=self)
            options = options or getattr(cls, "actor_options", None) or ActorOptions()
            ref = self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart,
                                   parent.kids, options)
        except Exception as exc:
            return ("error", exc)
        return ("ref", ref.actor_id, ref.name, ref.handlers, ref.cls_name)

    def _stop_for(self, parent: ActorCell, child_id: int) -> tuple[Any, ...]:
        """An actor stops one of its children (asynchronously: the answer comes at once)."""
        child = self._cells.get(child_id)
        if child is None or parent.kids is None or child not in parent.kids.cells():
            err = ValueError(f"actor #{child_id} is not a child of {parent.describe()}")
            return ("error", err)
        parent.kids.remove(child)
        self.finish_group([child], f"stopped by its parent {parent.name!r}")
        return ("ok",)

    # -- deaths (loop thread) -------------------------------------------------------------

    def _on_exit(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        loop = self._hub.loop
        assert loop is not None
        loop.remove_reader(proc.sentinel)
        self._on_ctrl(cell, sock)  # a last "failed"/"crashing" message may be waiting
        loop.remove_reader(sock)
        sock.close()
        proc.join(1.0)
        code = proc.exitcode
        proc.close()
        cell.proc = cell.ctrl = None
        with self._hub.drain_lock:
            self._hub.drain()  # replies it published before dying
        cell.exited.set()
        if cell.kids is not None:  # its children die with it (it supervised them)
            self._stop_kids(cell, f"their parent {cell.describe()} stopped")
        if cell.state == "restarting":
            self._plan_exited(cell)
            return
        if cell.state == "stopping" or self._closing:
            self._finish(cell, "stopped", cell.finish_why)
            return
        cause = classify_exit(code, cell.killed_for, cell.reported)
        cell.killed_for = cell.reported = None
        cell.crashes[cause] += 1
        text = f"{cell.describe()} (pid {cell.pid}) {self._words(cell, cause, code)}"
        self._publish(EventKind.CRASHED, cell, cause, text)
        if cell.state == "starting" and cell.failed_start is None and code == 1:
            text += self._main_module_hint()  # died before it could even boot
        logger.warning("%s", text)
        if cause == "start" and cell.failed_start is not None:
            exc, tb = cell.failed_start
            text = f"{cell.describe()} failed to start: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", text, tb)
            if not should_restart(cell.restart, cause, code, cell.options):
                self._finish(cell, "failed", text, cause="start", error=exc)
                cell.supervisor.remove(cell)
                return
        else:
            self._attribute_crash(cell, text, cause)
        if should_restart(cell.restart, cause, code, cell.options):
            cell.state = "restarting"
            cell.supervisor.child_failed(cell, text)
        else:
            words = self._words(cell, cause, code)
            why = f"{words} and was not restarted (restart={cell.restart!r})"
            self._finish(cell, "stopped", why, cause=cause)
            cell.supervisor.remove(cell)

    @staticmethod
    def _words(cell: ActorCell, cause: str, code: int | None) -> str:
        if cause == "hang":
            return (f"was killed: a handler ran past hang_timeout="
                    f"{cell.options.hang_timeout:g}s")
        if cause == "oom":
            return f"was killed: it went over max_rss={cell.options.max_rss} bytes"
        if cause == "exception":
            return f"died of an exception that escaped its handlers ({describe_exit(code)})"
        return describe_exit(code)

    def _attribute_crash(self, cell: ActorCell, text: str, cause: str) -> None:
        """Fail (or redeliver) the message the dead actor was handling, per its slot."""
        slots = cell.ctl.slots
        busy, token, reply_to = slots[C_BUSY], slots[C_TOKEN], slots[C_REPLY_TO]
        slots[C_BUSY] = slots[C_TOKEN] = 0
        if not busy:
            cell.poison_key = None
            if token:  # a call was handled and committed, but its reply may not be out
                self._fail_caller(reply_to - 1, token,
                                  f"{text} after handling this call, before its reply "
                                  "was sent", cause)
            return
        sender = busy - 1
        seg = cell.inbound.get(sender)
        method, message, poisoned = "?", None, True
        if seg is not None:
            ring = Ring(seg.buf)
            rec = ring.read_at(ring.head())
            if rec is not None:
                index = ring.skip_count(rec.pos)
                method, message = self._peek_message(rec.payload, index)
                rec.payload.release()
                key = (sender, rec.pos, index)
                cell.poison_count = cell.poison_count + 1 if cell.poison_key == key else 1
                cell.poison_key = key
                opts = cell.options
                poisoned = not opts.redeliver or cell.poison_count >= opts.poison_after
                if poisoned:
                    if index + 1 >= rec.count:
                        ring.commit(rec.end, rec.count)
                    else:
                        ring.mark_progress(rec.pos, index + 1)
            ring.release()
        if not poisoned:
            logger.warning("%s; message %r will be delivered again (%d/%d)", text, method,
                           cell.poison_count, cell.options.poison_after)
            return
        times = f" {cell.poison_count} times in a row" if cell.options.redeliver else ""
        self._dead.add(cell.name, method, f"crashed the actor{times}: {text}", message)
        if token:
            self._fail_caller(reply_to - 1, token, f"{text} while handling this call", cause)

    def _peek_message(self, payload: memoryview, index: int) -> tuple[str, Any]:
        unlink: list[str] = []
        try:
            msgs = decode_batch(payload, unlink, track=False)
            return method_and_args(msgs[index])
        except Exception:
            return "?", None

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
            cell.state = "restarting"
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
                cell.state = "starting"
                cell.ready.clear()
                cell.exited.clear()
                self._starter.submit(self._start_process, cell, cell.generation)

        assert self._hub.loop is not None
        self._hub.loop.call_later(plan.delay, start_all)

    def finish_group(self, cells: list[ActorCell], why: str) -> None:
        """Stop *cells* for good, in reverse start order (SupervisorOps)."""
        for cell in reversed(cells):
            if cell.state in DEAD_STATES:
                continue
            cell.finish_why = why
            self._release_name(cell)  # a successor may take the name at once
            if cell.alive():
                self._ask_to_stop(cell)
                cell.state = "stopping"
            else:
                self._finish(cell, "stopped", why)

    def _ask_to_stop(self, cell: ActorCell) -> None:
        """Graceful stop now, SIGKILL (process tree) after the stop timeout."""
        cell.ctl.slots[C_STOP] = 1  # a busy actor sees it between two messages
        if cell.ctrl is not None:
            try:
                control.send(cell.ctrl, ("stop",))
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

    def _finish(self, cell: ActorCell, state: str, why: str, cause: str = "stopped",
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

        hub.fail_pending(cell.id, failure)
        with hub.drain_lock:
            chan = hub.outbound.pop(cell.id, None)
            inchan = hub.inbound.pop(cell.id, None)
        if chan is not None:
            hub.close_channel(chan, about)
            chan.close()
        if inchan is not None:
            inchan.close()
        self._dead_letter_queued(cell, why)
        for other in self._cells.values():
            if other.ctrl is not None and cell.id in other.outbound:
                try:
                    control.send(other.ctrl, ("gone", cell.id, why))
                except OSError:
                    pass
        cell.exited.set()
        cell.ready.set()
        self._publish(EventKind.STOPPED, cell, None if cause == "stopped" else cause, about)

    def _release_name(self, cell: ActorCell) -> None:
        with self._lock:
            if self._names.get(cell.name) == cell.id:
                del self._names[cell.name]

    def _dead_letter_queued(self, cell: ActorCell, why: str) -> None:
        """Messages still queued for a dead actor become dead letters."""
        for seg in cell.inbound.values():
            ring = Ring(seg.buf)
            pos = ring.head()
            while (rec := ring.read_at(pos)) is not None:
                unlink: list[str] = []
                try:
                    msgs = decode_batch(rec.payload, unlink)
                except Exception:
                    msgs = []
                skip = ring.skip_count(rec.pos)
                for msg in msgs[skip:]:
                    if msg[0] != OP_REPLY:
                        method, args = method_and_args(msg)
                        self._dead.add(cell.name, method, f"not delivered: {why}", args)
                rec.payload.release()
                run_after_commit(unlink)
                ring.commit(rec.end, rec.count)
                pos = rec.end
            ring.release()

    # -- monitors (loop thread) -------------------------------------------------------------

    def _monitor(self) -> None:
        """Kill actors whose handler hangs past ``hang_timeout`` or that pass ``max_rss``."""
        if self._closing or self._hub.loop is None:
            return
        now_ns = time.monotonic_ns()
        for cell in list(self._cells.values()):
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


def kill_tree(pid: int) -> None:
    """SIGKILL *pid* and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
