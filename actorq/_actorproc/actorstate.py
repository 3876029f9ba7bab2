"""What every part of an actor's hub shares: the process that holds it, and its state.

``ActorHub`` (``actorhub.py``) is put together from the parts that work on this state,
one class and module each, every one an ``ActorHubState`` (itself a ``Hub``):
``replies.py``, ``handling.py``, ``pump.py`` and ``waiting.py`` (the map is in
``actorhub.py``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from actorq import _native
from actorq._core.hub import Hub
from actorq._core.protocol import Boot
from actorq._transport.aimd import AIMDWindow
from actorq._transport.channel import C_WINDOW, ControlBlock, InChannel, OpenRecord, OutChannel


class Host(Protocol):
    """What an ``ActorHub`` needs of the process that holds it (``host.Host``)."""

    ctrl: socket.socket
    handlers: dict[str, Any]
    name: str
    stopping: bool

    def describe(self) -> str: ...
    def run_batch(self) -> None: ...
    def poll_ctrl(self) -> None: ...
    def request(self, msg: tuple[Any, ...]) -> tuple[Any, list[int]]: ...


class ActorHubState(Hub):
    """The state of an actor process's hub, set up at boot (``take_over``) or released."""

    def __init__(self, host: Host, info: Boot, ctl: ControlBlock, efd: int):
        super().__init__(info.id, info.run_id, info.config, ctl, efd)
        self.host = host
        self.busy = False
        self.tell_errors: dict[tuple[str, str], int] = {}
        self.gap_ewma = 0.0  # recent idle stretches, seconds (adaptive spinning)
        self.parked_at = 0.0
        self.sync_depth = 0  # > 0 while sync user code runs (it may wait; async code may not)
        # (kernel token, deadline, call token, token prefix) of the last call that carried
        # them (OP_DCALL; deadline None or inf: none; a prefix: the call token is made of
        # it when read, ``call_token``)
        self.deadline: tuple[int, float | None, Any, str | None] = (0, 0.0, None, None)
        self.expired_drops = 0  # calls dropped unrun: their deadline passed while queued
        self.stamp_start = info.hang_timeout is not None  # hang detection is on
        # the lone call serve_alone is handling (its ring, record, unlink list), and its
        # entry once track_alone() had to open it
        self.alone: tuple[InChannel, Any, list[Any]] | None = None
        self.alone_entry: OpenRecord | None = None
        # a reply whose doorbell is held back for its caller (``hold_doorbell``): its
        # channel, the ring's tail just past it, and when to ring after all
        self.held: tuple[OutChannel, int, float] | None = None
        # a lone call's start and commit (``serve_alone``) and a reply's write
        # (``send_reply``) in C, or None: the Python code beside them (with the C
        # helpers, the shared memory's slots are made ``U64Array``s: _native.select)
        native = _native.NATIVE_RING
        self.lone_begin = _native.lone_begin if native else None
        self.lone_commit = _native.lone_commit if native else None
        self.write_reply = _native.write_reply if native else None
        # all of a lone call in C (``Handling.drain``), or None: ``serve_alone``; and
        # what it needs of this hub for the one inbound ring (``lone_context``)
        self.serve_lone: Callable[[Any, tuple[Any, ...]], int | tuple[int, Any]] | None = (
            _native.serve_lone if native else None)
        self.lone_ctx: tuple[Any, ...] | None = None
        self.aimd: AIMDWindow | None = None
        target = info.window_target
        if target is not None:
            self.aimd = AIMDWindow(target=target, minimum=info.window_min,
                                   maximum=info.window_max or self.config.window,
                                   increase=info.window_step)
        # a lone call may be served as it is read (``serve_alone``): nothing is timed
        self.serves_alone = self.aimd is None and not self.stamp_start
        self.times_reads = self.aimd is not None  # its samples: handled - read

    def take_over(self) -> None:
        """Start where the dead predecessor stopped: read every inbound ring from its
        head (what was committed), write every outbound one from its tail, and publish
        our window. Done at boot, not before: a
        spare prepared ahead (``Host.prepare``) must not touch what the live actor owns."""
        for chan in self.inbound.values():
            chan.cursor = chan.ring.head()
        for out in self.outbound.values():  # what the predecessor wrote since we attached
            out.ring.resume_producing()
        self.ctl.slots[C_WINDOW] = self.aimd.window if self.aimd is not None else 0

    def release(self) -> None:
        """Unmap every ring and the control block, close the doorbells (a spare prepared
        for another actor than the one it boots as)."""
        fds = {self.efd}
        for chan in self.outbound.values():
            chan.close()
            chan.ctl.close()
            fds.add(chan.efd)
        for inchan in self.inbound.values():
            inchan.close()
            fds.add(inchan.producer_efd)
        self.outbound.clear()
        self.inbound.clear()
        self.ctl.close()
        for fd in fds - {-1}:
            try:
                os.close(fd)
            except OSError:
                pass
