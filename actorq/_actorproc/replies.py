"""How a reply leaves an actor: written to its caller's ring at once when it can be, and
its doorbell held back a moment for a caller that said it would spin on it.
"""

from __future__ import annotations

import marshal
import time
from typing import Any

from actorq._actorproc.actorstate import ActorHubState
from actorq._core.protocol import C_HELD, C_HELD_RUNG
from actorq._core.ref import ActorRef
from actorq._errors import ActorStopped
from actorq._serialization import SAFE_TYPES
from actorq._transport.channel import OutChannel, fence
from actorq._transport.oob import LONE_MARSHAL
from actorq._transport.ring import H_HEAD, H_READER, READER_EXPECTED, READER_SPINNING

_marshal = marshal.dumps

# How long the reply to a lone call may hold back its doorbell (seconds) when its caller
# said it would spin on it (``READER_EXPECTED``): the caller comes within a few µs and
# reads it itself; rung unread after this (or before the actor does anything else).
REPLY_GRACE = 15e-6


class Replies(ActorHubState):
    """The replies of an actor and their held doorbells (a part of ``ActorHub``)."""

    def send_reply(self, reply_to: int, msg: tuple[Any, ...], hold: bool = False) -> None:
        """Append a reply to the caller's channel (opened through the system if new).

        *hold*: a lone call's reply (``serve_alone``), written at once, may hold its
        doorbell back for a caller that said it would spin on it (``hold_doorbell``).
        Takes the channel's lock (a full fence: ``serve_alone`` counts on it), or
        fences when the caller is gone.
        """
        chan = self.outbound.get(reply_to)
        if chan is None:
            try:
                chan = self.open_channel(ActorRef(self, self.run_id, reply_to, "caller",
                                                  frozenset(), "actor"))
            except ActorStopped:
                fence()
                return  # the caller is gone: nobody is waiting for this reply
        written: int | None = 0
        held = 0
        write = self.write_reply
        lock = chan.lock
        lock.acquire()  # not ``with``: once per reply, and the block costs ~1.1k more
        try:
            if not chan.outbox and not chan.encoded and (
                    write is None or (written := write(chan.ring.core, msg, self.max_inline,
                                                       hold)) is None):
                # The common case: written now, as its own record (the caller may be
                # spinning on it); the call itself was committed just before. (In C:
                # ``write_reply``, which leaves the rest of this block to Python.)
                if type(msg[3]) in SAFE_TYPES:  # plain data: marshalled (LONE_MARSHAL)
                    body, count = _marshal([msg], LONE_MARSHAL), 1
                    if len(body) > self.max_inline:
                        body, count = self.encode([msg])
                else:  # an unpicklable value becomes an error reply
                    body, count = self.encode([msg])
                written = chan.ring.core.try_write(body, count)
                if not written:
                    chan.encoded.append((body, count))
                    chan.encoded_count += count
                elif hold and chan.ring.hdr[H_READER] == READER_EXPECTED:
                    held = written
            elif written is not None and written < 0:  # written in C: held (as above)
                held = written = -written
            elif not written:
                self.wrap_bare(chan).append(msg)
        finally:
            lock.release()
        if held:
            self.hold_doorbell(chan, held)
        elif written:
            chan.ring_if_parked()  # the release above was its fence
        else:
            self.dirty.add(chan)

    def hold_doorbell(self, chan: OutChannel, past: int) -> None:
        """A lone call's reply was just written (*past*: the ring's tail just past it)
        and its caller said it would spin on it (``READER_EXPECTED``): ring its doorbell
        only if the caller does not read it within ``REPLY_GRACE``, or before this actor
        does anything else. Otherwise the caller's loop thread would wake for a reply its
        spinning thread reads anyway, and then wait for that thread's GIL (issue 15: the
        round-trip tail)."""
        if self.held is not None:  # pragma: no cover - rung before any other handler
            self.ring_held()
        self.held = (chan, past, time.perf_counter() + REPLY_GRACE)
        self.ctl.slots[C_HELD] += 1

    def ring_held(self) -> None:
        """Ring the doorbell held back for a reply, unless its caller read it already."""
        chan, past, _due = self.held  # type: ignore[misc]
        self.held = None
        try:
            hdr = chan.ring.hdr
            if hdr[H_HEAD] < past and hdr[H_READER] != READER_SPINNING:
                self.ctl.slots[C_HELD_RUNG] += 1
                chan.ring_doorbell()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            pass

    def wait_for_reader(self, end: float, stop: Any, now: float) -> bool:
        """The first part of a spin while a reply's doorbell is held back: until its
        caller reads it (or spins on its ring), data comes, the grace or the spin ends;
        the doorbell is rung then unless the reply was read. *now*: the spin's start
        (``time.perf_counter()``, read by the spin).

        False if the caller did not come within the grace: it is most likely off the
        CPU, possibly this one (a woken actor often runs where its caller ran), so the
        spin ends here and the actor parks rather than keep the CPU from it.
        """
        chan, past, due = self.held  # type: ignore[misc]
        clock = time.perf_counter
        try:
            hdr = chan.ring.hdr
            # looked at once even past the grace: an actor that comes here late (it was
            # switched out after writing the reply) finds the reply read, and spins on
            while True:
                if hdr[H_HEAD] >= past or hdr[H_READER] == READER_SPINNING:
                    self.held = None  # read, or it will be: the spinner sees it
                    return True
                if now >= due or now >= end or self.has_unread() or (
                        stop is not None and stop()):
                    break
                now = clock()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            self.held = None
            return True
        self.ring_held()
        return now < due
