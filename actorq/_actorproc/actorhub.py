"""The hub of an actor process: runs the handlers of the one actor it holds.

``ActorHub`` is the ``Hub`` (``actorq._core.hub``) as an actor process uses it: it drains the
mailbox, runs handlers in order (``pump``), holds a lone call's reply doorbell for a caller
that spins on it, and opens channels through the system (``host.Host.request``).

It is put together from one class per part, each in its own module, on top of ``Hub``:

    actorstate.py  ActorHubState  the actor's state (a ``Hub``); take_over, release;
                                  what it needs of its process (``Host``)
    replies.py     Replies        send_reply; a lone call's doorbell held for its caller
    handling.py    Handling       serve_alone, dispatch (queueing records), a call run,
                                  finish (commit, then reply)
    pump.py        Pump           pump and run_tells: the loop that handles the queue
    waiting.py     Waiting        wait_reply inside a sync handler, idle_wait, spin
    actorhub.py    ActorHub       channels opened through the system, dead letters

Each part derives from the one above it in this list, except that ``Pump`` and
``Waiting`` both derive from ``Handling``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from actorq._actorproc.pump import Pump
from actorq._actorproc.waiting import Waiting
from actorq._core.protocol import OP_REPLY, Ctl
from actorq._core.ref import ActorRef
from actorq._errors import ActorStopped
from actorq._transport import control
from actorq._transport.channel import ControlBlock, InChannel, OutChannel
from actorq._transport.shm import Segment

logger = logging.getLogger(__name__)

# Messages read ahead of the handler at most (replies are read regardless while a sync
# handler waits): more only moves the backlog from the ring into the heap.
READ_AHEAD = int(os.environ.get("ACTORQ_READ_AHEAD", 1024))

# A busy actor returns to its loop at least this often (seconds).
TIME_SLICE = 0.01


class ActorHub(Pump, Waiting):
    """The hub of an actor process: runs handlers, and opens channels through the system."""

    may_deadlock = True
    idle_backoff = True
    swept = True  # the system's idle sweep (_runtime/idle.py) watches it once idle

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:
        """Ask the system for a direct channel to *ref* (once per target)."""
        answer, fds = self.host.request((Ctl.CONNECT, ref.actor_id))
        if answer[0] == Ctl.GONE:
            self.gone[ref.actor_id] = answer[2]
            msg = f"{ref._describe()} is stopped: {answer[2]}"
            raise ActorStopped(msg)
        _kind, target, ring_name, ctl_name = answer
        try:
            return self.attach_outbound(target, ring_name, ctl_name, fds[0])
        except FileNotFoundError:
            # its segments were unlinked between the answer and now: the system is
            # closing, or forgot the target (stopped for good, past ``stopped_kept``)
            os.close(fds[0])
            why = "its mailbox is gone (the system is closing or forgot it)"
            self.gone[ref.actor_id] = why
            msg = f"{ref._describe()} is stopped: {why}"
            raise ActorStopped(msg) from None

    def attach_outbound(self, target: int, ring_name: str, ctl_name: str, efd: int) -> OutChannel:
        """Map the ring to *target* and remember it."""
        chan = self.outbound.get(target)
        if chan is None:
            ctl = ControlBlock(Segment.attach(ctl_name))
            try:
                ring = Segment.attach(ring_name, prefault=False)
            except FileNotFoundError:
                ctl.close()
                raise
            chan = OutChannel(target, ring, ctl, efd, self.config.window)
            self.outbound[target] = chan
        return chan

    def attach_inbound(self, sender: int, ring_name: str, producer_efd: int) -> None:
        """Map a ring some peer writes to us (its eventfd: to ring when credit comes back)."""
        if sender not in self.inbound:
            self.inbound[sender] = InChannel(sender, Segment.attach(ring_name, prefault=False),
                                            producer_efd)

    def describe_self(self) -> str:
        """This actor, in error messages."""
        return self.host.describe()

    def record_dead(self, method: str, reason: str) -> None:
        """Dead letters are kept by the system: tell it."""
        try:
            control.send(self.host.ctrl, (Ctl.DEAD_LETTER, method, reason[-4000:]))
        except OSError:
            logger.error("%s: %s", self.host.describe(), reason)

    def unpicklable(self, msg: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...] | None:
        """Replace a reply that cannot be pickled by an error the caller can read."""
        if msg[0] == OP_REPLY and not msg[2]:
            err = RuntimeError(f"{type(msg[3]).__name__}: {msg[3]} (the exception itself "
                               f"could not be pickled: {exc})")
            return (OP_REPLY, msg[1], False, err, msg[4])
        return super().unpicklable(msg, exc)
