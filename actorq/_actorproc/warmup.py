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
no event loop, no shared memory, and every fd opened here is closed again.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator

from actorq._config import SystemConfig
from actorq._core.actor import Actor, handler_names
from actorq._core.protocol import Boot, Ctl
from actorq._process import lean
from actorq._transport import control

REHEARSALS = 20  # enough calls for 3.11 to specialize the code on the path


def rehearse(main: Callable[..., object]) -> None:
    """Run the parts of an actor's start (with *main*, its process target) that are
    safe to run in the fork server."""
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
            for cls in classes:
                try:
                    handler_names(cls)
                except Exception:  # the actor's own start says what is wrong with it
                    continue
    finally:
        system_end.close()
        actor_end.close()
    lean.rehearse_request(main, REHEARSALS)


def actor_classes(base: type = Actor) -> Iterator[type]:
    """Every subclass of *base* defined so far, nested ones included."""
    sub: type
    for sub in base.__subclasses__():
        yield sub
        yield from actor_classes(sub)
