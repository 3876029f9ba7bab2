"""The user process's hub: its loop runs in a background thread; sync callers help it.

A synchronous caller waiting for a reply spins on the inbound rings itself for a moment
(no thread hand-off when the answer is quick), with the hub marked awake so that actors
do not ring its doorbell; then it sleeps on the reply's event and the loop thread, woken
by the doorbell, reads the rings and resolves the reply.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from actorq._errors import ActorStopped
from actorq._hub import OP_REPLY, SYSTEM_ID, Hub
from actorq._ref import ActorRef
from actorq._reply import Reply
from actorq._transport.channel import C_WAKEUPS, ControlBlock
from actorq._transport.ring import H_TAIL

if TYPE_CHECKING:
    from actorq._runtime import Runtime

SPIN_SWEEP = 32  # a spinning caller looks at every inbound ring once per this many turns


class SystemHub(Hub):
    """The user process's hub: its loop runs in a background thread."""

    def __init__(self, runtime: Runtime, ctl: ControlBlock, efd: int) -> None:
        super().__init__(SYSTEM_ID, runtime.run_id, runtime.config, ctl, efd)
        self.runtime = runtime
        self.spin_lock = threading.Lock()
        self.spinners = 0

    def open_channel(self, ref: ActorRef[Any]) -> Any:
        """Channels to actors exist from spawn; a missing one means the actor is gone."""
        cell = self.runtime._cells.get(ref.actor_id)
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

    def wait_reply(self, reply: Reply[Any], deadline: Any) -> None:
        """Flush, spin on the rings for a moment (no thread hand-off), then sleep."""
        if threading.get_ident() == self.loop_thread_id:
            msg = f"{reply.describe}: result() called on the actor system's own loop; use await"
            raise RuntimeError(msg)
        if self.dirty:
            self.flush_dirty()
        if not reply._done:
            self.spin_for(reply)
        while not reply._done and not deadline.expired():
            reply._wait_event(deadline)

    def spin_for(self, reply: Reply[Any]) -> None:
        """Poll the inbound rings from this thread for ``spin_seconds`` x 4.

        The ring from the called actor is looked at on every turn (its reply comes that
        way), the others every ``SPIN_SWEEP`` turns: replies to other threads' calls
        wait at most that long, and the loop thread reads them once we park.
        """
        with self.spin_lock:
            self.spinners += 1
            self.unpark()
        try:
            chan = self.inbound.get(reply.target_id)
            hdr = chan.ring.hdr if chan is not None else None
            clock = time.perf_counter
            end = clock() + self.config.spin_seconds * 4
            turn = 0
            while not reply._done:
                turn += 1
                if hdr is not None and hdr[H_TAIL] != chan.cursor:  # type: ignore[union-attr]
                    if self.drain_lock.acquire(blocking=False):
                        try:  # one record of this ring (the reply comes this way); if the
                            # reply was not in it, the next turn reads the next one
                            rec = chan.read_next()  # type: ignore[union-attr]
                            if rec is not None:
                                self._take_record(chan, rec, 0.0)  # type: ignore[arg-type]
                        finally:
                            self.drain_lock.release()
                elif turn % SPIN_SWEEP == 0 and self.has_unread():
                    if self.drain_lock.acquire(blocking=False):
                        try:
                            self.drain()
                        finally:
                            self.drain_lock.release()
                elif clock() > end:
                    break
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
        if self.waiting_chans:
            self.grant_all()
        self.park_if_idle(leaving_spin=False)

    def reply_to_actor(self, caller: int, token: int, exc: BaseException) -> None:
        """Send an error reply, on a dead actor's behalf, to an actor that called it."""
        chan = self.outbound.get(caller)
        if chan is None:
            return
        with chan.lock:
            chan.outbox.append((OP_REPLY, token, False, exc, ""))
        self.mark_dirty(chan)
