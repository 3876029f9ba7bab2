"""Hub: one process's end of every channel it has (the system's, or one actor's).

A hub owns its inbound rings (it is their only consumer), the producer side of its
outbound rings (with their outboxes), its doorbell eventfd and control block, and the
replies it is waiting for. The system process and every actor process each run one;
what differs (how a channel to a new peer is opened, what is done with a call, how a
synchronous wait is served) is in the subclasses ``SystemHub`` (``_runtime/systemhub.py``)
and ``ActorHub`` (``_actorproc/actorhub.py``).

Wire records are lists of small tuples, laid out in ``_core/protocol.py``. A tell has its
own short form: half the bytes of the general one, and it pickles and unpickles in half
the time. ``msg[1]`` is the token in every form (0: nobody waits).
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import pickle
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.protocol import (
    C_WATCH_MS,
    OP_CALL,
    OP_DCALL,
    OP_REPLY,
    OP_TELL,
    method_and_args,
)
from actorq._core.ref import ChannelStatistics
from actorq._core.reply import Reply, error_from_wire
from actorq._errors import (
    ActorStopped,
    Backpressure,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    format_remote,
)
from actorq._ids import next_token
from actorq._serialization import (
    SAFE_TYPES,
    Salvaged,
    Unloadable,
    check_picklable,
    find_unloadable,
    quick_safe,
    salvage_loads,
)
from actorq._transport.channel import (
    C_LOST,
    C_PARKED,
    C_WAKEUPS,
    NO_TICKETS,
    ControlBlock,
    InChannel,
    OpenRecord,
    OutChannel,
    SegmentNamer,
    fence,
)
from actorq._transport.credit import Waiter
from actorq._transport.oob import (
    PICKLE_PROTO,
    BlockPool,
    decode_batch,
    decode_loaded,
    encode_batch,
    release_payload,
    run_after_commit,
)
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_READER,
    H_SENT,
    H_TAIL,
    READER_EXPECTED,
)

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

logger = logging.getLogger(__name__)

# An idle actor's lost wake-up watchdog backs off to one look per this many park
# timeouts (10 s by default): 1000 idle actors woke 10k times a second without it, and
# still ≈ 0.8 % of a core with 64 (each look costs ≈ 50 µs of a loaded machine).
IDLE_BACKOFF = 100
# Callers that issued more calls than this since one of them last waited, with more
# than this outstanding, are pipelining (a fan-out): their calls wait in the outboxes
# for the end of the burst (the loop's flush, or the caller's own wait), so that each
# receiver wakes once per burst, not once per call (issue 15: 100 actors). A lone round
# trip, sync or awaited, keeps the latency path: written and rung at once.
BURST_PENDING = 16
DRAIN_QUANTUM = 256  # messages per ring per round of a drain (one full burst record)
_NO_KWARGS: dict[str, Any] = {}  # shared, never mutated: for messages without keywords
_loads = pickle.loads
_marshal = marshal.dumps  # plain data only: a lone call or reply (oob.load_payload)
_unmarshal = marshal.loads
_running_loop = asyncio._get_running_loop  # this thread's running loop or None, no raise


def _tell_checked(send: Callable[..., None], ref: ActorRef[Any], message: Any,
                  nowait: bool) -> None:
    """Tell a message that is not plain data: raise now if it cannot be pickled, else
    send it (pickled at flush). Out of ``Hub.bind_tell`` so that its lambda makes no
    closure cells there."""
    check_picklable(lambda: ref._describe("receive"), (message,), None)
    send(ref, (OP_TELL, 0, message), nowait=nowait, plain=0)


class BadMessage:
    """Stands in for the method name of a call or tell that did not unpickle here: the
    actor finds no handler under it, and fails the call with ``error()`` instead."""

    __slots__ = ("method", "text")

    def __init__(self, method: str, text: str) -> None:
        self.method = method
        self.text = text

    def error(self) -> TypeError:
        """What the caller gets."""
        return DecodeError(self.text, "message")


class Hub:
    """The channels of one process. Subclasses: ``SystemHub``, ``ActorHub``."""

    may_deadlock = False  # True where waiting on a reply can be a self-wait (actors)
    idle_backoff = False  # True: an idle hub's watchdog looks less often (actors)
    # True: a thread that sends a lone call spins on the reply's ring next, and says so
    # beforehand (``READER_EXPECTED``: the user's process; an actor waits differently)
    expects_readers = False
    swept = False  # True: the system's idle sweep watches it (actors): backed off, it stops

    def __init__(self, hub_id: int, run_id: str, config: SystemConfig, ctl: ControlBlock,
                 efd: int) -> None:
        self.id = hub_id
        self.run_id = run_id
        self.config = config
        self.ctl = ctl
        self.efd = efd
        self.namer = SegmentNamer(run_id)
        self.pool = BlockPool(self.namer)  # reused blocks for out-of-band buffers
        self.inbound: dict[int, InChannel] = {}
        self.outbound: dict[int, OutChannel] = {}
        self.pending: dict[int, Reply[Any]] = {}
        self.burst = 0  # calls that tried the latency path since a caller last waited
        self.gone: dict[int, str] = {}  # actor id -> why it is gone for good
        self.dirty: set[OutChannel] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread_id: int | None = None
        self.flush_scheduled = False
        self.drain_lock = threading.Lock()
        self.waiting_chans: set[OutChannel] = set()  # channels with producers in line
        self._rr = 0  # where the next drain starts
        # records whose calls and tells wait to be handled, in order (only actors handle
        # calls; each record knows the next of its messages to take up), and how many
        # messages they held when queued (the read-ahead bound, ``drain(limit)``)
        self.queue: deque[OpenRecord] = deque()
        self.queued = 0
        self._outbox_fast = config.outbox_messages - 1  # tell's fast path fills up to this
        self.unsettled = False  # the last settling flush skipped a growing outbox
        self.max_inline = config.ring_size // 2 - 8  # bigger records take the spill path
        # the lost wake-up watchdog (``watchdog``): its next look, and how far it backed off
        self.watch_handle: asyncio.TimerHandle | None = None
        self.watch_interval = config.park_timeout
        self.watch_seen = -1  # the wake-up count at its last look
        self.watch_args: tuple[Any, ...] = ()

    def channel_statistics(self, target: int) -> ChannelStatistics:
        """The figures of the channel to actor *target* (zeros if none is open)."""
        chan = self.outbound.get(target)
        if chan is None:
            return ChannelStatistics(self.config.window, 0, 0, 0, 0.0, 0)
        gate = chan.gate
        queued = len(chan.outbox) + chan.encoded_count
        return ChannelStatistics(chan.limit(), chan.ring.in_flight() + queued, gate.waiting,
                                 gate.waits, gate.wait_seconds, gate.backpressure)

    # -- sending ------------------------------------------------------------------------

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
        reply: Reply[Any] = Reply(self, ref, token, method, ref.actor_id)
        if on_outcome is not None:
            reply._hook = on_outcome
        self.pending[token] = reply
        msg = (OP_CALL, token, self.id, method, args, kwargs or _NO_KWARGS)
        try:
            if not (plain and self._send_now(ref.actor_id, msg)):
                self.send(ref, msg, nowait=False, plain=plain)
        except BaseException:
            self.pending.pop(token, None)
            raise
        return reply

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
        # The message in one go: (..., deadline[, call_token[, token_prefix]]). Its empty
        # kwargs and its deadline are objects only it holds (a new {} and float, made in
        # the tuple's expression): marshal (version 4) keeps a table of the objects it
        # writes that something else also holds (to write a repeat as a reference), and
        # grows it past the 8 of a plain call, at about 1k instructions a call
        # (benchmarks/callgrind_pool_call.py).
        if call_token is not None and type(call_token) not in SAFE_TYPES:
            check_picklable(lambda: ref._describe(method), (call_token,), None)
            plain = False
        if deadline is None:
            msg: tuple[Any, ...] = (OP_DCALL, token, self.id, method, args, kwargs or {},
                                    None, call_token, token_prefix)
        else:
            msg = (OP_DCALL, token, self.id, method, args, kwargs or {}, deadline + 0.0,
                   call_token, token_prefix)
        reply: Reply[Any] = Reply(self, ref, token, method, ref.actor_id)
        if on_outcome is not None:
            reply._hook = on_outcome
        self.pending[token] = reply
        try:
            if not (plain and self._send_now(ref.actor_id, msg)):
                self.send(ref, msg, nowait=False)
        except BaseException:
            self.pending.pop(token, None)
            raise
        return reply

    def _send_now(self, target: int, msg: tuple[Any, ...]) -> bool:
        """The latency path: a call of plain data to an idle receiver, off the loop.

        Written to the ring at once, as a record of its own (no burst to wait for), and
        marshalled (plain data has no large buffers; ``oob.load_payload``). False,
        with nothing sent, whenever anything is unusual: no channel yet, no credit, others
        waiting or queued ahead of us, the receiver busy, or a record too big or not
        fitting now; ``send`` then handles it.
        """
        chan = self.outbound.get(target)
        self.burst += 1
        if (chan is None or threading.get_ident() == self.loop_thread_id
                or self.burst > BURST_PENDING < len(self.pending)):
            return False
        lock = chan.lock
        lock.acquire()  # not ``with``: once per call, and the block costs (see tell)
        try:
            hdr = chan.ring.hdr  # in_flight() == 0, inlined: the receiver is idle
            if (chan.credits <= 0 or chan.gate.waiting or chan.outbox or chan.encoded
                    or hdr[H_SENT] != hdr[H_HANDLED]):
                return False
            body = _marshal([msg])  # plain data: marshal is faster than pickle both ways
            if len(body) > self.max_inline:
                return False
            if self.expects_readers and len(self.pending) == 1 and _running_loop() is None:
                # A lone call from a thread without an event loop: its caller is about to
                # spin on the reply's ring (``wait_reply``). Say so before the call is out,
                # so that a quick reply does not wake the loop thread, which would then
                # wait for the spinning caller's GIL (a hand-off that costs a later call
                # ~100 µs: issue 15's round-trip tail). The actor holds the reply's
                # doorbell back a moment (``ActorHub.owe_doorbell``), never for good.
                try:
                    back = self.inbound[target].ring.hdr
                    if not back[H_READER]:
                        back[H_READER] = READER_EXPECTED
                except (KeyError, ValueError):  # no reply ring (yet), or released
                    pass
            if not chan.ring.try_write(body, 1):
                return False
            chan.credits -= 1
            chan.ring_doorbell()
        finally:
            lock.release()
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

    def _append_locked(self, chan: OutChannel, msg: tuple[Any, ...]) -> bool:
        """Append under ``chan.lock``; True if the caller must mark the channel dirty.

        A burst of bare tells that goes on sets credit aside for the next ones (up to a
        full burst): ``bind_tell``'s fast path appends them without this.
        """
        chan.unreserve()
        outbox = chan.outbox
        if msg[0] == OP_TELL and (chan.bare or not outbox):
            outbox.append(msg[2])  # a burst of tells: bare (OutChannel.bare)
            chan.bare = True
        else:
            if chan.bare:
                outbox = self.wrap_bare(chan)
            outbox.append(msg)
        # Off the loop, a call to an idle receiver goes out at once (latency: no loop
        # wake-up); tells, and calls to a busy receiver, wait in the outbox for the rest
        # of the burst (throughput: one record, one publish, one doorbell).
        if len(outbox) >= self.config.outbox_messages or (
                msg[1] and threading.get_ident() != self.loop_thread_id
                and chan.ring.in_flight() == 0
                and not self.burst > BURST_PENDING < len(self.pending)):
            chan.flush_locked(self.encode)
            if not chan.encoded:
                self.dirty.discard(chan)
                return False
            return True
        if chan.bare:
            chan.reserve(self._outbox_fast)
        return len(outbox) == 1

    @staticmethod
    def wrap_bare(chan: OutChannel) -> list[Any]:
        """Put the bare told messages of *chan*'s outbox back in their wire tuples (before
        anything else is appended to it); return the outbox. Caller holds its lock."""
        if chan.bare:
            chan.unreserve()
            chan.outbox = [(OP_TELL, 0, m) for m in chan.outbox]
            chan.bare = False
        return chan.outbox

    def _join_line_locked(self, chan: OutChannel, ref: ActorRef[Any], msg: tuple[Any, ...],
                          nowait: bool) -> Waiter | None:
        gate = chan.gate
        if nowait:
            gate.backpressure += 1
            chan.set_want(gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox has no credit left ({chan.limit()} "
                    "messages in flight); retry later, or use tell() to wait for credit")
            raise Backpressure(text)
        now = time.monotonic()
        if self.may_block():
            event = threading.Event()
            waiter = gate.enqueue(ref._priority, now, lambda _w: event.set())
            waiter.event = event
        else:
            if gate.waiting >= self.config.max_parked:
                gate.backpressure += 1
                chan.set_want(True)
                text = (f"{ref._describe()}: {gate.waiting} messages already wait for its "
                        f"mailbox (max_parked={self.config.max_parked}); await some "
                        "replies before sending more (bound the fan-out, e.g. with an "
                        "asyncio.Semaphore)")
                raise Backpressure(text)
            waiter = gate.enqueue(ref._priority, now,
                                  lambda w: self._send_granted(chan, w, msg))
            waiter.message = msg
            self._expire_later(chan, waiter, ref, msg)
        chan.credits = 0
        chan.set_want(True)
        self.waiting_chans.add(chan)
        self.schedule_grant(chan)
        return waiter if waiter.event is not None else None

    def _wait_turn(self, chan: OutChannel, ref: ActorRef[Any], waiter: Waiter,
                   msg: tuple[Any, ...]) -> None:
        """Called with ``chan.lock`` held: release it, wait for our credit, send."""
        chan.lock.release()
        try:
            self.flush_dirty()  # our own queued messages must reach the receiver first
            deadline = Deadline.after(self.config.send_timeout)
            event: threading.Event = waiter.event
            # The receiver rings our doorbell when credit comes back and the loop grants
            # it; polling here is only the safety net, so it is slow on purpose (a fast
            # poll by every blocked producer cost a core under overload).
            delay = 0.001
            while not waiter.granted and not chan.closed and not deadline.expired():
                self.grant(chan)
                if waiter.granted:
                    break
                self.idle_wait(event, min(delay, deadline.remaining()))
                delay = min(delay * 2, 0.02)
        finally:
            chan.lock.acquire()
        gate = chan.gate
        if chan.closed:
            text = f"{ref._describe()} is stopped: {self.gone.get(ref.actor_id, 'it stopped')}"
            raise ActorStopped(text)
        if not waiter.granted:
            gate.cancel(waiter, time.monotonic())
            gate.backpressure += 1
            chan.set_want(gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox stayed full for {self.config.send_timeout:g}s "
                    f"(send timeout; {chan.limit()} messages in flight, {gate.waiting} "
                    "more producers waiting)")
            raise Backpressure(text)
        gate.consume(waiter)
        if self._append_locked(chan, msg):
            self.mark_dirty(chan)

    def _send_granted(self, chan: OutChannel, waiter: Waiter, msg: tuple[Any, ...]) -> None:
        """A parked message got its credit: into the outbox it goes."""
        with chan.lock:
            if waiter.cancelled:
                return
            chan.gate.consume(waiter)
            dirty = self._append_locked(chan, msg)
        if dirty:
            self.mark_dirty(chan)

    def _expire_later(self, chan: OutChannel, waiter: Waiter, ref: ActorRef[Any],
                      msg: tuple[Any, ...]) -> None:
        def expire() -> None:
            with chan.lock:
                if waiter.granted or waiter.cancelled:
                    return
                chan.gate.cancel(waiter, time.monotonic())
                chan.gate.backpressure += 1
                chan.set_want(chan.gate.waiting > 0)
            text = (f"{ref._describe()}'s mailbox stayed full for "
                    f"{self.config.send_timeout:g}s (send timeout; the message was parked)")
            reply = self.pending.pop(msg[1], None) if msg[1] else None
            if reply is not None:
                reply.set_exception(Backpressure(text))
            else:
                logger.warning("dropped a told message: %s", text)

        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                lambda: self.loop.call_later(self.config.send_timeout, expire))  # type: ignore[union-attr]

    def close_channel(self, chan: OutChannel, why: str, *,
                      fail_replies: bool = True) -> list[tuple[Any, ...]]:
        """The receiver is gone for good: release everyone waiting for its credit.

        Returns the messages that never reached its ring (still in the outbox, encoded
        but not written, or parked for credit), for the dead letters. Their callers get
        ``ActorStopped`` here, or (``fail_replies=False``) from the caller's own
        ``fail_pending`` once it has recorded them.
        """
        with chan.lock:
            chan.closed = True
            left = chan.gate.close(time.monotonic())
            self.waiting_chans.discard(chan)
            self.dirty.discard(chan)
            unsent = self._unsent(chan)
        for waiter in left:
            if waiter.event is not None:
                waiter.event.set()  # a blocked producer wakes and raises ActorStopped
            elif waiter.message is not None:
                unsent.append(waiter.message)
        if fail_replies:
            for msg in unsent:
                reply = self.pending.pop(msg[1], None) if msg[1] else None
                if reply is not None:
                    reply.set_exception(ActorStopped(f"{reply.describe}: {why}"))
        return unsent

    @staticmethod
    def _unsent(chan: OutChannel) -> list[tuple[Any, ...]]:
        """Take what never reached *chan*'s ring (caller holds its lock)."""
        msgs: list[tuple[Any, ...]] = list(Hub.wrap_bare(chan))
        chan.outbox = []
        chan.plain = 0
        while chan.encoded:
            payload, _count = chan.encoded.popleft()
            unlink: list[Any] = []
            try:
                msgs.extend(decode_batch(memoryview(payload), unlink, salvage=True))
            except Exception:  # pragma: no cover - it was pickled by this process
                logger.exception("could not read back unsent messages to a stopped actor")
            run_after_commit(unlink)
        chan.encoded_count = 0
        return msgs

    def grant(self, chan: OutChannel) -> None:
        """Hand the credit that came back to the producers in line, in their order."""
        granted: list[Waiter] = []
        with chan.lock:
            gate = chan.gate
            if chan.closed:
                self.waiting_chans.discard(chan)
                return
            if gate.waiting:
                free = chan.credit()
                if free > 0:
                    granted = gate.grant(free, time.monotonic())
            chan.set_want(gate.waiting > 0)
            again = False
            if gate.waiting:
                # want is re-armed after we looked: credit returned in between rang
                # nobody, so look once more (store want, then load handled: fence)
                fence()
                again = chan.credit() > 0
            else:
                self.waiting_chans.discard(chan)
        for waiter in granted:
            if waiter.on_grant is not None:
                waiter.on_grant(waiter)
        if again:
            self.schedule_grant(chan)

    def grant_all(self) -> None:
        """Grant on every channel that has producers in line (after a doorbell)."""
        for chan in list(self.waiting_chans):
            self.grant(chan)

    def schedule_grant(self, chan: OutChannel) -> None:
        """Re-check *chan* soon on the loop (credit may have come back meanwhile)."""
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.grant, chan)
            except RuntimeError:
                pass

    def idle_wait(self, event: threading.Event, seconds: float) -> None:
        """Wait up to *seconds* for *event* while waiting for credit."""
        event.wait(seconds)

    def mark_dirty(self, chan: OutChannel) -> None:
        """*chan*'s outbox has messages: flush it by the end of this loop iteration."""
        chan.seen = len(chan.outbox)  # the settling look compares with this (flush_dirty)
        self.dirty.add(chan)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Make sure dirty outboxes are flushed by the end of this loop iteration."""
        if self.flush_scheduled or self.loop is None:
            return
        self.flush_scheduled = True
        if threading.get_ident() == self.loop_thread_id:
            # the loop's own sends (a scheduler running on it): nothing to yield to
            self.loop.call_soon(self.flush_own)
        else:
            try:
                self.loop.call_soon_threadsafe(self._flush_tick)
            except RuntimeError:  # loop closed: the system is shutting down
                self.flush_scheduled = False

    def _flush_tick(self) -> None:
        self.flush_scheduled = False
        if self.dirty:
            # Yield the GIL first: the thread that scheduled this released it only to wake
            # us (call_soon_threadsafe writes to a pipe), and is likely mid-burst; it goes
            # on until it waits or is switched out, and the burst has grown by then.
            time.sleep(0)
        self.flush_or_retry(settle=True)

    def flush_own(self) -> None:
        """The flush that the loop thread's own sends scheduled: at once, no yield."""
        self.flush_scheduled = False
        self.flush_or_retry(settle=True)

    def flush_or_retry(self, *, settle: bool = False) -> None:
        """Loop thread: flush; if a ring was full, or a channel busy, try again shortly.

        With *settle* (the flush a send scheduled, ``_flush_tick``), an outbox that grew
        since the last look is left to the next loop iteration (see ``flush_dirty``).
        """
        if self.flush_dirty(wait=False, settle=settle) or self.loop is None or (
                self.flush_scheduled):
            return
        self.flush_scheduled = True
        self.loop.call_later(0.0005, self._flush_tick)

    def flush_dirty(self, *, wait: bool = True, settle: bool = False) -> bool:
        """Write every non-empty outbox to its ring; True if all of it got in.

        Without *wait* (the loop's own end-of-iteration flush, ``flush_or_retry``), a
        channel another thread holds is skipped: that thread is in the middle of a send
        and flushes full bursts itself, and waiting would hand the lock, then the GIL,
        back and forth between the two at every burst. The channel stays dirty and
        ``flush_or_retry`` comes back to it shortly. Flushes that must be complete
        before going on (before a handler runs, before a wait) wait.

        With *settle*, an outbox that grew since it was marked dirty or last looked at
        (``OutChannel.seen``) is skipped the same way (``unsettled`` says so), and looked
        at again about a millisecond later: a thread streaming tells would otherwise have
        the loop thread take the GIL and flush a handful of messages at a time (measured:
        a flush every 5-13 tells, the loop woken as often, at a third of the rate); it
        flushes its full bursts itself. A lone tell, or a burst that ended before the
        loop looked, goes out at once, as before.
        """
        complete = True
        self.unsettled = False
        for chan in list(self.dirty):
            if settle:
                size = len(chan.outbox)
                if size != chan.seen:
                    chan.seen = size
                    self.unsettled = True
                    complete = False
                    continue
            lock = chan.lock
            if not lock.acquire(blocking=wait):
                complete = False
                continue
            try:
                chan.seen = 0
                if chan.flush_locked(self.encode):
                    self.dirty.discard(chan)
                else:
                    complete = False
            finally:
                lock.release()
        return complete

    def encode(self, msgs: list[Any], plain: bool = False,
               bare: bool = False) -> tuple[bytes, int]:
        """Pickle a burst as one record; return it and how many messages it holds.

        *msgs* is the caller's to give away: it may be emptied.

        A burst of *plain* data only (calls and tells whose data was checked at their
        call site: scalars, small tuples and lists of them; ``OutChannel.plain``) is
        marshalled instead, as a tuple: about half the cost of pickling on both sides
        (``oob.load_payload`` tells the two apart), no big buffer can be among it, and
        its receiver skips looking for replies. A burst of tells only, *bare* (the told
        messages themselves, ``OutChannel.bare``), is marshalled as ``(OP_TELL,
        messages)``: no wire tuple per message on either side. A message that cannot be pickled is
        replaced (an error reply) or dropped (``unpicklable``), so the count may be lower
        than ``len(msgs)``: the record's header must say how many it really holds, or its
        receiver would wait forever for the missing ones before committing it.
        """
        if plain:  # a tuple: the receiver knows at once that no reply is among them
            burst = tuple(msgs)
            # *msgs* is emptied so that each message is referenced once: marshal keeps a
            # table of the objects referenced more than once (+300 instructions a message)
            msgs.clear()
            body = _marshal((OP_TELL, burst) if bare else burst)
            if len(body) <= self.max_inline:
                return body, len(burst)
            msgs = list(burst)
        if bare:
            msgs = [(OP_TELL, 0, m) for m in msgs]
        cfg = self.config
        try:
            return encode_batch(msgs, oob_threshold=cfg.oob_threshold,
                                max_inline=self.max_inline, namer=self.namer,
                                pool=self.pool), len(msgs)
        except Exception as exc:
            # one message that does not pickle, or does not fit in shared memory: it
            # fails alone (``unpicklable``), the rest of the burst goes
            alone = isinstance(exc, MessageTooLarge)
            good = [m for m in (self._encodable(m, alone) for m in msgs) if m is not None]
            try:
                return encode_batch(good, oob_threshold=cfg.oob_threshold,
                                    max_inline=self.max_inline, namer=self.namer,
                                    pool=self.pool), len(good)
            except MessageTooLarge as too_large:  # each fits alone, not all together
                left = [m for m in (self.unpicklable(m, too_large) for m in good)
                        if m is not None]  # error replies: small
                return encode_batch(left, oob_threshold=cfg.oob_threshold,
                                    max_inline=self.max_inline, namer=self.namer,
                                    pool=self.pool), len(left)

    def _encodable(self, msg: tuple[Any, ...], alone: bool = False) -> tuple[Any, ...] | None:
        """*msg* if it can be sent, else what ``unpicklable`` makes of it. With *alone*
        (shared memory ran out), whether it fits in shared memory on its own is tried."""
        try:
            if alone:
                cfg = self.config
                release_payload(encode_batch([msg], oob_threshold=cfg.oob_threshold,
                                             max_inline=self.max_inline, namer=self.namer,
                                             pool=self.pool), self.pool)
            else:
                pickle.dumps(msg, protocol=5, buffer_callback=lambda _b: False)
        except Exception as exc:
            return self.unpicklable(msg, exc)
        return msg

    def unpicklable(self, msg: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...] | None:
        """Deal with a message that failed to pickle at flush time; maybe replace it."""
        too_large = isinstance(exc, MessageTooLarge)
        if msg[1] and msg[0] in (OP_CALL, OP_DCALL):
            reply = self.pending.pop(msg[1], None)
            if reply is not None:
                reply.set_exception(
                    MessageTooLarge(f"{reply.describe}: {exc}") if too_large else
                    EncodeError(f"{reply.describe}: a message could not be pickled: {exc}"))
                return None
        if msg[0] == OP_REPLY:
            if too_large:
                return (OP_REPLY, msg[1], False,
                        MessageTooLarge(f"the handler's return value: {exc}"), "")
            err = EncodeError(f"the handler's return value could not be pickled: {exc}")
            return (OP_REPLY, msg[1], False, err, format_remote(exc))
        logger.error("dropped a message that could not be %s: %s",
                     "put in shared memory" if too_large else "pickled", exc)
        return None

    # -- receiving ----------------------------------------------------------------------

    def drain(self, limit: int = 0) -> int:
        """Read published records of every inbound ring; dispatch their messages.

        With *limit*, stop reading once that many messages wait to be handled: reading
        far ahead only moves the backlog into this process's heap, where the garbage
        collector walks it again and again.
        """
        n = 0
        now = time.perf_counter()
        chans = list(self.inbound.values())
        if len(chans) == 1:  # one sender: nobody to be fair to, read until empty or limit
            chan = chans[0]
            hdr = chan.ring.hdr
            # the tail is looked at here: no read_next() call just to learn there is nothing
            while hdr[H_TAIL] != chan.cursor and not (limit and self.queued >= limit):
                rec = chan.read_next()
                if rec is None:  # pragma: no cover - a published tail always has a record
                    break
                n += self._take_record(chan, rec, now)
            return n
        if len(chans) > 1:  # start each drain at the next ring: no ring always comes first
            self._rr = (self._rr + 1) % len(chans)
            chans = chans[self._rr:] + chans[: self._rr]
        while chans:
            # Deficit round robin: each ring gets up to DRAIN_QUANTUM messages a round,
            # so that neither a sender with a standing backlog nor one that writes big
            # records (a burst of 256 is one record) starves the others.
            ready = []
            for chan in chans:
                budget = DRAIN_QUANTUM
                while budget > 0:
                    if limit and self.queued >= limit:
                        return n
                    rec = chan.read_next()
                    if rec is None:
                        break
                    taken = self._take_record(chan, rec, now)
                    n += taken
                    budget -= max(taken, 1)
                else:
                    ready.append(chan)
            chans = ready
        return n

    def _take_record(self, chan: InChannel, rec: Any, now: float) -> int:
        """Decode one record and dispatch its messages; return how many it held."""
        unlink: list[str] = []
        msgs: Any
        tells = False
        try:
            payload = rec.payload  # oob.load_payload, inlined: a pickle, or marshalled
            if payload[0] != PICKLE_PROTO:
                # plain data, marshalled: a lone message (a list), a burst of calls and
                # tells (a tuple: no reply among them), or of tells only, bare
                # ((OP_TELL, messages)) (``encode``)
                msgs = _unmarshal(payload)
                if msgs and type(msgs[0]) is int:
                    msgs, tells = msgs[1], True
            else:
                try:
                    msgs = _loads(payload)
                except BaseException as exc:  # SystemExit too (sys.exit() in a __reduce__)
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    msgs = salvage_loads(payload)  # a message in it does not unpickle here
                if type(msgs) is not list:  # out of band buffers, spilled, or salvaged
                    if type(msgs) is not Salvaged:
                        msgs = decode_loaded(msgs, unlink, salvage=True)
                    if type(msgs) is Salvaged:
                        msgs = self.sort_out(chan, msgs)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            logger.exception("dropped a record from hub %d that could not be "
                             "unpickled", chan.sender_id)
            msgs = []
            rec = rec._replace(count=0)
        finally:
            rec.payload.release()
        if tells:
            entry = chan.open(rec, unlink)
            entry.t_read = now
            self.dispatch_tells(msgs, entry)
            return len(msgs)
        if msgs and not chan.open_records and type(msgs) is list and (
                msgs[0][0] == OP_REPLY if len(msgs) == 1
                else all(msg[0] == OP_REPLY for msg in msgs)):
            # Only replies, nothing open before it: resolve them all and commit the record
            # at once (the common case for callers; no per-message bookkeeping).
            hdr = chan.ring.hdr  # Ring.skip_count, inlined: once per reply record
            skip = hdr[H_CUR_SUB] if hdr[H_CUR_REC] == rec.pos else 0
            if hdr[H_READER] == READER_EXPECTED:
                # the caller that said it would spin did not (yet): the hint is spent.
                # Cleared before the reply wakes it, so that its next hint stays.
                hdr[H_READER] = 0
            for msg in msgs[skip:] if skip else msgs:
                self.resolve(msg)
            chan.commit_now(rec, unlink)
            return len(msgs)
        if len(msgs) == 1 and not chan.open_records and self.serve_alone(chan, rec, unlink,
                                                                          msgs):
            return 1
        entry = chan.open(rec, unlink)
        entry.t_read = now
        self.dispatch_all(msgs, entry)
        if not msgs:
            chan.commit_ready()
        return len(msgs)

    def sort_out(self, chan: InChannel, msgs: list[Any]) -> list[Any]:
        """A batch that did not unpickle as a whole (``salvage_loads``): keep its good
        messages as they are; make each bad one fail on its own (a call or tell gets a
        ``BadMessage`` for its method, a reply becomes an error reply), naming what did
        not unpickle, and record it in the dead letters."""
        out = []
        for msg in msgs:
            bad = find_unloadable(msg)
            out.append(msg if bad is None else self.bad_message(chan, msg, bad))
        return out

    def bad_message(self, chan: InChannel, msg: tuple[Any, ...],
                    bad: Unloadable) -> tuple[Any, ...]:
        """The stand-in for one message of a salvaged batch (see ``sort_out``)."""
        where = f"{self.describe_self()} (pid {os.getpid()})"
        if msg[0] == OP_REPLY:
            reply = self.pending.get(msg[1])
            what = reply.describe if reply is not None else "a call"
            label = "the return value" if msg[2] else "the exception raised"
            text = f"{label} of {what} could not be unpickled in {where}: {bad.describe()}"
            self.record_dead(what, text)
            return (OP_REPLY, msg[1], False, DecodeError(text, "reply"),
                    msg[4] if not msg[2] else "")
        method, args = method_and_args(msg)
        call = msg[0] == OP_CALL or msg[0] == OP_DCALL  # the same fields up to kwargs
        kwargs = msg[5] if call else {}
        label = "the message"
        if call:
            label = next((f"argument {i}" for i, a in enumerate(args)
                          if find_unloadable(a) is not None), None) or next(
                (f"keyword argument {k!r}" for k, v in kwargs.items()
                 if find_unloadable(v) is not None), "a part")
        target = f"{self.describe_self()}.{method}"
        text = (f"{label} of {target} could not be unpickled in the receiving process "
                f"(pid {os.getpid()}), so the {'call' if msg[1] else 'message'} was not "
                f"handled: {bad.describe()}")
        self.record_dead(method, text)
        return (OP_CALL, msg[1], msg[2] if call else 0,
                BadMessage(method, text), (), _NO_KWARGS)

    def describe_self(self) -> str:
        """This process, in error messages."""
        return "the actor system's process"

    def record_dead(self, method: str, reason: str) -> None:
        """Keep a dead letter for a message that failed here (see ``sort_out``)."""

    def serve_alone(self, chan: InChannel, rec: Any, unlink: list[Any],
                    msgs: Any) -> bool:
        """Handle the lone message of *msgs* at once, if it may be; True if it was (and
        is committed; a list *msgs* may then have been emptied).

        Only actors handle calls (``ActorHub``); here nothing ever is.
        """
        return False

    def dispatch_tells(self, msgs: tuple[Any, ...], entry: OpenRecord) -> None:
        """Dispatch a record of told messages only, bare (``encode``); ``ActorHub`` queues
        it as it is."""
        self.dispatch_all([(OP_TELL, 0, m) for m in msgs], entry)

    def dispatch_all(self, msgs: list[Any], entry: OpenRecord) -> None:
        """Dispatch the messages of a record that are not handled yet."""
        done = entry.done
        for index, msg in enumerate(msgs):
            if not done[index]:
                self.dispatch(msg, entry, index)

    def dispatch(self, msg: tuple[Any, ...], entry: OpenRecord, index: int) -> None:
        """Handle one message read from a ring (replies here; calls in ``ActorHub``)."""
        if msg[0] == OP_REPLY:
            self.resolve(msg)
        else:  # pragma: no cover - the system is never called
            logger.warning("hub %d dropped an unexpected message %r", self.id, msg[:4])
        entry.done_one(index)

    def resolve(self, msg: tuple[Any, ...]) -> None:
        """Complete the pending reply a reply message answers (late ones are dropped)."""
        _op, token, ok, value, tb = msg
        reply = self.pending.pop(token, None)
        if reply is None:
            return
        if ok:
            reply.set_result(value)
        else:
            reply.set_exception(error_from_wire(value, tb))

    def fail_pending(self, target_id: int, exc_factory: Any) -> int:
        """Fail every pending reply from *target_id* with ``exc_factory(reply)``."""
        failed = 0
        for token, reply in list(self.pending.items()):
            if reply.target_id == target_id:
                self.pending.pop(token, None)
                reply.set_exception(exc_factory(reply))
                failed += 1
        return failed

    def has_unread(self) -> bool:
        """True if some inbound ring has a record this hub has not read yet."""
        # a snapshot (the loop thread may add a ring); a plain loop, not any(): no generator
        for ch in tuple(self.inbound.values()):  # noqa: SIM110
            if ch.ring.hdr[H_TAIL] != ch.cursor:
                return True
        return False

    def park(self) -> bool:
        """Mark this consumer parked; False (and unparked) if data arrived meanwhile."""
        slots = self.ctl.slots
        seq = slots[C_PARKED]
        slots[C_PARKED] = seq + 1 if not seq & 1 else seq + 2
        fence()
        if self.has_unread():
            self.unpark()
            return False
        return True

    def watchdog(self, busy: Callable[[], bool], serve: Callable[[], None],
                 active: Callable[[], bool]) -> None:
        """Safety net for lost wake-ups (docs/internals.md: park with a timeout, count, keep 0).

        Every ``park_timeout``: data present while parked with no doorbell pending is
        suspicious only if it is still there, untouched by any wake-up, at a second look
        shortly after (a producer may be between publishing and ringing at the first
        look). Then it is counted in ``lost_wakeups`` and served.

        With ``idle_backoff`` (actors), a hub that stayed parked with no wake-up since
        the last look is looked at half as often each time, down to once every
        ``IDLE_BACKOFF`` x ``park_timeout``. A ``swept`` hub (an actor) stops looking
        instead of backing off that far (``C_WATCH_MS`` 0): the system's idle sweep
        (``_runtime/idle.py``) looks at the rings of every such actor at that pace, in
        one pass of its own, and asks one with data waiting to look again
        (``watch_sooner``); idle actors then cost no wake-ups, however many there are.
        The first wake-up after a quiet stretch (``watch_sooner``) brings the next look
        back to ``park_timeout``.
        """
        self.watch_handle = None
        if not active() or self.loop is None:
            return
        slots = self.ctl.slots
        wakeups = slots[C_WAKEUPS]
        quiet = wakeups == self.watch_seen and slots[C_PARKED] & 1
        if self._parked_with_data(busy()):
            quiet = False

            def second_look() -> None:
                if self.ctl.slots[C_WAKEUPS] == wakeups and self._parked_with_data(busy()):
                    self.ctl.slots[C_LOST] += 1
                    serve()
                    self.watch_sooner()

            self.loop.call_later(0.01, second_look)
        base = self.config.park_timeout
        interval = base
        self.watch_args = (busy, serve, active)
        if self.idle_backoff and quiet:
            interval = min(self.watch_interval * 2, base * IDLE_BACKOFF)
            if self.swept and interval == base * IDLE_BACKOFF:
                slots[C_WATCH_MS] = 0  # stopped: the system's idle sweep watches it now
                return
        self.watch_seen = wakeups
        self.watch_interval = interval
        slots[C_WATCH_MS] = round(interval * 1e3)  # 0 only once stopped
        self.watch_handle = self.loop.call_later(interval, self.watchdog, busy, serve, active)

    def watch_sooner(self) -> None:
        """A wake-up after a quiet stretch, or the system's idle sweep asking: the
        watchdog looks again after ``park_timeout`` (not after the long interval it had
        backed off to; started again if it had stopped). Loop thread."""
        handle = self.watch_handle
        if self.loop is None or not self.watch_args:
            return  # not started yet
        if handle is not None:
            handle.cancel()
        self.watch_interval = self.config.park_timeout
        self.ctl.slots[C_WATCH_MS] = round(self.watch_interval * 1e3)
        self.watch_seen = -1  # the next look does not back off
        self.watch_handle = self.loop.call_later(self.watch_interval, self.watchdog,
                                                 *self.watch_args)

    def _parked_with_data(self, busy: bool) -> bool:
        if busy or not self.ctl.slots[C_PARKED] & 1 or not self.has_unread():
            return False
        fence()
        readable, _w, _x = select.select([self.efd], [], [], 0)
        return not readable

    def unpark(self) -> None:
        """Mark this consumer awake: producers stop ringing its doorbell."""
        slots = self.ctl.slots
        seq = slots[C_PARKED]
        if seq & 1:
            slots[C_PARKED] = seq + 1

    def clear_doorbell(self) -> None:
        """Consume pending doorbell rings (non-blocking)."""
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass

    # -- hooks for subclasses -----------------------------------------------------------

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:
        """Return a channel to *ref*'s actor, creating it if needed."""
        raise NotImplementedError

    def may_block(self) -> bool:
        """True if the current thread may wait (not on a running event loop)."""
        raise NotImplementedError

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Block until *reply* is done or *deadline* passes."""
        raise NotImplementedError

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        """True if waiting on *reply* here can never end."""
        return False

    def timeout_hint(self, reply: Reply[Any]) -> str:
        """Extra words for a ``CallTimeout`` about *reply*."""
        return ""
