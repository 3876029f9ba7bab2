"""Handling what an actor reads: a lone call served at once, the rest queued for ``pump``;
a call run; each message's outcome committed, then replied (or a tell's error logged).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import operator
import os
import time
from typing import Any

from actorq._actorproc.replies import Replies
from actorq._core.protocol import (
    C_BUSY,
    C_HANDLED,
    C_REPLY_TO,
    C_SEQ,
    C_SINCE,
    C_STOP,
    C_TOKEN,
    OP_CALL,
    OP_DCALL,
    OP_REPLY,
)
from actorq._core.receiving import BadMessage
from actorq._errors import ActorStopped, CallTimeout, format_remote, raised_at
from actorq._transport.channel import C_WINDOW, InChannel, OpenRecord
from actorq._transport.oob import run_after_commit
from actorq._transport.ring import H_CUR_REC, H_CUR_SUB, H_HANDLED, H_HEAD, H_TAIL, Loaded

logger = logging.getLogger(__name__)

_op_of = operator.itemgetter(0)  # a wire message's op

# Result types that are never awaitable (checked before the costlier inspect.isawaitable).
_PLAIN = frozenset({type(None), int, float, str, bytes, bool, tuple, list, dict, set,
                    frozenset, complex, bytearray})


class Handling(Replies):
    """Dispatching, running and finishing an actor's messages (a part of ``ActorHub``)."""

    def drain(self, limit: int = 0) -> int:
        """``Receiving.drain``, with the C helpers the latency path first: while the
        actor is idle with nothing open, each record at the head of its one inbound ring
        that is a lone plain call is served as it is read, in C (``serve_lone``: read,
        run, committed and answered in one call: ≈ 2 µs of a round trip's 16 less), or
        here (``serve_alone``) when C hands it back. Anything else goes the general way."""
        chans = self.inbound.all
        if len(chans) != 1 or self.lone_begin is None or not self.serves_alone:
            return super().drain(limit)
        chan = chans[0]
        ctx = self.lone_ctx
        if ctx is None or ctx[0] is not chan:
            ctx = self.lone_ctx = self.lone_context(chan)
        n = 0
        serve = self.serve_lone
        while True:
            if serve is not None:
                got = serve(self, ctx)
                if isinstance(got, int):
                    return n + got
                k, rec = got
                n += k
                if rec is None:  # busy, queued or open: the general path
                    return n + super().drain(limit)
            elif ctx[2][H_TAIL] == chan.cursor:
                return n
            elif self.busy or self.queue or chan.open_records:
                return n + super().drain(limit)
            else:
                rec = chan.ring.core.read_plain(chan.cursor)
                if rec is not None:
                    chan.cursor = rec.end
            if rec is None:  # pragma: no cover - a published tail always has a record
                return n
            msgs = rec[1]
            if type(rec) is Loaded and type(msgs) is list and len(msgs) == 1 and (
                    self.serve_alone(chan, rec, [], msgs)):
                n += 1
                continue
            # the general decode (a record queued or left open ends the loop above)
            n += self._take_record(chan, rec, time.perf_counter() if self.times_reads else 0.0)

    def lone_context(self, chan: InChannel) -> tuple[Any, ...]:
        """What ``serve_lone`` needs of this hub for its one inbound ring *chan*, looked
        up once per ring (``_native``: ``serve_lone``'s ctx)."""
        return (chan, chan.ring.core, chan.ring.hdr, self.ctl.slots, self.host.handlers,
                self.outbound, self.max_inline, chan.sender_id + 1, self.host)

    def serve_alone(self, chan: InChannel, rec: Any, unlink: list[Any],
                    msgs: Any) -> bool:
        """The latency path: a record of one call, read while idle, is handled right here.

        What ``pump`` would do for it, without queueing it or tracking the record: the
        crash attribution slots are set the same way, and the record is committed once
        the handler returned, before the reply goes out. Anything unusual (a backlog, a
        handler running, a stop asked, a message a predecessor already handled, adaptive
        windows or hang detection on) leaves it to the general path. A handler that turns
        out to be async, or raises, gets its record tracked then, as in ``pump``.

        The call's arguments are let go of before its reply goes out (a list *msgs* is
        emptied): an array that viewed an out-of-band block frees the block then, so
        that the caller's next array reuses the same block (warm in the cache), not
        another one.
        """
        msg = msgs[0]
        if msg[0] != OP_CALL:
            # a call with a deadline or a token (a pool's): served here too, as ``pump``
            # takes it (its deadline passed: ``pump`` drops it); 14.6k instructions of
            # the actor's side less per call of a retry pool
            # (benchmarks/callgrind_pool_call.py --count ref@actor retry@actor)
            if msg[0] != OP_DCALL or (msg[6] is not None and msg[6] <= time.monotonic()):
                return False
            self.deadline = (msg[1], msg[6], msg[7], msg[8])
            msg = msg[:6]
        if self.queue or self.busy or self.host.stopping or not self.serves_alone:
            return False
        if self.held is not None:  # the previous reply's caller has not read it yet
            self.ring_held()
        _op, token, reply_to, method, args, kwargs = msg
        fn = self.host.handlers.get(method)
        if fn is None:
            return False
        if self.dirty:
            self.flush_dirty()  # earlier replies out before the next handler runs
        slots = self.ctl.slots
        hdr = chan.ring.hdr
        begin = self.lone_begin
        if begin is not None:  # the lines below in one C call (_native: lone_begin)
            seq = begin(slots, hdr, rec.pos, token, reply_to, chan.sender_id + 1)
            if seq < 0:
                return False
        else:
            # skip_count(rec.pos) != 0, inlined: a predecessor handled it
            if slots[C_STOP] or (hdr[H_CUR_REC] == rec.pos and hdr[H_CUR_SUB]):
                return False
            slots[C_TOKEN] = token
            if token:
                slots[C_REPLY_TO] = reply_to + 1
            # the head record's first message; until the commit below nothing else
            # commits on this ring (a handler that reads its rings tracks the record
            # first: track_alone), so the count is kept for it (a header load less)
            seq = hdr[H_HANDLED]
            slots[C_SEQ] = seq
            slots[C_BUSY] = chan.sender_id + 1
        if type(msgs) is list:  # (a marshalled tuple holds plain data: no buffers)
            msgs.clear()
        del msg
        self.busy = True
        self.sync_depth += 1
        self.alone = (chan, rec, unlink)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            del args, kwargs
            self.lone_raised(chan, rec, unlink, token, reply_to, exc)
            return True
        finally:
            self.sync_depth -= 1
        del args, kwargs
        entry = self.alone_entry  # _end_alone(), written out: once per lone call
        self.alone = None
        if entry is not None:
            self.alone_entry = None
        return self.lone_tail(chan, rec, unlink, seq, token, reply_to, result, entry)

    def lone_raised(self, chan: InChannel, rec: Any, unlink: list[Any], token: int,
                    reply_to: int, exc: Exception) -> None:
        """A lone call's handler raised *exc* (``serve_alone``, ``serve_lone``): its
        record tracked, and the error its outcome."""
        self.busy = False
        self.finish(self._end_alone() or chan.open(rec, unlink), 0, token, reply_to,
                    False, exc, format_remote(exc))

    def lone_tail(self, chan: InChannel, rec: Any, unlink: list[Any], seq: int, token: int,
                  reply_to: int, result: Any, entry: OpenRecord | None) -> bool:
        """A lone call's handler returned *result* (``serve_alone``; ``serve_lone`` when
        the result may be awaitable or the record was tracked, *entry*): held while it
        is awaited, or committed and answered."""
        slots = self.ctl.slots
        hdr = chan.ring.hdr
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry or chan.open(rec, unlink), 0, token, reply_to)
            return True
        self.busy = False
        # committed: its credit is back before the reply is
        want = -1  # a producer waiting for credit: -1 not looked for yet, else its want
        if entry is None and not unlink and self.lone_commit is not None:
            # the lines below, in C, then a fence and the want loaded (the reply is
            # written before that producer is rung, as below)
            want = self.lone_commit(slots, hdr, seq, rec.end)
        elif entry is None:
            slots[C_HANDLED] += 1
            # chan.commit_now(rec, unlink), written out; its look for a producer waiting
            # for credit comes after the reply (below)
            hdr[H_HANDLED] = seq + 1  # rec.count: one call
            hdr[H_HEAD] = rec.end
            if unlink:
                run_after_commit(unlink)
            slots[C_BUSY] = 0  # after the commit: a crash in between must not redeliver it
        else:  # tracked while the handler waited (it read its rings): commit in order
            slots[C_HANDLED] += 1
            entry.done_one(0)
            slots[C_BUSY] = 0
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""), True)  # hold
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        if want and entry is None:
            # send_reply took a lock after the commit: a full fence between the handled
            # count stored and the producer's want loaded (``InChannel.credit_returned``)
            chan.credit_returned(token != 0)
        return True

    def track_alone(self) -> None:
        """A handler run by ``serve_alone`` is about to read its rings (it waits on a
        reply, or for credit): track its record from now on, so that a record read
        meanwhile from the same ring (an error reply the system sends on a dead actor's
        behalf) is committed after it, never before it."""
        if self.alone is not None and self.alone_entry is None:
            chan, rec, unlink = self.alone
            self.alone_entry = chan.open(rec, unlink)

    def _end_alone(self) -> OpenRecord | None:
        """The lone call's handler returned: its record's entry if it had to be tracked."""
        entry = self.alone_entry
        self.alone = self.alone_entry = None
        return entry

    def _no_receive(self, message: Any) -> None:
        """Stands in for ``receive`` until the actor is built (nothing is pumped before)."""
        msg = f"{self.host.describe()} has no handler 'receive'"
        raise AttributeError(msg)

    def hold(self, result: Any, entry: OpenRecord, index: int, token: int,
             reply_to: int) -> None:
        """An async handler returned *result* (awaitable): it holds the actor until done."""
        task = asyncio.ensure_future(result)
        task.add_done_callback(functools.partial(self._async_done, entry=entry, index=index,
                                                 token=token, reply_to=reply_to))

    def dispatch_all(self, msgs: Any, entry: OpenRecord) -> None:
        """Replies resolve at once; the record's calls and tells wait their turn in the queue.

        Overrides ``Hub.dispatch_all``: the record itself is queued (``pump`` takes its
        messages in order), so nothing is built or queued per message; only a record
        that holds replies (one C-speed scan tells; a marshalled burst, a tuple, holds
        none) is walked here.
        """
        if type(msgs) is list and OP_REPLY in map(_op_of, msgs):
            done = entry.done
            for index, msg in enumerate(msgs):
                if msg[0] == OP_REPLY and not done[index]:
                    self.resolve(msg)
                    entry.done_one(index)  # may commit the record: all of it was replies
            if entry.prefix >= len(msgs):
                return
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def dispatch_tells(self, msgs: tuple[Any, ...], entry: OpenRecord) -> None:
        """A record of told messages only, bare (``Hub.encode``): queued as it is; ``pump``
        hands each message to ``receive`` without a wire tuple to look into."""
        entry.tells = True
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def handle_call(self, entry: OpenRecord, index: int, msg: tuple[Any, ...],
                    handlers: dict[str, Any]) -> bool:
        """Run one call (``pump``); True if it ran to completion and was committed."""
        slots = self.ctl.slots
        _op, token, reply_to, method, args, kwargs = msg
        slots[C_TOKEN] = token  # 0: a crash then fails no caller
        if token:
            slots[C_REPLY_TO] = reply_to + 1
        if self.stamp_start:
            slots[C_SINCE] = time.monotonic_ns()
        slots[C_SEQ] = entry.hdr[H_HANDLED] + index
        slots[C_BUSY] = entry.busy  # crash attribution slot
        fn = handlers.get(method)
        if fn is None:
            err: Exception
            if type(method) is BadMessage:  # it did not unpickle here (sort_out)
                err = method.error()
            else:
                err = AttributeError(f"{self.host.describe()} has no handler {method!r}")
            self.finish(entry, index, token, reply_to, False, err, "")
            return False
        self.busy = True
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.busy = False
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
            return False
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry, index, token, reply_to)
            return False
        self.busy = False
        if self.aimd is not None and self.aimd.observe(time.perf_counter() - entry.t_read):
            slots[C_WINDOW] = self.aimd.window
        entry.done_one(index)  # committed: its credit is back before the reply is
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""))
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        return True

    def drop_expired(self, entry: OpenRecord, index: int, msg: tuple[Any, ...]) -> None:
        """A call whose deadline passed while it was queued: not run; its caller gets
        ``CallTimeout`` (reason ``"expired"``)."""
        self.expired_drops += 1
        late = time.monotonic() - msg[6]
        err = CallTimeout(f"{self.host.describe()}.{msg[3]}: dropped unrun, its deadline "
                          f"passed {late:.3f}s before its turn came", "expired")
        self.ctl.slots[C_TOKEN] = msg[1]
        if msg[1]:
            self.ctl.slots[C_REPLY_TO] = msg[2] + 1
        self.finish(entry, index, msg[1], msg[2], False, err, "")

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled; None if it has none."""
        token, deadline, _carried, _prefix = self.deadline
        if (not token or token != self.ctl.slots[C_TOKEN] or deadline is None
                or deadline == math.inf):
            return None
        return deadline - time.monotonic()

    def call_token(self) -> Any:
        """The token the call being handled carries (a pool call's, kept across its
        retries); None if it carries none."""
        token, _deadline, carried, prefix = self.deadline
        if not token or token != self.ctl.slots[C_TOKEN]:
            return None
        if prefix is not None:  # a pool's first attempt: its prefix and the call's token
            return f"{prefix}{token}"
        return carried

    def _async_done(self, task: asyncio.Future[Any], *, entry: OpenRecord, index: int,
                    token: int, reply_to: int) -> None:
        self.busy = False
        if task.cancelled():
            err = ActorStopped(f"{self.host.describe()}: the handler was cancelled")
            self.finish(entry, index, token, reply_to, False, err, "")
        elif (exc := task.exception()) is not None:
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
        else:
            self.finish(entry, index, token, reply_to, True, task.result(), "")
        self.host.run_batch()

    def finish(self, entry: OpenRecord, index: int, token: int, reply_to: int, ok: bool,
               value: Any, tb: str) -> None:
        """Count the message handled and commit it, then send the reply (or log a tell's
        error). Until the reply is out, ``C_TOKEN`` names the call whose caller a crash
        must fail."""
        slots = self.ctl.slots
        slots[C_HANDLED] += 1
        entry.done_one(index)
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, ok, value, tb))
            slots[C_TOKEN] = 0
        elif not ok:
            self.log_tell_error(value, tb)

    def log_tell_error(self, exc: BaseException, tb: str) -> None:
        """A told message raised: nobody waits for it, so log it. The first of each kind
        (exception type and the line that raised it) with its traceback; the rest only
        counted, at 10, 100, 1000 and 10000, so that a flood does not drown the log, even
        when each message has a text of its own."""
        file, line = raised_at(exc)
        kind = (type(exc).__name__, f"{file}:{line}")
        seen = self.tell_errors.get(kind, 0)
        self.tell_errors[kind] = seen + 1
        if seen == 0:
            logger.error("%s: a told message raised (later %s raised at %s are counted, "
                         "not logged):\n%s", self.host.describe(), kind[0],
                         f"{os.path.basename(file)}:{line}", tb or exc)
        elif seen + 1 in (10, 100, 1000, 10000):
            logger.error("%s: %d told messages raised %s at %s (the last: %s)",
                         self.host.describe(), seen + 1, kind[0], kind[1],
                         str(exc)[:200])
