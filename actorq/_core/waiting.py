"""Waiting on many replies from synchronous code: ``actorq.wait`` and ``actorq.as_completed``.

The synchronous counterparts of ``asyncio.wait``/``asyncio.as_completed`` over replies
(which are awaitable), shaped like ``concurrent.futures.wait``/``as_completed`` (which
take only ``concurrent.futures.Future`` objects). Built on ``Reply.add_done_callback``:
each reply puts itself in a queue when done, and the waiting thread takes them in the
order they completed.

Inside an actor the replies are completed by the actor's own thread, when it reads its
rings, so that thread must not sleep on the queue: there it reads its rings itself
(``wait_reply`` on one pending reply, briefly), and takes what completed meanwhile.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import Any, TypeVar

from actorq._clock import Deadline
from actorq._core.reply import Reply
from actorq._errors import CallTimeout

T = TypeVar("T")
RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)
_SLICE = 0.05  # inside an actor: how long one turn of reading its rings may take


def _completions(replies: list[Reply[Any]], timeout: float | None) -> Iterator[Reply[Any]]:
    """Yield *replies* as they complete; stop silently when *timeout* passes."""
    done: queue.SimpleQueue[Reply[Any]] = queue.SimpleQueue()
    for reply in replies:
        reply.add_done_callback(done.put)  # at once for those already done
    deadline = Deadline.after(timeout) if timeout is not None else None
    in_actor = any(reply.waiter.may_deadlock for reply in replies)
    if not in_actor:
        for hub in {id(reply.waiter): reply.waiter for reply in replies}.values():
            hub.flush_dirty()  # calls still buffered go out now
    left = len(replies)
    while left:
        if in_actor:  # read our rings ourselves (see the module docstring)
            try:
                got = done.get_nowait()
            except queue.Empty:
                if deadline is not None and deadline.expired():
                    return
                first = next(r for r in replies if not r.done())
                wait = _SLICE if deadline is None else min(_SLICE, deadline.remaining())
                first.waiter.wait_reply(first, Deadline.after(wait))
                continue
        else:
            try:
                got = done.get(timeout=None if deadline is None else deadline.remaining())
            except queue.Empty:
                return
        left -= 1
        yield got


def _unique(replies: Iterable[Reply[T]]) -> list[Reply[T]]:
    unique = list(dict.fromkeys(replies))
    for reply in unique:
        if not isinstance(reply, Reply):
            msg = f"expected actorq.Reply objects, got {type(reply).__name__}: {reply!r}"
            raise TypeError(msg)
    return unique


def as_completed(replies: Iterable[Reply[T]],
                 timeout: float | None = None) -> Iterator[Reply[T]]:
    """Yield each of *replies* as soon as it is done (value or error), in that order.

    For synchronous code: ``for r in actorq.as_completed(replies): r.result()``. Replies
    already done come first. Without *timeout* it waits as long as it takes (a reply whose
    actor dies completes with its error); past *timeout* seconds it raises
    ``CallTimeout`` naming how many were still pending. In async code use
    ``asyncio.as_completed`` (replies are awaitable).
    """
    unique = _unique(replies)
    seen = 0
    for reply in _completions(unique, timeout):
        seen += 1
        yield reply
    if seen < len(unique):
        msg = f"{len(unique) - seen} of {len(unique)} replies not done within {timeout:g}s"
        raise CallTimeout(msg)


def wait(replies: Iterable[Reply[T]], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> tuple[set[Reply[T]], set[Reply[T]]]:
    """Wait for *replies*; return ``(done, not_done)`` as two sets, like
    ``concurrent.futures.wait``.

    *return_when*: ``"ALL_COMPLETED"`` (default), ``"FIRST_COMPLETED"`` or
    ``"FIRST_EXCEPTION"`` (the ``concurrent.futures`` constants work too). Past
    *timeout* seconds it returns what is done by then (no exception); without it, it
    waits as long as it takes. In async code use ``asyncio.wait``.
    """
    if return_when not in RETURN_WHEN:
        msg = f"return_when must be one of {RETURN_WHEN}, not {return_when!r}"
        raise ValueError(msg)
    unique = _unique(replies)
    done: set[Reply[T]] = set()
    for reply in _completions(unique, timeout):
        done.add(reply)
        if return_when == FIRST_COMPLETED or (
                return_when == FIRST_EXCEPTION and reply.outcome()[1] is not None):
            break
    return done, {r for r in unique if r not in done}
