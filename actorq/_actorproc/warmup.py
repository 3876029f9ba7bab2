"""A rehearsal of an actor's start, run once in the fork server before it serves.

Every page of the fork server that an actor process writes on its way to ready is copied
for it (≈ 1,200 pages, its unique memory; ≈ 4 µs each on the development VM, and far
more once the host must back fresh memory: issue 15, ``benchmarks/probe_start.py``).
Part of those writes are first uses that fill a cache or warm code up, each one again
in every actor: an ``isinstance`` check against an abstract base class records its
answer in that class's cache, ``handler_names`` remembers a class's handlers, and
Python 3.11 rewrites a function's bytecode in place (specialization) over its first
calls. Done here once, the actors inherit them done.

Only what leaves nothing behind that a child must not inherit is rehearsed: no thread,
no shared memory (the control block and rings of the rehearsed actor are anonymous
memory, unmapped after), and every fd opened here is closed again. An event loop is made,
run and closed (``rehearse_loop``): it leaves one thing, libuv's process-wide signal lock,
a pipe made at the first loop of a process, which libuv replaces in every child at fork
(its ``pthread_atfork`` handler): no child shares it.
"""

from __future__ import annotations

import asyncio
import inspect
import mmap
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvloop

from actorq._actorproc.actorhub import ActorHub
from actorq._config import SystemConfig
from actorq._core.actor import Actor, ActorContext, handler_names
from actorq._core.protocol import Boot, Ctl
from actorq._core.ref import ActorRef
from actorq._process import lean, lifelock
from actorq._transport import control
from actorq._transport.channel import CTL_SIZE, ControlBlock, InChannel, OutChannel
from actorq._transport.ring import Ring
from actorq._transport.shm import Segment

REHEARSALS = 20  # enough calls for 3.11 to specialize the code on the path


class Rehearsed(Actor):
    """The actor a rehearsal builds (never started)."""

    def ping(self) -> int:
        """A handler, as every actor has."""
        return 0


def rehearse(main: Callable[..., object], host_cls: Callable[[socket.socket], Any]) -> None:
    """Run the parts of an actor's start (*main*, its process target, and the
    ``Host`` it makes, *host_cls*) that are safe to run in the fork server."""
    config = SystemConfig()
    boot = Boot(0, "rehearsal", "rehearsal", config, "ctl", "spec", 0, {0: ("in", 1)},
                {0: ("out", "ctl", 2)}, 0, None, None, 1, None, 1)
    classes = list(actor_classes())  # the main script's too (preloaded): found by name
    system_end, actor_end = control.socketpair()
    try:
        for _ in range(REHEARSALS):
            control.send(system_end, (Ctl.BOOT, boot))
            control.recv(actor_end)
            control.send(actor_end, (Ctl.READY, os.getpid()))
            control.recv(system_end)
            inspect.isawaitable(None)  # on_start's and a handler's usual result
            build(host_cls(actor_end), boot)
            for cls in classes:
                try:
                    handler_names(cls)
                except Exception:  # the actor's own start says what is wrong with it
                    continue
    finally:
        system_end.close()
        actor_end.close()
    lean.rehearse_request(main, REHEARSALS)
    rehearse_loop(REHEARSALS)


def rehearse_loop(times: int) -> None:
    """Make, run and close an event loop as an actor does, *times* times.

    An actor's uvloop loop, made and first run, cost it ≈ 1.3 ms and 230 copied pages
    (issue 15); part of that is first uses (uvloop's and libuv's one-time set-up, code
    warming up), done here once for every actor. The loop's own fds (epoll, eventfd,
    io_uring) are closed with it; a child never sees this loop.
    """
    system_end, actor_end = socket.socketpair()
    try:
        for _ in range(times):
            loop = uvloop.new_event_loop()  # (not made this thread's current loop)
            try:
                loop.add_reader(actor_end, _noop)
                loop.call_later(3600.0, _noop).cancel()
                loop.run_until_complete(_rehearsed_run(loop))
                loop.remove_reader(actor_end)
            finally:
                loop.close()
    finally:
        system_end.close()
        actor_end.close()


async def _rehearsed_run(loop: asyncio.AbstractEventLoop) -> None:
    """What ``Host.run`` awaits first: a future of the loop, set from a callback."""
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done


def _noop() -> None:
    pass


def build(host: Any, boot: Boot) -> None:
    """What ``Host.attach`` and ``Host.start_actor`` build for *boot*, over anonymous
    memory, then let go: the hub, its channels and a ``Rehearsed`` actor.

    A mirror, not a shared builder: running those two themselves here (their steps
    that must not run in the fork server stubbed out) was measured to make each start
    copy ≈ 25 more pages, not fewer (CHANGES, session 10). A step either of them gains
    fails tests/core/test_warmup.py until it is rehearsed here or listed there as one
    the fork server must not run.
    """
    ctl = ControlBlock(_anonymous("ctl", CTL_SIZE))
    life = lifelock.in_block(ctl.seg.buf)  # (a view of it, never locked here)
    hub = ActorHub(host, boot, ctl, -1)
    try:
        hub.inbound[0] = InChannel(0, _ring("in"))
        hub.outbound[1] = OutChannel(1, _ring("out"),
                                     ControlBlock(_anonymous("peer", CTL_SIZE)), -1,
                                     boot.config.window)
        names = handler_names(Rehearsed)
        obj: Any = Rehearsed.__new__(Rehearsed)
        obj._actorq_ref = ActorRef(hub, boot.run_id, boot.id, boot.name, names,
                                   Rehearsed.__name__)
        obj._actorq_context = ActorContext(host, boot.name, boot.restarts)
        hub.run_sync(obj.__init__)
        inspect.isawaitable(hub.run_sync(obj.on_start))
        handlers = {name: getattr(obj, name) for name in names}
        handlers["receive"] = obj.receive
    finally:
        if life is not None:
            life.close()
        hub.release()


def _anonymous(name: str, size: int) -> Segment:
    """A ``Segment`` over anonymous memory (no file in /dev/shm)."""
    return Segment(f"rehearsal-{name}", mmap.mmap(-1, size))


def _ring(name: str) -> Segment:
    """An empty ring over anonymous memory."""
    seg = _anonymous(name, Ring.size_for(4096))
    Ring(seg.buf, init=True).release()
    return seg


def actor_classes(base: type = Actor) -> Iterator[type]:
    """Every subclass of *base* defined so far, nested ones included."""
    sub: type
    for sub in base.__subclasses__():
        yield sub
        yield from actor_classes(sub)
