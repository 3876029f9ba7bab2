"""The send path: calls and tells leave the process that makes them.

``call`` and ``call_deadline`` register a pending ``Reply`` and send the call; a lone
call of plain data to an idle receiver is written to its ring at once (``_send_now``: the
latency path). ``bind_tell`` builds a ref's ``tell``, the hot path of one-way traffic (a
ticket taken and an append). Everything else goes through ``send``: one credit spent and
the message appended to the outbox (``outbox.py``), or a wait in the credit line
(``creditline.py``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actorq import _native
from actorq._core.creditline import CreditLine
from actorq._core.hubstate import _NO_KWARGS
from actorq._core.outbox import BURST_PENDING
from actorq._core.protocol import OP_CALL, OP_DCALL, OP_TELL
from actorq._core.reply import Reply
from actorq._errors import ActorStopped
from actorq._ids import next_token
from actorq._serialization import SAFE_TYPES, check_picklable, quick_safe
from actorq._transport.channel import C_PARKED, NO_TICKETS
from actorq._transport.oob import LONE_MARSHAL
from actorq._transport.ring import H_READER, READER_EXPECTED

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

_running_loop = asyncio._get_running_loop  # this thread's running loop or None, no raise
if _native.configure_calls is not None:  # what ``_native.hub_call`` makes replies with
    _native.configure_calls(Reply, next_token, SAFE_TYPES, _NO_KWARGS)


def _tell_checked(send: Callable[..., None], ref: ActorRef[Any], message: Any,
                  nowait: bool) -> None:
    """Tell a message that is not plain data: raise now if it cannot be pickled, else
    send it (pickled at flush). Out of ``Hub.bind_tell`` so that its lambda makes no
    closure cells there."""
    check_picklable(lambda: ref._describe("receive"), (message,), None)
    send(ref, (OP_TELL, 0, message), nowait=nowait, plain=0)


class Sending(CreditLine):
    """The send path of a hub (a part of ``Hub``)."""

    def call(self, ref: ActorRef[Any], method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any] | None, on_outcome: Any = None) -> Reply[Any]:
        """Send a call to *ref* and return its ``Reply`` (see ``ActorRef.call``);
        *on_outcome*: the reply's hook, set before the call can be answered
        (``ActorRef.call_with``)."""
        if not kwargs and len(args) == 1 and type(args[0]) in SAFE_TYPES:
            plain = True  # the most common call: one scalar argument
        else:
            plain = quick_safe(args) and (not kwargs or quick_safe(kwargs.values()))
        if not plain:
            check_picklable(lambda: ref._describe(method), args, kwargs)
        token = next_token()
        target = ref.actor_id  # read once: a ref's attributes are slow to read (__getattr__)
        reply: Reply[Any] = Reply(self, ref, token, method, target)
        if on_outcome is not None:
            reply._hook = on_outcome
        self.pending[token] = reply
        msg = (OP_CALL, token, self.id, method, args, kwargs or _NO_KWARGS)
        try:
            # the latency path in C (``_native.send_lone``), else ``_send_now``
            now = _native.send_lone
            if not (plain and (now(self, target, msg) if now is not None
                               else self._send_now(target, msg))):
                self.send(ref, msg, nowait=False, plain=plain)
        except BaseException:
            self.pending.pop(token, None)
            raise
        return reply

    def bind_call(self, ref: ActorRef[Any], method: str) -> Callable[..., Reply[Any]] | None:
        """``ref.method`` bound in C (``_native.LoneCaller``: ``call`` for one argument
        of plain data, written at once by ``send_lone``, without a Python frame; any
        other call is this hub's ``call``), or None: no C helpers, or a hub whose
        ``call`` is not this one (``ActorRef._bind`` then binds a closure)."""
        caller = _native.LoneCaller
        if caller is None or type(self).call is not Sending.call:
            return None
        bound: Callable[..., Reply[Any]] = caller(self, ref, method, ref.actor_id, Reply,
                                                  next_token, SAFE_TYPES, _NO_KWARGS)
        return bound

    def call_deadline(self, ref: ActorRef[Any], method: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any] | None, deadline: float | None,
                      call_token: Any = None, on_outcome: Any = None,
                      token_prefix: str | None = None) -> Reply[Any]:
        """Like ``call``, the message carrying *deadline* (a float of ``time.monotonic()``
        seconds; None or ``math.inf``: none, None the cheaper to send) and, if not None,
        *call_token* (``context.token``).

        The actor drops the call without running it if the deadline has passed when its
        turn comes (the reply is a ``CallTimeout`` whose ``reason`` is ``"expired"``), and
        its handler can read the time left (``context.time_left()``). *on_outcome*: the
        reply's hook, set before the call can be answered (``ActorRef.call_with``).
        *token_prefix* (instead of a *call_token*): the call's token is this prefix and
        the call's own token (the reply's ``token``), made by the actor only if read: a
        pool's first attempt carries one so (no string made per call), and its retries
        send the same token made here (``_routing/calls.py``).
        """
        if not kwargs and len(args) == 1 and type(args[0]) in SAFE_TYPES:
            plain = True  # one scalar argument, as in ``call``
        elif not (quick_safe(args) and (not kwargs or quick_safe(kwargs.values()))):
            check_picklable(lambda: ref._describe(method), args, kwargs)
            plain = False
        else:
            plain = True
        token = next_token()
        # The message in one go, always nine fields: (..., deadline or None, call_token,
        # token_prefix). Its empty kwargs and its deadline are objects only it holds (a
        # new {} and float, made in the tuple's expression): marshal (version 4) keeps a
        # table of the objects it writes that something else also holds (to write a
        # repeat as a reference), and grows it past the 8 of a plain call, at about 1k
        # instructions a call (benchmarks/callgrind_pool_call.py).
        if call_token is not None and type(call_token) not in SAFE_TYPES:
            check_picklable(lambda: ref._describe(method), (call_token,), None)
            plain = False
        if deadline is None:
            msg: tuple[Any, ...] = (OP_DCALL, token, self.id, method, args, kwargs or {},
                                    None, call_token, token_prefix)
        else:
            msg = (OP_DCALL, token, self.id, method, args, kwargs or {}, deadline + 0.0,
                   call_token, token_prefix)
        target = ref.actor_id  # read once (as in ``call``)
        reply: Reply[Any] = Reply(self, ref, token, method, target)
        if on_outcome is not None:
            reply._hook = on_outcome
        self.pending[token] = reply
        try:
            now = _native.send_lone  # as in ``call``
            if not (plain and (now(self, target, msg) if now is not None
                               else self._send_now(target, msg))):
                self.send(ref, msg, nowait=False)
        except BaseException:
            self.pending.pop(token, None)
            raise
        return reply

    def _send_now(self, target: int, msg: tuple[Any, ...]) -> bool:
        """The latency path: a call of plain data to an idle receiver, off the loop
        (``_native.send_lone`` is this method in C, the same steps in the same order).

        Written to the ring at once, as a record of its own (no burst to wait for), and
        marshalled (plain data has no large buffers; ``oob.load_payload``). False,
        with nothing sent, whenever anything is unusual: no channel yet, no credit, others
        waiting or queued ahead of us, the receiver busy, or a record too big or not
        fitting now; ``send`` then handles it.
        """
        chan = self.outbound.get(target)
        self.burst += 1
        # the loop thread runs its loop whenever it runs our code: a thread with no
        # running loop is not it (one C call, not two, for a plain sync caller)
        loop = _running_loop()
        if (chan is None or self.burst > BURST_PENDING < len(self.pending)
                or (loop is not None and threading.get_ident() == self.loop_thread_id)):
            return False
        lock = chan.lock
        lock.acquire()  # not ``with``: once per call, and the block costs (see tell)
        try:
            if chan.credits <= 0 or chan.gate.waiting or chan.outbox or chan.encoded:
                return False
            if self.expects_readers and len(self.pending) == 1 and loop is None:
                # A lone call from a thread without an event loop: its caller is about to
                # spin on the reply's ring (``wait_reply``). Say so before the call is out,
                # so that a quick reply does not wake the loop thread, which would then
                # wait for the spinning caller's GIL (a hand-off that costs a later call
                # ~100 µs: issue 15's round-trip tail). The actor holds the reply's
                # doorbell back a moment (``ActorHub.hold_doorbell``), never for good.
                try:
                    back = self.inbound[target].ring.hdr
                    if not back[H_READER]:
                        back[H_READER] = READER_EXPECTED
                except (KeyError, ValueError):  # no reply ring (yet), or released
                    pass
            # The record, in one call of the ring's core (a specialised lookup): unless
            # the receiver is busy (it has not handled all we sent: in_flight() != 0),
            # [msg] marshalled (plain data: marshal is faster than pickle both ways;
            # LONE_MARSHAL: why 2) and written if it is at most max_inline bytes and
            # fits now (ring.py: ``RingCorePy.write_lone``). The hint above may then
            # stand for a call that goes the slow way: its caller spins all the same.
            if chan.ring.core.write_lone(msg, LONE_MARSHAL, self.max_inline) <= 0:
                return False
            chan.credits -= 1
        finally:
            lock.release()
        # The release is a full fence between the tail stored and the parked flag loaded
        # now (``OutChannel.ring_if_parked``): the doorbell needs no fence of its own.
        try:
            # ring_if_parked's first look, written out: a receiver that spins (not
            # parked) needs no call
            if chan.ctl.slots[C_PARKED] & 1:
                chan.ring_if_parked()
        except ValueError:  # the channel was closed meanwhile: its actor is gone
            pass
        return True

    def tell(self, ref: ActorRef[Any], message: Any, nowait: bool) -> None:
        """Send *message* to *ref*'s ``receive`` without a reply (``bind_tell``, once)."""
        self.bind_tell(ref, nowait)(message)

    def bind_tell(self, ref: ActorRef[Any], nowait: bool) -> Callable[[Any], None]:
        """``ref.tell`` (*nowait*: ``ref.tell_nowait``) for one ref, bound once: what a
        tell looks up is held by the function (no attribute of the ref, the hub or a
        module is read per message; ``ActorRef.tell`` keeps it on the ref).

        The hot path of one-way traffic: a message of plain data, while a burst of
        tells is under way with credit set aside for it (``OutChannel.reserve``), is one
        ticket taken and one append, without the channel's lock
        (benchmarks/msgpath_harness.py counts it); everything else goes through
        ``send``. A message is plain data (marshalled at flush, ``encode``) if it is a
        scalar or a tuple of scalars (``SAFE_TYPES``, tested by exact type). Its length
        is not bounded here (``len`` and a compare cost 4 % of a tell): a burst too big
        to marshal inline is pickled (``encode``), big buffers out of band.
        """
        outbound = self.outbound
        target = ref.actor_id
        send = self.send
        safe = SAFE_TYPES
        # the slow path's ref: a twin, so that the ref does not hold itself through
        # this function (a cycle only the garbage collector would free)
        twin = ref._twin()
        # The tickets of the channel's reservation (``OutChannel.reserve``), held here
        # between two trips through the slow path (the channel is not looked up per tell).
        # A channel dropped meanwhile (its target gone for good) has its tickets taken
        # when it is closed: the slow path finds it gone and raises ``ActorStopped``.
        chan = outbound.get(target)
        tickets = chan.tickets if chan is not None else NO_TICKETS

        def tell(message: Any) -> None:
            nonlocal tickets
            kind = type(message)
            if kind is tuple:  # the most common message: tested first
                for item in message:  # a plain loop: cheaper than all(map(...))
                    if type(item) not in safe:
                        return _tell_checked(send, twin, message, nowait)
            elif kind not in safe:
                return _tell_checked(send, twin, message, nowait)
            # A ticket (the outbox) while the burst has credit set aside: its credit was
            # spent when it was set aside, and the outbox is a burst of bare tells.
            box = next(tickets, None)
            if box is not None:
                box.append(message)
                return None
            send(twin, (OP_TELL, 0, message), nowait=nowait, plain=1)
            chan = outbound.get(target)  # looked up again after the slow path only
            tickets = chan.tickets if chan is not None else NO_TICKETS
            return None

        tell.__name__ = tell.__qualname__ = "tell_nowait" if nowait else "tell"
        return tell

    def send(self, ref: ActorRef[Any], msg: tuple[Any, ...], *, nowait: bool,
             plain: int = 0) -> None:
        """Spend one credit and append *msg* to the outbox of the channel to *ref*.

        Without credit (or with higher-priority or earlier producers waiting): ``nowait``
        raises ``Backpressure``; a thread that may block waits its turn up to the send
        timeout; on a running event loop the message is parked in the line (never
        blocking the loop) and sent when its credit comes, up to ``max_parked``.
        *plain*: 1 if the caller checked that *msg* is plain data (``OutChannel.plain``).

        ``chan.credits`` stays 0 while producers wait in line, so that a positive value
        alone lets a message pass (the fast paths look at nothing else).
        """
        chan = self.outbound.get(ref.actor_id)
        if chan is None:
            if ref.actor_id in self.gone:
                text = f"{ref._describe()} is stopped: {self.gone[ref.actor_id]}"
                raise ActorStopped(text)
            chan = self.open_channel(ref)
        gate = chan.gate
        with chan.lock:
            chan.unreserve()  # the credit set aside for bare tells counts again
            if chan.credits > 0:  # fast path: a cached lower bound, nobody in line
                chan.credits -= 1
                chan.plain += plain
                if not self._append_locked(chan, msg):
                    return
            else:
                free = chan.credit()
                if free > 0 and gate.may_pass(ref._priority):
                    chan.credits = free - 1 if not gate.waiting else 0
                    chan.plain += plain
                    if not self._append_locked(chan, msg):
                        return
                else:
                    waiter = self._join_line_locked(chan, ref, msg, nowait)
                    if waiter is None:
                        return  # parked: sent when granted
                    self._wait_turn(chan, ref, waiter, msg)
                    return
        self.mark_dirty(chan)
