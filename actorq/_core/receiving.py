"""The receive path: records read from a hub's inbound rings, decoded and dispatched.

``drain`` reads the inbound rings (in turn, each up to ``DRAIN_QUANTUM`` messages a
round); ``_take_record`` decodes one record (marshalled plain data, a pickle, or a batch
salvaged message by message, ``sort_out``) and hands its messages on. A record of
replies only resolves its pending replies (``resolve``) and is committed at once; a lone
call may be served on the spot (``serve_alone``: actors); the rest is dispatched
(``dispatch_all``, ``dispatch_tells``: ``ActorHub`` queues the record for its ``pump``).
"""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import time
from typing import Any

from actorq._core.hubstate import _NO_KWARGS, HubState
from actorq._core.protocol import OP_CALL, OP_DCALL, OP_REPLY, OP_TELL, method_and_args
from actorq._core.reply import error_from_wire
from actorq._errors import DecodeError
from actorq._serialization import Salvaged, Unloadable, find_unloadable, salvage_loads
from actorq._transport.channel import InChannel, OpenRecord
from actorq._transport.oob import decode_loaded
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_READER,
    H_TAIL,
    PICKLE_PROTO,
    READER_EXPECTED,
    Loaded,
)

logger = logging.getLogger(__name__)

DRAIN_QUANTUM = 256  # messages per ring per round of a drain (one full burst record)
_loads = pickle.loads
_unmarshal = marshal.loads


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


class Receiving(HubState):
    """The receive path of a hub (a part of ``Hub``)."""

    def drain(self, limit: int = 0) -> int:
        """Read published records of every inbound ring; dispatch their messages.

        With *limit*, stop reading once that many messages wait to be handled: reading
        far ahead only moves the backlog into this process's heap, where the garbage
        collector walks it again and again.
        """
        n = 0
        now = time.perf_counter() if self.times_reads else 0.0  # OpenRecord.t_read
        chans: list[InChannel] | tuple[InChannel, ...] = self.inbound.all
        if len(chans) == 1:  # one sender: nobody to be fair to, read until empty or limit
            chan = chans[0]
            ring = chan.ring
            hdr = ring.hdr
            # the tail is looked at here: no read_next() call just to learn there is
            # nothing, and the read is bounded by it (no second look)
            while (tail := hdr[H_TAIL]) != chan.cursor and not (
                    limit and self.queued >= limit):
                # chan.read_next(tail), written out; plain data decoded as it is read
                rec = ring.core.read_plain(chan.cursor, tail)
                if rec is None:  # pragma: no cover - a published tail always has a record
                    break
                chan.cursor = rec.end
                n += self._take_record(chan, rec, now)
            return n
        if len(chans) > 1:  # start each drain at the next ring: no ring always comes first
            self._rr = (self._rr + 1) % len(chans)
            chans = [*chans[self._rr:], *chans[: self._rr]]
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
        """Decode one record and dispatch its messages; return how many it held.

        *rec*: a ``Record`` (its payload a view of the ring), or a ``Loaded`` one (read
        by ``Ring.read_plain``: plain data, decoded already)."""
        unlink: list[str] = []
        msgs: Any
        tells = dropped = False
        payload = rec[1]  # a Record's payload, or a Loaded record's messages
        loaded = type(rec) is Loaded
        try:
            if loaded:
                msgs = payload
                if msgs and type(msgs[0]) is int:  # as below
                    msgs, tells = msgs[1], True
            elif payload[0] != PICKLE_PROTO:  # oob.load_payload, inlined
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
            dropped = True
        finally:
            if not loaded:
                payload.release()
        if tells:
            entry = chan.open(rec, unlink)
            entry.t_read = now
            self.dispatch_tells(msgs, entry)
            return len(msgs)
        # Nothing open before it: a lone call may be served at once (``serve_alone``), a
        # record of replies only is resolved and committed at once. One look at the
        # lone message serves both (each side of a round trip reads one).
        replies = False
        if msgs and not chan.open_records:
            if len(msgs) == 1:
                if msgs[0][0] == OP_REPLY:
                    replies = type(msgs) is list  # (a marshalled tuple holds no replies)
                elif self.serve_alone(chan, rec, unlink, msgs):
                    return 1
            else:
                replies = type(msgs) is list and all(msg[0] == OP_REPLY for msg in msgs)
        if replies:
            # Only replies: resolve them all and commit the record at once (the common
            # case for callers; no per-message bookkeeping).
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
        entry = chan.open(rec, unlink)
        entry.t_read = now
        if dropped:  # its messages count as handled: their credit goes back, in order
            entry.drop_all()
            return 0
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
