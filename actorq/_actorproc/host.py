"""The actor's side: the main function of an actor process.

    main(ctrl)                      the process target (forkserver preloads this module)
      └─ Host.boot()                read the start message, map rings, build the actor
      └─ loop: on_wake()            doorbell or spin: run_batch()
              run_batch()          drain → pump (handle calls in order) → flush → spin → park
              on_ctrl()            stop, new inbound ring, peer gone
              watchdog()           park timeout: count lost wake-ups (must stay 0)

The hub that drains the mailbox and runs the handlers is ``actorhub.ActorHub``; the fork
server's preload of the user's main script is ``preload``.

Messages are handled one at a time; an ``async def`` handler holds the actor until it
returns, while replies to calls it awaits keep flowing. A call is committed (its ring
space and credit given back) once handled, and its reply is flushed before the next
handler starts, so a later crash never swallows an earlier reply.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import logging
import multiprocessing

# Imported here, in the fork server (which preloads this module), not in each actor: a
# socket handed to a forkserver child unpickles as popen_forkserver._DupFd, and every
# actor imported these two modules on its way to main(): ≈ 2.5 ms of CPU and 275
# copy-on-write page faults (1.1 MiB of its unique memory) per start (issue 15).
import multiprocessing.popen_forkserver
import multiprocessing.spawn
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

# Imported here, not in main(): under fork, a child made while another thread held the
# import lock would deadlock on its first import.
import uvloop

from actorq import _serialization
from actorq._actorproc import warmup
from actorq._actorproc.actorhub import READ_AHEAD, TIME_SLICE, ActorHub
from actorq._actorproc.preload import adopt_parent_path, preload_main
from actorq._clock import Deadline
from actorq._core.actor import ActorContext, handler_names
from actorq._core.protocol import (
    C_WATCH_MS,
    Boot,
    Ctl,
)
from actorq._core.ref import ActorRef, register_hub
from actorq._errors import (
    ActorStopped,
    NoSuchActor,
    StartTimeout,
    format_remote,
)
from actorq._process import deathsig, lean, lifelock, spawn
from actorq._process.deathsig import Lineage
from actorq._transport import control
from actorq._transport.channel import (
    C_WAKEUPS,
    ControlBlock,
)
from actorq._transport.shm import Segment

logger = logging.getLogger(__name__)

EXIT_FAILED_START = 3
EXIT_SYSTEM_GONE = 4
EXIT_UNCAUGHT = 5
EXIT_MAIN_UNGUARDED = spawn.EXIT_MAIN_UNGUARDED  # the main script, imported here, made a system


def tune_gc(gen0: int) -> None:
    """An actor is built: exempt what exists now from the cyclic collector, and collect
    generation 0 less often (*gen0*; 0 keeps Python's threshold).

    Handling messages allocates and frees objects all the time; with Python's defaults
    the actor ran a young collection every few hundred messages (the read-ahead queue
    alive each time) and a full one, over every module and class, of 30-50 ms every few
    hundred thousand. Frozen objects are still freed when their count drops to zero;
    only cycles among them are never collected.
    """
    gc.freeze()
    if gen0:
        _old, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0, gen1, gen2)



class Host:
    """Everything one actor process runs: boot, the loop's callbacks, stop."""

    def __init__(self, ctrl: socket.socket) -> None:
        self.ctrl = ctrl
        self.stopping = False
        self.name = "?"
        self.cls_name = "?"
        self.handlers: dict[str, Any] = {}
        self.instance: Any = None
        self.hub: ActorHub
        self.loop: asyncio.AbstractEventLoop
        self.done: asyncio.Future[None]
        self._answers: dict[int, tuple[Any, list[int]]] = {}
        self._req = 0
        self.info: Boot
        self.spec: tuple[Any, tuple[Any, ...], dict[str, Any], frozenset[str]] | None = None
        self.life: lifelock.Held | None = None  # its life lock, mapped by attach()

    def describe(self) -> str:
        """``"Counter 'c'"``."""
        return f"{self.cls_name} {self.name!r}"

    # -- boot ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Read the start message and map the control block and rings.

        A spare may first be told to prepare (``Ctl.PREPARE``, a boot message ahead of
        time, for the actor most likely to restart next): it maps everything and imports
        the class now, and takes over on ``Ctl.GO``, when that actor died; told to boot
        as another actor instead, it lets its preparation go.
        """
        prepared = False
        while True:
            got = control.recv(self.ctrl)
            if got is None:
                os._exit(EXIT_SYSTEM_GONE)
            msg, fds = got
            kind = msg[0]
            if kind == Ctl.GO and prepared:
                self.info = dataclasses.replace(self.info, restarts=msg[1])
                break
            if prepared:
                if self.life is not None:
                    self.life.close()  # (a view of the control block: before it goes)
                self.hub.release()
                self.spec = None
                prepared = False
            assert kind in (Ctl.BOOT, Ctl.PREPARE), kind
            self.attach(msg[1], fds)
            if kind == Ctl.BOOT:
                break
            try:
                self.spec = self.read_spec()
            except Exception:  # read again at boot, where a failure is reported
                self.spec = None
            prepared = True
        self.hub.take_over()

    def attach(self, info: Boot, fds: list[int]) -> None:
        """Map the control block and the rings of the actor *info* describes."""
        self.name = info.name
        self.info = info
        multiprocessing.current_process().name = f"actorq:{self.name}"
        ctl = ControlBlock(Segment.attach(info.ctl))
        self.life = lifelock.in_block(ctl.seg.buf)
        self.hub = ActorHub(self, info, ctl, fds[0])
        register_hub(info.run_id, self.hub)
        for sender, (ring_name, fd_index) in info.inbound.items():
            self.hub.attach_inbound(sender, ring_name, fds[fd_index])
        for target, (ring_name, ctl_name, fd_index) in info.outbound.items():
            try:
                self.hub.attach_outbound(target, ring_name, ctl_name, fds[fd_index])
            except FileNotFoundError:
                # the target was forgotten meanwhile: the first send asks the system
                # again and hears that it is gone
                os.close(fds[fd_index])

    def read_spec(self) -> tuple[Any, tuple[Any, ...], dict[str, Any], frozenset[str]]:
        """The actor's class (imported), its arguments, and its handler names."""
        info = self.info
        spec = Segment.attach(info.spec)
        try:
            cls, args, kwargs = _serialization.loads(spec.buf[: info.spec_size])
        finally:
            spec.close()
        return cls, args, kwargs, handler_names(cls)  # ≈ 60 µs (inspect.getmembers)

    async def start_actor(self) -> None:
        """Build the actor (constructor, then ``on_start``) in this process."""
        info = self.info
        cls, args, kwargs, names = self.spec or self.read_spec()
        self.spec = None
        self.cls_name = cls.__name__
        obj = cls.__new__(cls)
        obj._actorq_ref = ActorRef(self.hub, info.run_id, info.id, self.name, names,
                                   cls.__name__)
        obj._actorq_context = ActorContext(self, self.name, info.restarts)
        self.hub.run_sync(obj.__init__, *args, **kwargs)
        started = self.hub.run_sync(obj.on_start)
        if inspect.isawaitable(started):
            await started
        self.instance = obj
        self.handlers = {name: getattr(obj, name) for name in names}
        self.handlers["receive"] = obj.receive
        self.hub.lone_ctx = None  # it holds the handlers (``Handling.lone_context``)
        tune_gc(self.hub.config.actor_gc_gen0)

    async def run(self) -> int:
        """Run the actor until it is told to stop (or the system goes away)."""
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.boot()
        # held by this (the main) thread until the process dies: the system's early
        # notice of that death (_process/lifelock.py); mapped already (attach)
        if self.life is not None:
            self.life.lock()
        hub = self.hub
        hub.loop = self.loop
        hub.loop_thread_id = _thread_id()
        self.ctrl.setblocking(False)
        try:
            await self.start_actor()
        except Exception as exc:
            self.report_failed_start(exc)
            return EXIT_FAILED_START
        self.loop.add_reader(hub.efd, self.on_wake)
        self.loop.add_reader(self.ctrl, self.on_ctrl)
        hub.ctl.slots[C_WATCH_MS] = round(hub.config.park_timeout * 1e3)  # watching
        self.loop.call_later(hub.config.park_timeout, hub.watchdog, lambda: hub.busy,
                             self.serve_lost, lambda: not self.done.done())
        control.send(self.ctrl, (Ctl.READY, os.getpid()))
        self.run_batch()
        await self.done
        await self.stop_actor()
        return 0

    def report_failed_start(self, exc: BaseException) -> None:
        """Tell the system that the constructor or ``on_start`` raised."""
        tb = format_remote(exc)
        try:
            payload: Any = exc
            _serialization.loads(_serialization.dumps_code(exc))
        except Exception:
            payload = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            control.send(self.ctrl, (Ctl.FAILED, payload, tb[-16000:]))
        except (OSError, ValueError):
            pass

    async def stop_actor(self) -> None:
        """Graceful stop: run ``on_stop``, flush what is queued to go out."""
        try:
            stopped = self.hub.run_sync(self.instance.on_stop)
            if inspect.isawaitable(stopped):
                await stopped
        except Exception:
            logger.exception("%s: on_stop raised", self.describe())
        self.hub.flush_dirty()

    # -- loop callbacks -----------------------------------------------------------------

    def on_wake(self) -> None:
        """The doorbell rang: read and handle everything there is."""
        self.hub.clear_doorbell()
        self.hub.ctl.slots[C_WAKEUPS] += 1
        if self.hub.watch_interval > self.hub.config.park_timeout:
            self.hub.watch_sooner()  # busy again after a quiet stretch
        if self.hub.parked_at:
            self.hub.note_gap(time.perf_counter() - self.hub.parked_at)
            self.hub.parked_at = 0.0
        self.hub.unpark()
        self.run_batch()

    def run_batch(self) -> None:
        """Drain, handle, flush; spin briefly for more; park when idle."""
        hub = self.hub
        slice_end = time.perf_counter() + TIME_SLICE
        while True:
            if time.perf_counter() > slice_end:
                # A busy actor still gives the loop a turn now and then: control messages
                # (a new sender's ring, stop), timers and other callbacks must run.
                if hub.held is not None:
                    hub.ring_held()
                self.loop.call_soon(self.run_batch)
                return
            if hub.waiting_chans:
                hub.grant_all()
            hub.drain(READ_AHEAD)
            if hub.queue:
                hub.pump()
            if hub.dirty:
                hub.flush_or_retry()
            if self.stopping:
                if hub.held is not None:
                    hub.ring_held()
                if not hub.busy and not self.done.done():
                    self.done.set_result(None)
                return
            if hub.busy:
                # An async handler holds the actor and its end calls us again; until
                # then park, so that the replies it awaits ring the doorbell.
                if not hub.park():
                    self.loop.call_soon(self.run_batch)
                return
            if hub.spin():
                continue
            if hub.park():
                return

    def serve_lost(self) -> None:
        """The watchdog found data nobody rang for: read it now."""
        self.hub.unpark()
        self.run_batch()

    def on_ctrl(self) -> None:
        """Control messages from the system (or EOF: the system is gone)."""
        self.poll_ctrl()

    def poll_ctrl(self) -> None:
        """Handle every control message waiting on the socket (non-blocking)."""
        while True:
            try:
                got = control.recv(self.ctrl)
            except BlockingIOError:
                return
            if got is None:
                os._exit(EXIT_SYSTEM_GONE)  # the system died: so do we, at once
            self.handle_ctrl(*got)

    def handle_ctrl(self, msg: tuple[Any, ...], fds: list[int]) -> None:
        """Act on one control message."""
        kind = msg[0]
        if kind == Ctl.STOP:
            self.stopping = True
            if not self.hub.busy and not self.done.done():
                self.done.set_result(None)
        elif kind == Ctl.INBOUND:
            self.hub.attach_inbound(msg[1], msg[2], fds[0] if fds else -1)
            self.loop.call_soon(self.run_batch)
        elif kind == Ctl.GONE:
            target, reason = msg[1], msg[2]
            self.hub.gone[target] = reason
            chan = self.hub.outbound.pop(target, None)
            if chan is not None:
                self.hub.close_channel(chan, reason)
            self.hub.fail_pending(target, lambda r: ActorStopped(f"{r.describe}: {reason}"))
        elif kind == Ctl.ANSWER:
            self._answers[msg[1]] = (msg[2], fds)
        elif kind == Ctl.WATCH:  # the system's idle sweep: the watchdog looks again now
            self.hub.watch_sooner()
        else:  # pragma: no cover
            logger.warning("unknown control message %r", kind)

    def request(self, msg: tuple[Any, ...]) -> tuple[Any, list[int]]:
        """Send a request to the system and wait for its answer (other messages meanwhile)."""
        self._req += 1
        req = self._req
        control.send(self.ctrl, (*msg[:1], req, *msg[1:]))
        deadline = Deadline.after(self.hub.config.start_timeout)
        while req not in self._answers:
            if deadline.expired():
                msg_ = f"the actor system did not answer {msg[0]!r} in {deadline.timeout:g}s"
                raise StartTimeout(msg_)
            select.select([self.ctrl], [], [], deadline.remaining())
            self.poll_ctrl()
        return self._answers.pop(req)

    # -- ContextOps ---------------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[Any]:
        """Find an actor by name through the system."""
        answer, _fds = self.request((Ctl.LOOKUP, name))
        if answer[0] != "ref":
            msg = f"no actor named {name!r}"
            raise NoSuchActor(msg)
        _kind, actor_id, handlers, cls_name = answer
        return ActorRef(self.hub, self.hub.run_id, actor_id, name, handlers, cls_name)

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled (None: it has none)."""
        return self.hub.time_left()

    def call_token(self) -> Any:
        """The token of the call being handled (None: it carries none)."""
        return self.hub.call_token()

    def stop_child(self, ref: ActorRef[Any]) -> None:
        """Ask the system to stop one of this actor's children for good (returns at once)."""
        answer, _fds = self.request((Ctl.STOP_CHILD, ref.actor_id))
        if answer[0] == "error":
            raise answer[1]

    def system_config(self) -> Any:
        """The system's configuration (as sent at boot)."""
        return self.hub.config

    def spawn_child(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None, restart: str,
                    group: tuple[str, int, float] | None = None) -> ActorRef[Any]:
        """Spawn a child actor through the system, supervised on this actor's behalf
        (*group*: under its supervisor ``(name, max_restarts, within)``, e.g. a pool's)."""
        options = kwargs.pop("actor_options", None)
        blob = _serialization.dumps_code((cls, args, kwargs))
        answer, _fds = self.request((Ctl.SPAWN, blob, name, restart, options, group))
        if answer[0] == "error":
            raise answer[1]
        _kind, actor_id, child_name, handlers, cls_name = answer
        return ActorRef(self.hub, self.hub.run_id, actor_id, child_name, handlers, cls_name)


def _thread_id() -> int:
    return threading.get_ident()


def _log_to_stderr_unless_configured() -> None:
    """Make actorq's warnings from this process visible when nobody configured logging.

    The library's NullHandler would otherwise swallow them (it also stops Python's
    last-resort handler); an actor process is ours, so we choose stderr, with the pid.
    Once per process: the fork server does it at its preload (≈ 80 copied pages and
    0.4 ms of each actor's start, issue 15), and the actors it forks inherit it.
    """
    global _logging_set
    if _logging_set or logging.getLogger().handlers:
        return
    _logging_set = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("actorq[%(process)d] %(levelname)s %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("actorq").addHandler(handler)


_logging_set = False  # _log_to_stderr_unless_configured ran in this process (or its parent)


# In the fork server: the variables an actor's start reads (``_setting``), read once at
# its preload; its actors inherit its environment unchanged. None elsewhere.
_SERVER_SETTINGS: dict[str, str | None] | None = None
_START_SETTINGS = ("ACTORQ_TEST_START_DELAY", "ACTORQ_PROFILE_DIR")


def _setting(name: str) -> str | None:
    """The environment variable *name* as this actor process sees it. ``os.environ.get``
    of a variable that is not set raises and catches a KeyError: in a child of the fork
    server, ≈ 30 copied pages and 0.1 ms for the two an actor's start reads (issue 15),
    so there they are the values the fork server read at its preload."""
    if _SERVER_SETTINGS is not None:
        return _SERVER_SETTINGS.get(name)
    return os.environ.get(name)


def main(ctrl: socket.socket, lineage: Lineage) -> None:
    """Entry point of every actor process."""
    lean.set_handler(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the system's to handle
    delay = float(_setting("ACTORQ_TEST_START_DELAY") or 0)
    if delay:  # tests only: widen the window before the death signal is armed
        time.sleep(delay)
    deathsig.arm(lineage)  # first of all: never outlive the owner
    _log_to_stderr_unless_configured()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    host = Host(ctrl)
    profile_dir = _setting("ACTORQ_PROFILE_DIR")  # debugging aid: cProfile per actor
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        code = loop.run_until_complete(host.run())
    except BaseException as exc:  # escaped every handler: say so, then die (a crash)
        try:
            control.send(ctrl, (Ctl.CRASHING, format_remote(exc)[-16000:]))
        except (OSError, ValueError):
            pass
        code = EXIT_UNCAUGHT
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"actor-{os.getpid()}.prof"))
        sys.stdout.flush()
        sys.stderr.flush()
    if code:
        os._exit(code)


if adopt_parent_path():  # in the fork server, while it starts (as actorq starts it)
    lean.serve_lean_requests()
    _SERVER_SETTINGS = {name: os.environ.get(name) for name in _START_SETTINGS}
    # made once here, not in each actor's set_event_loop: ≈ 30 fewer copied pages per
    # start (issue 15); a policy holds no fd and no thread, and keeps no loop here
    asyncio.get_event_loop_policy()
    preload_main()
    _log_to_stderr_unless_configured()  # (after the main script, which may configure it)
    try:
        warmup.rehearse(main, Host)
    except Exception:  # an optimisation only: the actors start as well without it
        logger.debug("the fork server's rehearsal failed", exc_info=True)
