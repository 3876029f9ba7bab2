"""What a crash did to the messages: which one killed the actor, and what was left.

After an actor's process dies, the system reads the crash slots the actor kept
(``_core/protocol.py``: ``C_BUSY``, ``C_TOKEN``, ``C_REPLY_TO``, ``C_SEQ``) to learn which
message it was handling. That message's caller gets ``ActorCrashed`` (or the message is
left at the head of its ring, to be delivered again, until ``poison_after``), and it goes
to the dead letters. When an actor is gone for good, what is still queued for it becomes
dead letters too. Runs on the system's loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from actorq._core.protocol import (
    C_BUSY,
    C_REPLY_TO,
    C_SEQ,
    C_TOKEN,
    OP_REPLY,
    method_and_args,
)
from actorq._runtime.cells import ActorCell
from actorq._supervision.deadletters import DeadLetters
from actorq._supervision.policy import describe_exit
from actorq._transport.oob import decode_batch, run_after_commit
from actorq._transport.ring import H_HANDLED, Ring

logger = logging.getLogger("actorq")

#: ``fail_caller(caller_hub_id, token, text, cause)``: fail the call with ActorCrashed.
FailCaller = Callable[[int, int, str, str], None]


def crash_words(cell: ActorCell, cause: str, code: int | None) -> str:
    """Words for how *cell*'s process died (``"was killed by SIGKILL"``)."""
    if cause == "hang":
        return (f"was killed: a handler ran past hang_timeout="
                f"{cell.options.hang_timeout:g}s")
    if cause == "oom":
        return (f"was killed: it went over max_rss={cell.options.max_rss} "
                f"({(cell.options.max_rss or 0) / 2**20:.1f} MiB)")
    if cause == "exception":
        return f"died of an exception that escaped its handlers ({describe_exit(code)})"
    return describe_exit(code)


def attribute_crash(cell: ActorCell, text: str, cause: str, dead: DeadLetters,
                    fail_caller: FailCaller) -> None:
    """Fail (or leave for redelivery) the message the dead actor was handling, per its slots."""
    slots = cell.ctl.slots
    busy, token, reply_to = slots[C_BUSY], slots[C_TOKEN], slots[C_REPLY_TO]
    slots[C_BUSY] = slots[C_TOKEN] = 0
    if busy and committed(cell, busy - 1, slots[C_SEQ]):
        busy = 0  # it died after committing the message, before clearing the slot
    if not busy:
        cell.poison_key = None
        if token:  # a call was handled and committed, but its reply may not be out
            fail_caller(reply_to - 1, token,
                        f"{text} after handling this call, before its reply was sent", cause)
        return
    sender = busy - 1
    method, message, poisoned = _take_head(cell, sender)
    if not poisoned:
        logger.warning("%s; message %r will be delivered again (%d/%d)", text, method,
                       cell.poison_count, cell.options.poison_after)
        return
    times = f" {cell.poison_count} times in a row" if cell.options.redeliver else ""
    dead.add(cell.name, method, f"crashed the actor{times}: {text}", message)
    if token:
        fail_caller(reply_to - 1, token, f"{text} while handling this call", cause)


def _take_head(cell: ActorCell, sender: int) -> tuple[str, Any, bool]:
    """The message at the head of *sender*'s ring: its method and arguments, and whether
    it is given up on (then it is committed past) or left to be delivered again."""
    seg = cell.inbound.get(sender)
    method, message, poisoned = "?", None, True
    if seg is None:
        return method, message, poisoned
    ring = Ring(seg.buf)
    rec = ring.read_at(ring.head())
    if rec is not None:
        index = ring.skip_count(rec.pos)
        key = (sender, rec.pos, index)
        cell.poison_count = cell.poison_count + 1 if cell.poison_key == key else 1
        cell.poison_key = key
        opts = cell.options
        poisoned = not opts.redeliver or cell.poison_count >= opts.poison_after
        # A record committed past here is read by nobody again: what its commit must do
        # (unlink its fresh and spilled segments, release its pooled blocks) is done here.
        last = poisoned and index + 1 >= rec.count
        after_commit: list[Any] = []
        method, message = peek_message(rec.payload, index, after_commit if last else None)
        rec.payload.release()
        if last:
            ring.commit(rec.end, rec.count)
            run_after_commit(after_commit)
        elif poisoned:
            ring.mark_progress(rec.pos, index + 1)
    ring.release()
    return method, message, poisoned


def committed(cell: ActorCell, sender: int, seq: int) -> bool:
    """Was the message at *seq* in *sender*'s ring committed (handled to the end)?"""
    seg = cell.inbound.get(sender)
    if seg is None:
        return False
    ring = Ring(seg.buf)
    try:
        rec = ring.read_at(ring.head())
        first = ring.hdr[H_HANDLED]  # the first message not handled yet
        if rec is not None:
            first += ring.skip_count(rec.pos)
            rec.payload.release()
        return seq < first
    finally:
        ring.release()


def peek_message(payload: memoryview, index: int,
                 after_commit: list[Any] | None = None) -> tuple[str, Any]:
    """The method and arguments of message *index* of a record ("?" if unreadable).

    With *after_commit*, the record is about to be committed by the caller: its blocks
    are tracked as this process's and what the commit must do goes there
    (``oob.decode_batch``); without, nothing is.
    """
    track = after_commit is not None
    unlink: list[Any] = after_commit if after_commit is not None else []
    try:
        msgs = decode_batch(payload, unlink, track=track, salvage=True)
        return method_and_args(msgs[index])
    except Exception:
        return "?", None


def dead_letter_queued(cell: ActorCell, why: str, dead: DeadLetters,
                       unsent: Sequence[tuple[Any, ...]] = ()) -> None:
    """Messages still queued for a dead actor become dead letters (and leave its rings).

    *unsent*: this process's messages that never reached its ring (an outbox not
    flushed yet, messages parked for credit): queued just the same, for their senders.
    """
    for msg in unsent:
        if msg[0] != OP_REPLY:
            method, args = method_and_args(msg)
            dead.add(cell.name, method, f"not delivered: {why}", args)
    for seg in cell.inbound.values():
        ring = Ring(seg.buf)
        pos = ring.head()
        while (rec := ring.read_at(pos)) is not None:
            unlink: list[str] = []
            try:
                msgs = decode_batch(rec.payload, unlink, salvage=True)
            except Exception:
                msgs = []
            skip = ring.skip_count(rec.pos)
            for msg in msgs[skip:]:
                if msg[0] != OP_REPLY:
                    method, args = method_and_args(msg)
                    dead.add(cell.name, method, f"not delivered: {why}", args)
            rec.payload.release()
            run_after_commit(unlink)
            ring.commit(rec.end, rec.count)
            pos = rec.end
        ring.release()
