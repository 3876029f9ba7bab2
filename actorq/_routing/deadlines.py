"""A pool's deadlines: the replies of calls with a ``timeout=``, failed when it passes.

A call with a deadline hands back the member's own reply (``calls.send_first``), and
the pool keeps it in one queue, in the order of the calls::

    _due: deque[(deadline, reply, method, timeout)]   oldest first
       ▲ append (each call, no lock)   popleft, under the pool's lock only: a call
                                       answered well at the head (and the done ones
                                       after it), as it is counted (calls.first_outcome);
                                       done replies at the head every PRUNE_EVERY-th
                                       call (answers out of turn); expired ones (sweep)

One timer per pool (``sweep`` on the routing scheduler), due at the head's deadline
(``_due_at``; a call with an earlier one sets an earlier timer), not one per call: a
call costs an append. The calls of one pool share its timeout,
so their deadlines come in order; a call whose own ``timeout=`` puts its deadline
before the queue's last one gets a timer of its own instead (``watch``).

When a deadline passes with the reply still pending, the reply fails with
``CallTimeout``; the member may still be running the call, and its answer is still
counted for it when it comes (``calls.first_outcome`` arms the reply for it,
``Reply.on_late_outcome``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from functools import partial
from typing import Any

from actorq._core.reply import Reply
from actorq._errors import CallTimeout
from actorq._routing.members import MemberSet
from actorq._routing.scheduler import SCHEDULER

Due = tuple[float, Reply[Any], str, float]  # (deadline, reply, method, timeout seconds)
# The answered calls at the head of the queue are dropped (their replies let go) every
# this many calls, not on each call (a pool call with a deadline costs an append): a few
# more done replies are held a little longer.
PRUNE_EVERY = 16


def watch(pool: MemberSet, entry: Due) -> None:
    """Fail *entry*'s reply at its deadline, unless it is done by then.

    Without the pool's lock in the common case (an append: ``deque.append`` is atomic,
    and only holders of the lock take entries out); the lock is taken every
    ``PRUNE_EVERY`` entries, to drop the answered calls at the head, and when no timer
    is set early enough (``pool._due_at``: the sweep sets it again under the lock, and
    looks at the queue once more after it, so an entry appended meanwhile is not left
    without a timer)."""
    deadline = entry[0]
    due = pool._due
    alone = False
    if due:
        try:
            alone = due[-1][0] > deadline  # out of order: a timer of its own
        except IndexError:  # emptied since (the sweep, or an answer: no lock here)
            pass
    if alone:
        SCHEDULER.call_later(deadline - time.monotonic(), partial(expire, pool, entry),
                             pool._timers)
        return
    due.append(entry)
    if pool._due_at <= deadline and len(due) % PRUNE_EVERY:
        return  # a timer is due at or before this deadline; not a pruning turn
    rearm(pool)


def rearm(pool: MemberSet) -> None:
    """Drop the done replies at the head of the queue, and set a timer for the head's
    deadline unless one is set for it or earlier (an entry was appended: ``watch``)."""
    due = pool._due
    with pool._lock:
        _prune(due)
        head = due[0][0] if due else math.inf
        arm = head < pool._due_at
        if arm:
            pool._due_at = head
    if arm:
        SCHEDULER.call_later(head - time.monotonic(), partial(sweep, pool, head),
                             pool._timers)


def _prune(due: deque[Due]) -> None:
    """Drop the done replies at the head of the queue (under the pool's lock)."""
    while due and due[0][1].done():
        due.popleft()


def sweep(pool: MemberSet, at: float) -> None:
    """The sweep set for *at* (scheduler thread): fail the replies whose deadline
    passed, and set the timer for the next one. A sweep that a call with an earlier
    deadline superseded (``pool._due_at`` moved) does nothing."""
    expired = []
    with pool._lock:
        if pool._due_at != at:
            return
        due = pool._due
        _prune(due)
        now = time.monotonic()
        while due and due[0][0] <= now:
            expired.append(due.popleft())
            _prune(due)
        pool._due_at = due[0][0] if due and not pool._stopped else math.inf
        if due and not pool._stopped:  # appended (without the lock) since the line above
            pool._due_at = due[0][0]
        if pool._due_at != math.inf:
            SCHEDULER.call_later(pool._due_at - now, partial(sweep, pool, pool._due_at),
                                 pool._timers)
    for entry in expired:
        expire(pool, entry)


def expire(pool: MemberSet, entry: Due) -> None:
    """Fail *entry*'s reply with ``CallTimeout`` now, if it is still pending (scheduler
    thread). Its first attempt's hook, if still armed, sees this very error
    (``pool._expiring``): the member's answer is still to come."""
    _deadline, reply, method, timeout = entry
    if reply.done():
        return
    err = CallTimeout(f"pool {pool.name!r}.{method}: no reply within {timeout:g}s")
    pool._expiring = err
    try:
        failed = reply.set_exception(err)
    finally:
        pool._expiring = None
    if failed:
        with pool._lock:
            pool._stats["deadline_timeouts"] += 1
            pool._stats["failed"] += 1
