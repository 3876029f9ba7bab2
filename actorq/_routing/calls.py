"""One pool call across its attempts: pick, send, and on failure retry or give up.

One pool call::

    pool.process(x) ─▶ _Call ─ attempt 1: pick a member (router, circuits) ─▶ ref.call
                         │                       ◀── its reply's done callback
                         ├─ success → the outer Reply gets the value
                         └─ failure → Retry.decide: give up (the outer Reply raises)
                                      or, after a backoff, attempt 2 (another member)

The outer ``Reply`` spans every attempt; a synchronous waiter on it helps the current
attempt's reply along exactly as it would a direct call's (``_Call.wait_reply``), so a
pool call costs what a ref call costs plus the routing. Callbacks never wait: a retry
is scheduled on the routing scheduler thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from types import MethodType
from typing import Any

from actorq import _native
from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.reply import Reply
from actorq._errors import ActorStopped, CallTimeout
from actorq._ids import next_token
from actorq._routing.deadlines import rearm, watch
from actorq._routing.members import EWMA_ALPHA, MemberSet, PoolMember
from actorq._routing.scheduler import SCHEDULER

# One clock for a call's deadline and for its member's latency (``sent``): a call with
# a deadline reads it once (``send_first``). On Linux ``perf_counter`` is this very clock.
_monotonic = time.monotonic


def call_token(pool: MemberSet, number: int) -> str:
    """A pool call's token, ``"<pool>/<pid>/<n>"``: *number* is the call's first
    attempt's own token (its reply's ``token``; the actor made the same string of it,
    ``Hub.call_deadline(token_prefix=)``), or a fresh one from the same counter for a
    call that had no first attempt sent (unique in the process either way)."""
    return f"{pool._token_prefix}{number}"


class _Call:
    """One pool call, across its attempts. Also the outer reply's waiter (``ReplyWaiter``)."""

    __slots__ = ("args", "attempt", "config", "deadline", "inner", "key", "kwargs", "member",
                 "method", "outer", "pool", "sent_at", "token")

    may_deadlock = False
    spins = False  # waits through its current attempt's waiter (wait_reply)

    def __init__(self, pool: MemberSet, method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any] | None, key: Any, deadline: float | None,
                 idem: Any = None, outer: Reply[Any] | None = None) -> None:
        self.pool = pool
        self.config: SystemConfig = pool._config
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.key = key
        self.deadline = deadline
        # the same for every attempt of this call; it travels with each (context.token)
        self.token = idem if idem is not None else call_token(pool, next_token())
        self.attempt = 0
        self.inner: Reply[Any] | None = None
        self.member: PoolMember | None = None
        self.sent_at = 0.0
        # the reply its caller holds: a new one, or the first attempt's own (first_outcome)
        self.outer: Reply[Any] = outer if outer is not None else Reply(self, pool, 0, method)

    # -- ReplyWaiter: a sync waiter on the outer reply helps the current attempt -------------

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        outer = self.outer  # kept: self.outer is let go once the call is over
        while True:
            inner = self.inner
            if inner is not None and not inner.done():
                inner.waiter.wait_reply(inner, deadline)  # drains the rings, as a ref call
            elif not outer.done():  # between attempts (a backoff): a retry sets a new inner
                outer.sleep_until_done(min(deadline.remaining(), 0.005))
            if outer.done() or deadline.expired():
                return

    def timeout_hint(self, reply: Reply[Any]) -> str:
        member = self.member
        where = f" (attempt {self.attempt}, on {member.ref.name!r})" if member else ""
        return where

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        inner = self.inner
        return inner is not None and inner.waiter.waiting_would_deadlock(inner)

    def flush_dirty(self, *, wait: bool = True) -> bool:
        inner = self.inner
        return inner.waiter.flush_dirty(wait=wait) if inner is not None else True

    # -- attempts ------------------------------------------------------------------------------

    def start(self) -> None:
        """The first attempt, on the caller's thread: bad input raises here."""
        self.attempt = 1
        pool = self.pool
        member = pool._pick(self.key, None)
        if member is None:
            pool._stats_inc("circuit_open_rejections")
            self._fail(pool._circuit_open_error(self.method))
            return
        self.member = member  # _send, inlined: the first attempt is the hot path
        self.sent_at = _monotonic()
        try:
            inner = member.ref.call_with(self.method, self.args, self.kwargs,
                                         deadline=self.deadline, token=self.token)
        except (TypeError, AttributeError):
            pool._release(member)
            raise  # bad input: nothing was sent
        except Exception as exc:
            self._attempt_failed(member, exc)
            return
        self.inner = inner
        inner.add_done_callback(self._on_done)

    def retry(self, last: BaseException | None = None) -> None:
        """A later attempt (scheduler thread): another member when there is one. *last*:
        the previous attempt's error (the cause of a ``CircuitOpen``)."""
        if self.outer.done():
            return
        self.attempt += 1
        pool = self.pool
        if pool._stopped:
            self._fail(ActorStopped(f"pool {pool.name!r} was stopped"))
            return
        member = pool._pick(self.key, self.member)
        if member is None:
            pool._stats_inc("circuit_open_rejections")
            self._fail(pool._circuit_open_error(self.method, last))
            return
        try:
            self._send(member)
        except Exception as exc:
            self._attempt_failed(member, exc)

    def _send(self, member: PoolMember) -> None:
        self.member = member
        self.sent_at = _monotonic()
        inner = member.ref.call_with(self.method, self.args, self.kwargs,
                                     deadline=self.deadline, token=self.token)
        self.inner = inner
        inner.add_done_callback(self._on_done)

    def _on_done(self, inner: Reply[Any]) -> None:
        """An attempt ended (hub loop thread, or a waiter's): finish, or schedule a retry."""
        member = self.member
        current = self.inner
        if member is None or (current is not None and inner is not current):
            return  # pragma: no cover - defensive (None: the call ended, e.g. its deadline)
        value, exc = inner.outcome()
        pool = self.pool
        if exc is None:  # the common case
            succeeded(pool, member, self.sent_at)
            self.outer.set_result(value)
            self.args = self.kwargs = None  # type: ignore[assignment]  # see _forget
            self.inner = None
            self.outer = _FINISHED
            return
        self._attempt_failed(member, exc, _monotonic() - self.sent_at)

    def _attempt_failed(self, member: PoolMember, exc: BaseException,
                        elapsed: float | None = None) -> None:
        pool = self.pool
        pool._finished(member, exc, elapsed)
        if isinstance(exc, CallTimeout) and exc.reason == "expired":
            pool._stats_inc("expired_drops")
        if self.outer.done():
            return
        retry = pool.retry
        delay: float | None = None
        if isinstance(exc, ActorStopped) and not pool._stopped and self.attempt < 1000 and (
                member.retired or member.lost or member not in pool._members
                or pool._member_lost(member)):
            delay = 0.0  # its member was resized away or lost: not the call's fault
        elif retry is not None:
            pool._budget_sync()  # the calls made since it was last told count now
            refused = pool._budget.refused if pool._budget is not None else 0
            delay = retry.decide(exc, self.attempt, now=time.monotonic(),
                                 deadline=self.deadline, expected=member.ewma,
                                 budget=pool._budget)
            if pool._budget is not None and pool._budget.refused > refused:
                pool._stats_inc("budget_refusals")
        if delay is None:
            if self._fail(exc):
                pool._stats_inc("failed")
            return
        pool._stats_inc("retries")
        SCHEDULER.call_later(delay, partial(self.retry, exc), pool._timers,
                             run_if_cancelled=True)

    def _succeed(self, value: Any) -> bool:
        done = self.outer.set_result(value)
        self._forget()
        return done

    def _fail(self, exc: BaseException) -> bool:
        done = self.outer.set_exception(exc)
        self._forget()
        return done

    def _forget(self) -> None:
        """The call is over: drop the user's objects and the outer reply now (the outer
        reply and its call refer to each other, and a cycle waits for the collector)."""
        self.args = self.kwargs = None  # type: ignore[assignment]
        self.inner = None
        self.outer = _FINISHED

    def expire(self) -> None:
        """The call's deadline passed (scheduler thread)."""
        if self.outer.done():
            return
        waited = f"{self.pool.timeout or 0:g}s" if self.pool.timeout else "its timeout"
        err = CallTimeout(f"pool {self.pool.name!r}.{self.method}: no reply within {waited} "
                          f"(attempt {self.attempt})")
        if self._fail(err):
            self.pool._stats_inc("deadline_timeouts")
            self.pool._stats_inc("failed")


# A first attempt's context: what its reply's hook (``first_outcome``) reads. The hook
# is ``first_outcome`` bound to this tuple as a method (``MethodType``): made and called
# for 0.9k instructions less than a ``functools.partial`` of eight arguments (which
# makes a dict and a tuple each time, and calls through a heap-allocated argument
# array past five; benchmarks/callgrind_pool_call.py).
#   (pool, member, method, args, kwargs, key, deadline or None, sent)
First = tuple[MemberSet, PoolMember, str, tuple[Any, ...], dict[str, Any] | None, Any,
              float | None, float]


def first_outcome(ctx: First, reply: Reply[Any], value: Any, exc: BaseException | None
                  ) -> bool:
    """The first attempt's outcome (its reply's ``on_outcome`` hook, bound to its context
    *ctx* in ``send_first`` and ``PoolCore._bare_call``), before its caller sees it. A
    success is counted and published:
    the caller holds the member's own reply, and no ``_Call`` was made. A failure makes
    the ``_Call`` now, which takes the reply over (True): a retry completes it later, or
    giving up completes it at once with the error. Its token is the one the first
    attempt carried (made of the reply's ``token``: ``call_token``). The call's deadline
    failing it (``deadlines.expire``) is published, and the member's answer counted when
    it comes."""
    pool, member, method, args, kwargs, key, deadline, sent = ctx
    elapsed = _monotonic() - sent
    if exc is None:  # counted here for every success (``succeeded``): a frame less
        lock = pool._lock
        lock.acquire()  # not ``with``, which makes two bound methods and an argument
        # tuple each time: 0.5k instructions of a pool call (callgrind_pool_call.py)
        try:
            member.in_flight -= 1
            ewma = member.ewma
            member.ewma = elapsed if ewma == 0.0 else ewma + EWMA_ALPHA * (elapsed - ewma)
            pool._succeeded += 1
            if deadline is not None:  # out of the deadline queue, if at its head (in turn)
                due = pool._due
                if due and due[0][1] is reply:
                    due.popleft()
                    while due and due[0][1].done():  # answered before it: out too
                        due.popleft()
        finally:
            lock.release()
        breaker = member.breaker
        if breaker is not None and not breaker.settled:  # else nothing to record
            breaker.record_success()
            pool._circuits_changed()
        return False
    if exc is pool._expiring:  # not the member's answer: that one is still to come
        reply.on_late_outcome(partial(late_outcome, pool, member, sent))
        return False
    call = _Call(pool, method, args, kwargs, key, deadline, call_token(pool, reply.token),
                 reply)
    call.attempt = 1
    call.member = member
    call._attempt_failed(member, exc, elapsed)
    return True


def succeeded(pool: MemberSet, member: PoolMember, sent: float) -> None:
    """Count an attempt that *member* answered well, sent at *sent* (``time.monotonic``):
    in flight no more, its latency folded into its EWMA, its circuit told."""
    first_outcome((pool, member, "", (), None, None, None, sent), _FINISHED, None, None)


def bare_outcome(pool: MemberSet, member: PoolMember, sent: float,
                 then: Callable[[Any, BaseException | None], object] | None,
                 reply: Reply[Any], value: Any, exc: BaseException | None) -> bool:
    """The outcome of a call that is not retried (``Pool.call_member``: its reply's
    ``on_outcome`` hook, bound by ``partial``), counted before its caller sees it;
    always published. *then(value, exc)*, if given, is told the outcome next (the
    caller's own hook: no done-callback on the reply, no reading it back)."""
    if exc is None:
        succeeded(pool, member, sent)
    else:
        pool._bare_failed(member, exc, _monotonic() - sent)
    if then is not None:
        then(value, exc)
    return False


def late_outcome(pool: MemberSet, member: PoolMember, sent: float, reply: Reply[Any],
                 value: Any, exc: BaseException | None) -> None:
    """A member's answer to a call its deadline failed already: counted for the member
    (latency, failures, circuit), as a retry's would be; the caller has had its error."""
    if exc is None:
        succeeded(pool, member, sent)
        return
    pool._finished(member, exc, _monotonic() - sent)
    if isinstance(exc, CallTimeout) and exc.reason == "expired":
        pool._stats_inc("expired_drops")


def pick_first(pool: MemberSet, key: Any) -> PoolMember | None:
    """A call's first attempt: the call counted, and the member its router chooses,
    counted in flight, or None if some circuit is not closed (``pool._pick`` then) or
    there is no member. ``pool._pick(key, None, first=True)``, written out for every
    circuit closed (one lock, no list made): the hot path of each call. (A pool's
    ``_pick_first``: this, or the same in C, actorq/_native/_pool.c.)"""
    member: PoolMember | None = None
    lock = pool._lock
    lock.acquire()  # not ``with``: see first_outcome
    try:
        calls = pool._calls = pool._calls + 1
        candidates = pool._candidates
        if pool._closed and candidates:
            member = pool._router.choose(candidates, key)
            member.in_flight += 1
            member.calls += 1
    finally:
        lock.release()
    if not calls & 15:
        pool._budget_sync()  # the retry budget is told of calls 16 at a time
    return member


def send_first(pool: MemberSet, method: str, args: tuple[Any, ...],
               kwargs: dict[str, Any] | None = None, key: Any = None,
               timeout: float | None = None) -> Reply[Any]:
    """A call of a pool with a retry, a circuit or a deadline (*timeout* seconds from
    now; None: the pool's): the first attempt goes out as a plain call whose reply is
    the caller's (its deadline and its token's prefix travel with it); the retry
    machinery is made only if it fails (``first_outcome``), and the deadline is watched
    by the pool's queue (``deadlines.watch``). Also the route of such a pool
    (``pool.method(x)`` calls it straight)."""
    if timeout is None:
        timeout = pool.timeout
    sent = _monotonic()  # (a little early: the routing below is in the member's latency)
    deadline = None if timeout is None else sent + timeout
    member = pool._pick_first(pool, key)  # ``pick_first``, or the same in C
    if member is None:
        member = pool._pick(key, None)  # some circuit is not closed: ask each
        if member is None:  # every circuit open: a reply that fails with CircuitOpen
            call = _Call(pool, method, args, kwargs, key, deadline)
            outer = call.outer  # let go by the call once it fails
            pool._stats_inc("circuit_open_rejections")
            call._fail(pool._circuit_open_error(method))
            return outer
    try:  # ``ref.call_with``, its method checked by the pool already
        hub = member.hub or member.attach()
        hook = (MethodType(first_outcome,
                           (pool, member, method, args, kwargs, key, deadline, sent))
                if pool._make_hook is None  # else the same hook in C (_native/_pool.c)
                else pool._make_hook(pool, member, method, args, kwargs, key, deadline, sent))
        send = _native.hub_call_deadline  # hub.call_deadline, in C for plain data
        reply: Reply[Any]
        if send is not None:
            reply = send(hub, member.ref, method, args, kwargs, deadline, None, hook,
                         pool._token_prefix)
        else:
            reply = hub.call_deadline(member.ref, method, args, kwargs, deadline, None, hook,
                                      pool._token_prefix)
    except (TypeError, AttributeError):
        pool._release(member)
        raise  # bad input: nothing was sent
    except Exception as exc:  # not sent (the member is gone): retried by policy
        return first_not_sent(pool, member, method, args, kwargs, key, deadline, timeout, exc)
    if deadline is not None and timeout is not None:  # (answered already, rarely: the
        due = pool._due                                   # queue drops it in turn)
        if due:  # others in the queue: is this one in order? (watch)
            watch(pool, (deadline, reply, method, timeout))
        else:  # watch's common case, written out (a frame less): the first in the queue
            due.append((deadline, reply, method, timeout))
            if pool._due_at > deadline:  # read after the append (see watch)
                rearm(pool)
    return reply


def first_not_sent(pool: MemberSet, member: PoolMember, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any] | None, key: Any, deadline: float | None,
                   timeout: float | None, exc: Exception) -> Reply[Any]:
    """A first attempt that *member* could not be sent (*exc*: it is gone): a ``_Call``
    now, retried by policy, its reply watched for its deadline (``send_first``'s, and
    the C one's, actorq/_native/_pool.c)."""
    call = _Call(pool, method, args, kwargs, key, deadline)
    call.attempt = 1
    call.member = member
    reply = call.outer
    call._attempt_failed(member, exc)
    if not reply.done() and deadline is not None and timeout is not None:
        watch(pool, (deadline, reply, method, timeout))
    return reply


_FINISHED: Reply[Any] = Reply.pending("a finished pool call")
_FINISHED.set_result(None)
