"""ActorSystem: the facade that hosts the system hub and the actors' processes.

Threads of the user's process::

    user thread(s)  ── spawn / calls / result() ──┐  (a sync waiter spins on the rings
                                                  │   itself for a moment, then sleeps)
    hub loop thread (uvloop) ◀────────────────────┘  doorbell, control sockets, process
                                                      sentinels: replies, channel set-up,
                                                      crash handling and restarts
    starter thread                                    forks/asks the fork server, sends
                                                      the start message (never blocks the loop)

Shutdown order, written once (``close``): refuse new work, ask every actor to stop,
SIGKILL (with its process tree) whatever is still alive after ``stop_timeout``, join every
process, fail what is still pending, stop the loop, unmap and unlink every segment of this
run, close every fd.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import os
import select
import signal
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil

from actorq import _host, _serialization
from actorq._actor import Actor, handler_names
from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._errors import ActorCrashed, ActorStopped
from actorq._hub import OP_REPLY, SYSTEM_ID, Hub
from actorq._ids import new_run_prefix
from actorq._process.spawn import get_context
from actorq._ref import ActorRef, register_hub, unregister_hub
from actorq._reply import Reply
from actorq._transport import control
from actorq._transport.channel import (
    C_BUSY,
    C_HANDLED,
    C_LOST,
    C_REPLY_TO,
    C_TOKEN,
    C_WAKEUPS,
    CTL_SIZE,
    ControlBlock,
    InChannel,
    OutChannel,
)
from actorq._transport.ring import Ring
from actorq._transport.shm import Segment, sweep, unlink_prefix

logger = logging.getLogger("actorq")

RESTART_TYPES = ("permanent", "transient", "temporary")
A = TypeVar("A", bound=Actor)


def describe_exit(code: int | None) -> tuple[str, str]:
    """Return (cause, words) for a process exit code (negative: killed by a signal)."""
    if code is None:
        return "lost", "vanished (no exit status)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "signal", f"was killed by {name}"
    return "exit", f"exited with code {code}"


@dataclass(eq=False)
class ActorCell:
    """What the system keeps of one actor across its incarnations."""

    id: int
    name: str
    cls_name: str
    handlers: frozenset[str]
    restart: str
    spec: Segment
    spec_size: int
    ctl: ControlBlock
    efd: int
    parent: int | None = None
    inbound: dict[int, Segment] = field(default_factory=dict)  # rings it reads, by sender
    outbound: dict[int, str] = field(default_factory=dict)  # rings it writes, by target
    state: str = "starting"  # starting | running | stopping | stopped | failed
    restarts: int = 0
    pid: int | None = None
    proc: Any = None
    ctrl: Any = None
    failed_start: tuple[BaseException, str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        """``"Counter 'c'"``."""
        return f"{self.cls_name} {self.name!r}"


class SystemHub(Hub):
    """The user process's hub: its loop runs in a background thread."""

    def __init__(self, system: ActorSystem, ctl: ControlBlock, efd: int) -> None:
        super().__init__(SYSTEM_ID, system.run_id, system.config, ctl, efd)
        self.system = system
        self.spin_lock = threading.Lock()
        self.spinners = 0

    def open_channel(self, ref: ActorRef[Any]) -> Any:
        """Channels to actors exist from spawn; a missing one means the actor is gone."""
        cell = self.system._cells.get(ref.actor_id)
        why = self.gone.get(ref.actor_id) or (cell.state if cell else "unknown actor")
        msg = f"{ref._describe()} is stopped: {why}"
        raise ActorStopped(msg)

    def may_block(self) -> bool:
        """A user thread may wait; the hub loop, or any running event loop, may not."""
        if threading.get_ident() == self.loop_thread_id:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Flush, spin on the rings for a moment (no thread hand-off), then sleep."""
        if threading.get_ident() == self.loop_thread_id:
            msg = f"{reply.describe}: result() called on the actor system's own loop; use await"
            raise RuntimeError(msg)
        self.flush_dirty()
        if not reply._done:
            self.spin_for(reply)
        while not reply._done and not deadline.expired():
            reply._wait_event(deadline)

    def spin_for(self, reply: Reply[Any]) -> None:
        """Poll the inbound rings from this thread for ``spin_seconds`` x 4."""
        import time

        with self.spin_lock:
            self.spinners += 1
            self.unpark()
        try:
            end = time.perf_counter() + self.config.spin_seconds * 4
            while not reply._done and time.perf_counter() < end:
                if self.drain_lock.acquire(blocking=False):
                    try:
                        self.drain()
                    finally:
                        self.drain_lock.release()
        finally:
            self.park_if_idle()

    def park_if_idle(self, leaving_spin: bool = True) -> None:
        """Park unless someone spins; if data slipped in, have the loop read it."""
        with self.spin_lock:
            if leaving_spin:
                self.spinners -= 1
            if self.spinners == 0 and not self.park():
                os.eventfd_write(self.efd, 1)

    def on_wake(self) -> None:
        """Loop thread: the doorbell rang."""
        self.clear_doorbell()
        self.ctl.slots[C_WAKEUPS] += 1
        with self.drain_lock:
            self.drain()
        self.park_if_idle(leaving_spin=False)

    def watchdog(self) -> None:
        """Safety net: data still unread while parked at two looks is a lost wake-up."""
        if self.system._closing or self.loop is None:
            return
        if self._parked_with_data():
            wakeups = self.ctl.slots[C_WAKEUPS]

            def second_look() -> None:
                if self.ctl.slots[C_WAKEUPS] == wakeups and self._parked_with_data():
                    self.ctl.slots[C_LOST] += 1
                    self.on_wake()

            self.loop.call_later(0.01, second_look)
        self.loop.call_later(self.config.park_timeout, self.watchdog)

    def _parked_with_data(self) -> bool:
        if self.spinners or not self.ctl.slots[0] & 1 or not self.has_unread():
            return False
        readable, _w, _x = select.select([self.efd], [], [], 0)
        return not readable

    def reply_to_actor(self, caller: int, token: int, exc: BaseException) -> None:
        """Send an error reply, on the actor's behalf, to an actor that called it."""
        chan = self.outbound.get(caller)
        if chan is None:
            return
        with chan.lock:
            chan.outbox.append((OP_REPLY, token, False, exc, ""))
        self.dirty.add(chan)
        self.schedule_flush()


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
        config = SystemConfig()
        if start_method is not None:
            options["start_method"] = start_method
        self.config = config.replace(**options) if options else config
        self.workers = workers or os.cpu_count() or 1
        self._closing = False
        self._closed = False
        self._cells: dict[int, ActorCell] = {}
        self._names: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        sweep()  # what dead runs left in /dev/shm
        self.run_id = new_run_prefix()
        self._ctx = get_context(self.config.start_method)
        ctl_seg = Segment.create(self.run_id + "ctl0", CTL_SIZE)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._hub = SystemHub(self, ControlBlock(ctl_seg), efd)
        register_hub(self.run_id, self._hub)
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "actorq-starter")
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="actorq-hub", daemon=True)
        self._thread.start()
        self._loop_ready.wait(10)
        _live_systems.add(self)

    # -- the hub loop -------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        hub = self._hub
        hub.loop = loop
        hub.loop_thread_id = threading.get_ident()
        loop.add_reader(hub.efd, hub.on_wake)
        hub.park()
        loop.call_later(self.config.park_timeout, hub.watchdog)
        self._loop_ready.set()
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(hub.efd)
            loop.close()

    def _on_loop(self, fn: Any, *args: Any) -> None:
        loop = self._hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    # -- spawning -----------------------------------------------------------------------

    def spawn(self, cls: type[A], *args: Any, name: str | None = None,
              restart: str = "permanent", **kwargs: Any) -> ActorRef[A]:
        """Start an actor of *cls* in its own process; return its ref at once.

        ``args``/``kwargs`` go to ``cls.__init__`` (in the actor's process). Calls made
        before the process is up are delivered once it is. Raises ``TypeError`` for a
        class that is not an ``Actor`` or arguments that cannot be pickled, and
        ``ValueError`` for a name in use or an unknown restart type.
        """
        self._check_open()
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            msg = f"spawn() needs a subclass of actorq.Actor, not {cls!r}"
            raise TypeError(msg)
        _serialization.check_picklable(f"{cls.__name__}()", args, kwargs)
        try:
            blob = _serialization.dumps_code((cls, args, kwargs))
        except Exception as exc:
            msg = f"cannot send {cls.__name__} or its arguments to a new process: {exc}"
            raise TypeError(msg) from exc
        return self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart, None)

    def _spawn_blob(self, blob: bytes, cls_name: str, handlers: frozenset[str],
                    name: str | None, restart: str, parent: int | None) -> ActorRef[Any]:
        if restart not in RESTART_TYPES:
            msg = f"restart must be one of {RESTART_TYPES}, not {restart!r}"
            raise ValueError(msg)
        with self._lock:
            actor_id = next(self._ids)
            name = name or f"{cls_name}-{actor_id}"
            if name in self._names:
                msg = f"an actor named {name!r} already exists"
                raise ValueError(msg)
            cell = self._new_cell(actor_id, name, cls_name, handlers, restart, blob)
            cell.parent = parent
            self._cells[actor_id] = cell
            self._names[name] = actor_id
        self._starter.submit(self._start_process, cell)
        return ActorRef(self._hub, self.run_id, actor_id, name, handlers, cls_name)

    def _new_cell(self, actor_id: int, name: str, cls_name: str, handlers: frozenset[str],
                  restart: str, blob: bytes) -> ActorCell:
        prefix = f"{self.run_id}a{actor_id}_"
        spec = Segment.create(prefix + "spec", max(len(blob), 1), prefault=False)
        spec.buf[: len(blob)] = blob
        ctl = ControlBlock(Segment.create(prefix + "ctl", CTL_SIZE))
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        cell = ActorCell(actor_id, name, cls_name, handlers, restart, spec, len(blob), ctl, efd)
        to_actor = self._new_ring(f"{prefix}in{SYSTEM_ID}")
        from_actor = self._new_ring(f"{prefix}out{SYSTEM_ID}")
        cell.inbound[SYSTEM_ID] = to_actor
        cell.outbound[SYSTEM_ID] = from_actor.name
        hub = self._hub
        hub.outbound[actor_id] = OutChannel(actor_id, Segment.attach(to_actor.name), ctl, efd,
                                            self.config.window)
        hub.inbound[actor_id] = InChannel(actor_id, from_actor)
        return cell

    def _new_ring(self, name: str) -> Segment:
        seg = Segment.create(name, Ring.size_for(self.config.ring_size))
        Ring(seg.buf, init=True).release()
        return seg

    def _start_process(self, cell: ActorCell) -> None:
        """Starter thread: start (or restart) *cell*'s process and send its start message."""
        if self._closing or cell.state in ("stopped", "failed"):
            return
        sys_end, child_end = control.socketpair()
        try:
            proc = self._ctx.Process(target=_host.main, args=(child_end,),  # type: ignore[attr-defined]
                                     name=f"actorq:{cell.name}", daemon=True)
            proc.start()
        except Exception:
            logger.exception("could not start a process for %s", cell.describe())
            sys_end.close()
            child_end.close()
            self._on_loop(self._give_up, cell, "its process could not be started")
            return
        finally:
            pass
        child_end.close()
        fds = [cell.efd, self._hub.efd]
        outbound = {}
        for target, ring_name in cell.outbound.items():
            if target == SYSTEM_ID:
                outbound[target] = (ring_name, self._hub.ctl.seg.name, 1)
            elif (peer := self._cells.get(target)) is not None and peer.state not in (
                    "stopped", "failed"):
                outbound[target] = (ring_name, peer.ctl.seg.name, len(fds))
                fds.append(peer.efd)
        info = {
            "id": cell.id, "name": cell.name, "run_id": self.run_id, "config": self.config,
            "ctl": cell.ctl.seg.name, "spec": cell.spec.name, "spec_size": cell.spec_size,
            "inbound": {s: seg.name for s, seg in cell.inbound.items()},
            "outbound": outbound, "restarts": cell.restarts,
        }
        try:
            control.send(sys_end, ("boot", info), fds)
        except OSError:
            pass  # it died already: its sentinel tells the loop
        cell.proc, cell.ctrl = proc, sys_end
        self._on_loop(self._watch, cell, proc, sys_end)

    def _watch(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        loop = self._hub.loop
        assert loop is not None
        sock.setblocking(False)
        loop.add_reader(sock, self._on_ctrl, cell, sock)
        loop.add_reader(proc.sentinel, self._on_exit, cell, proc, sock)

    # -- control messages from actors (loop thread) ------------------------------------

    def _on_ctrl(self, cell: ActorCell, sock: Any) -> None:
        while True:
            try:
                got = control.recv(sock)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                self._hub.loop.remove_reader(sock)  # type: ignore[union-attr]
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
            logger.debug("%s started (pid %s, restarts %d)", cell.describe(), cell.pid,
                         cell.restarts)
        elif kind == "failed":
            cell.failed_start = (msg[1], msg[2])
        elif kind == "connect":
            answer, fds = self._connect(cell, msg[2])
            control.send(sock, ("answer", msg[1], answer), fds)
        elif kind == "lookup":
            target = self._cells.get(self._names.get(msg[2], -1))
            answer: tuple[Any, ...] = ("missing",)
            if target is not None:
                answer = ("ref", target.id, target.handlers, target.cls_name)
            control.send(sock, ("answer", msg[1], answer))
        elif kind == "spawn":
            control.send(sock, ("answer", msg[1], self._spawn_for(cell, *msg[2:])))

    def _connect(self, cell: ActorCell, target_id: int) -> tuple[tuple[Any, ...], list[int]]:
        target = self._cells.get(target_id)
        if target is None or target.state in ("stopped", "failed"):
            why = self._hub.gone.get(target_id, "no such actor")
            return ("gone", target_id, why), []
        if target_id not in cell.outbound:
            seg = self._new_ring(f"{self.run_id}a{target_id}_in{cell.id}")
            target.inbound[cell.id] = seg
            cell.outbound[target_id] = seg.name
            if target.ctrl is not None and target.state in ("running", "starting"):
                try:
                    control.send(target.ctrl, ("inbound", cell.id, seg.name))
                except OSError:
                    pass  # restarting: the boot message will list this ring
        ring_name = cell.outbound[target_id]
        return ("channel", target_id, ring_name, target.ctl.seg.name), [target.efd]

    def _spawn_for(self, parent: ActorCell, blob: bytes, name: str | None,
                   restart: str) -> tuple[Any, ...]:
        try:
            cls, _args, _kwargs = _serialization.loads(blob)
            ref = self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart,
                                   parent.id)
        except Exception as exc:
            return ("error", exc)
        return ("ref", ref.actor_id, ref.name, ref.handlers, ref.cls_name)

    # -- deaths (loop thread) ----------------------------------------------------------

    def _on_exit(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        loop = self._hub.loop
        assert loop is not None
        loop.remove_reader(proc.sentinel)
        self._on_ctrl(cell, sock)  # a last "failed" message may be waiting
        loop.remove_reader(sock)
        sock.close()
        proc.join(1.0)
        code = proc.exitcode
        proc.close()
        cell.proc = cell.ctrl = None
        with self._hub.drain_lock:
            self._hub.drain()  # replies it published before dying
        cell.exited.set()
        if cell.state == "stopping" or self._closing:
            self._finish(cell, "stopped", "it was stopped")
            return
        cause, words = describe_exit(code)
        if cell.failed_start is not None:
            exc, tb = cell.failed_start
            text = f"{cell.describe()} failed to start: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", text, tb)
            self._finish(cell, "failed", text, cause="start", error=exc)
            return
        text = f"{cell.describe()} (pid {cell.pid}) {words}"
        self._attribute_crash(cell, text, cause)
        restart = cell.restart == "permanent" or (cell.restart == "transient" and code != 0)
        if restart:
            cell.restarts += 1
            cell.state = "starting"
            cell.ready.clear()
            cell.exited.clear()
            logger.warning("%s; restarting (restart %d)", text, cell.restarts)
            self._starter.submit(self._start_process, cell)
        else:
            logger.warning("%s; not restarted (restart=%r)", text, cell.restart)
            self._finish(cell, "stopped", f"{words} and was not restarted", cause=cause)

    def _attribute_crash(self, cell: ActorCell, text: str, cause: str) -> None:
        """Fail the call the dead actor was handling; skip it in its ring."""
        slots = cell.ctl.slots
        busy, token, reply_to = slots[C_BUSY], slots[C_TOKEN], slots[C_REPLY_TO]
        slots[C_BUSY] = 0
        if not busy:
            return
        sender = busy - 1
        seg = cell.inbound.get(sender)
        if seg is not None:
            ring = Ring(seg.buf)
            rec = ring.read_at(ring.head())
            if rec is not None:
                rec.payload.release()
                index = ring.skip_count(rec.pos)
                if index + 1 >= rec.count:
                    ring.commit(rec.end, rec.count)
                else:
                    ring.mark_progress(rec.pos, index + 1)
            ring.release()
        if token:
            exc = ActorCrashed(f"{text} while handling this call", cause)
            caller = reply_to - 1
            if caller == SYSTEM_ID:
                reply = self._hub.pending.pop(token, None)
                if reply is not None:
                    reply._fail(ActorCrashed(f"{reply.describe}: {text} while handling "
                                             "this call", cause))
            else:
                self._hub.reply_to_actor(caller, token, exc)

    def _finish(self, cell: ActorCell, state: str, why: str, cause: str = "stopped",
                error: BaseException | None = None) -> None:
        """The actor is gone for good: fail what waits on it, tell its callers."""
        hub = self._hub
        hub.gone[cell.id] = why
        with self._lock:
            if self._names.get(cell.name) == cell.id:
                del self._names[cell.name]

        def failure(reply: Reply[Any]) -> BaseException:
            if state == "failed":
                exc: BaseException = ActorCrashed(f"{reply.describe}: {why}", "start")
                exc.__cause__ = error
                return exc
            if cause in ("signal", "exit", "lost"):
                return ActorCrashed(f"{reply.describe}: {cell.describe()} {why}", cause)
            return ActorStopped(f"{reply.describe}: {cell.describe()} {why}")

        cell.state = state
        hub.fail_pending(cell.id, failure)
        with hub.drain_lock:
            chan = hub.outbound.pop(cell.id, None)
            inchan = hub.inbound.pop(cell.id, None)
            hub.dirty.discard(chan)  # type: ignore[arg-type]
        if chan is not None:
            chan.close()
        if inchan is not None:
            inchan.close()
        for other in self._cells.values():
            if other.ctrl is not None and cell.id in other.outbound:
                try:
                    control.send(other.ctrl, ("gone", cell.id, why))
                except OSError:
                    pass
        cell.exited.set()
        cell.ready.set()

    def _give_up(self, cell: ActorCell, why: str) -> None:
        self._finish(cell, "failed", why)

    # -- public operations --------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the live actor registered as *name* (``KeyError`` if none)."""
        with self._lock:
            cell = self._cells.get(self._names.get(name, -1))
        if cell is None or cell.state in ("stopped", "failed"):
            msg = f"no actor named {name!r}"
            raise KeyError(msg)
        return ActorRef(self._hub, self.run_id, cell.id, cell.name, cell.handlers,
                        cell.cls_name)

    def stop(self, ref: ActorRef[Any], timeout: float | None = None) -> None:
        """Stop *ref*'s actor: it finishes its current message, runs ``on_stop``, exits.

        Blocks until the process is gone (SIGKILL after the stop timeout). Messages
        still queued for it are not handled: their callers get ``ActorStopped``.
        """
        cell = self._cells.get(ref.actor_id)
        if cell is None or cell.state in ("stopped", "failed"):
            return
        deadline = Deadline.after(timeout if timeout is not None else self.config.stop_timeout)
        cell.ready.wait(deadline.remaining())  # let a starting process come up first
        self._on_loop(self._request_stop, cell)
        if not cell.exited.wait(deadline.remaining() + 0.1):
            self._kill(cell)
            cell.exited.wait(self.config.stop_timeout)
        if cell.state not in ("stopped", "failed"):
            done = threading.Event()
            self._on_loop(lambda: done.set())
            done.wait(1.0)

    def _request_stop(self, cell: ActorCell) -> None:
        if cell.state in ("stopped", "failed"):
            return
        cell.state = "stopping"
        if cell.ctrl is None:
            self._finish(cell, "stopped", "it was stopped")
            return
        try:
            control.send(cell.ctrl, ("stop",))
        except OSError:
            pass

    def _kill(self, cell: ActorCell) -> None:
        proc = cell.proc
        if proc is None or proc.pid is None:
            return
        kill_tree(proc.pid)

    def metrics(self) -> dict[str, Any]:
        """Return a snapshot: per actor (by name) its state, pid, restarts and mailbox figures."""
        actors: dict[str, Any] = {}
        if self._closed:  # the shared memory is gone: states only
            for cell in list(self._cells.values()):
                actors[cell.name] = {"id": cell.id, "state": cell.state, "pid": cell.pid,
                                     "restarts": cell.restarts}
            return {"actors": actors, "system": {"run_id": self.run_id, "closed": True}}
        for cell in list(self._cells.values()):
            slots = cell.ctl.slots
            chan = self._hub.outbound.get(cell.id)
            entry = {
                "id": cell.id, "state": cell.state, "pid": cell.pid, "restarts": cell.restarts,
                "handled": slots[C_HANDLED], "wakeups": slots[C_WAKEUPS],
                "lost_wakeups": slots[C_LOST],
                "window": chan.window if chan else 0,
                "credits_in_use": (chan.window - chan.credit()) if chan else 0,
            }
            if cell.pid and cell.state == "running":
                try:
                    p = psutil.Process(cell.pid)
                    entry["rss"] = p.memory_info().rss
                    entry["cpu_seconds"] = sum(p.cpu_times()[:2])
                except psutil.Error:
                    pass
            actors[cell.name] = entry
        hub_slots = self._hub.ctl.slots
        return {"actors": actors, "system": {
            "pending_replies": len(self._hub.pending), "wakeups": hub_slots[C_WAKEUPS],
            "lost_wakeups": hub_slots[C_LOST], "run_id": self.run_id}}

    def wait_ready(self, ref: ActorRef[Any], timeout: float | None = None) -> None:
        """Block until *ref*'s actor has started (constructor and ``on_start`` done)."""
        cell = self._cells[ref.actor_id]
        if not cell.ready.wait(timeout if timeout is not None else self.config.start_timeout):
            msg = f"{cell.describe()} did not start in time"
            raise TimeoutError(msg)

    def pid_of(self, ref: ActorRef[Any]) -> int | None:
        """The pid of the process currently running *ref*'s actor (None while starting)."""
        cell = self._cells[ref.actor_id]
        return cell.pid if cell.state == "running" else None

    # -- lifecycle ----------------------------------------------------------------------

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
        self._starter.shutdown(wait=True)
        cells = list(self._cells.values())
        for cell in cells:
            self._on_loop(self._request_stop, cell)
        deadline = Deadline.after(self.config.stop_timeout)
        for cell in cells:
            if cell.proc is not None and not cell.exited.wait(deadline.remaining()):
                self._kill(cell)
        for cell in cells:
            proc = cell.proc
            if proc is not None:
                cell.exited.wait(5.0)
        self._stop_loop()
        for cell in cells:
            self._reap(cell)
        for reply in list(self._hub.pending.values()):
            reply._fail(ActorStopped(f"{reply.describe}: the actor system was closed"))
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
        hub.ctl.close()
        os.close(hub.efd)
        unlink_prefix(self.run_id)

    def __repr__(self) -> str:
        state = "closed" if self._closing else "running"
        return f"<ActorSystem {self.run_id} {state} actors={len(self._cells)}>"


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


_live_systems: weakref.WeakSet[ActorSystem] = weakref.WeakSet()


@atexit.register
def _close_live_systems() -> None:
    for system in list(_live_systems):
        try:
            system.close()
        except Exception:
            logger.exception("closing %r at exit failed", system)


ActorSystem.__module__ = "actorq"
