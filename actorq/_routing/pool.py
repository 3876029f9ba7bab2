"""Pool: a group of supervised actors called like one ref, routed per call.

A pool lives in the process that created it (the user's, or an actor's). Its members
are ordinary actors under a supervisor of their own; the pool calls them directly over
their own channels, so a pool call is a ref call plus a routing decision and a little
bookkeeping (no dispatcher process, no extra hop).

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

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.actor import handler_names, set_pool_factory
from actorq._core.events import ActorEvent, EventKind
from actorq._core.reply import Reply
from actorq._errors import ActorCrashed, ActorStopped, CallTimeout, CircuitOpen
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry, RetryBudget
from actorq._routing.routers import ROUTINGS, Router, key_point, make_router
from actorq._routing.scheduler import SCHEDULER
from actorq._supervision.policy import ActorOptions

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

logger = logging.getLogger("actorq")

A = TypeVar("A")
T = TypeVar("T")
EWMA_ALPHA = 0.2
AUTOSCALE_TICK = 0.1  # seconds between looks at the load of a (min, max) pool
SCALE_TARGET = 1e9  # seconds: the adaptive window of an autoscaling pool's members never shrinks
SCALE_WINDOW = 8  # default credit window of an autoscaling pool's members
REPLACE_QUIET = 60.0  # seconds without a lost member after which replacing starts afresh
_pool_ids = itertools.count(1)
_call_tokens = itertools.count(1)

# Reserved keywords of a pool call (not passed to the handler; see ``Pool.call``).
RESERVED = ("key", "timeout", "idempotency_key")


class PoolHost(Protocol):
    """Where a pool's members come from: the system, or an actor's context."""

    config: SystemConfig

    def spawn_member(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str) -> ActorRef[Any]:
        """Start one member (supervised, restarted after a crash); return its ref."""
        ...

    def stop_member(self, ref: ActorRef[Any]) -> None:
        """Stop one member for good (blocks until it is gone)."""
        ...

    def close(self) -> None:
        """Stop every member and the supervisor (blocks until they are gone)."""
        ...

    def running(self) -> bool:
        """False once the host (its supervisor, its system) is stopped: no more spawns."""
        ...

    def watch(self, on_lost: Callable[[int], None]) -> None:
        """Call ``on_lost(actor_id)`` when a member is gone for good (its supervisor gave
        up on it); from any thread, quickly. A host that cannot tell does nothing: the
        pool then learns it from the member's next call (``ActorStopped``)."""
        ...


def default_replace_backoff() -> Backoff:
    """Delays before replacing lost members: the n-th loss in a row waits up to
    ``min(30, 0.1 * 2**n)`` seconds (full jitter), so a member that always crashes at
    start costs a few spawns a minute, not a spin."""
    return Backoff(initial=0.1, maximum=30.0)


@dataclass(frozen=True)
class MemberStatistics:
    """One member's figures: calls sent, successes, failures by kind, circuit."""

    name: str
    actor_id: int
    calls: int
    ok: int
    failures: dict[str, int]
    in_flight: int
    latency_ewma: float
    circuit: str
    circuit_transitions: dict[str, int]


@dataclass(frozen=True)
class PoolStatistics:
    """A pool's figures (``pool.statistics()``, and ``system.metrics()["pools"]``)."""

    name: str
    size: int
    routing: str
    calls: int
    succeeded: int
    failed: int
    retries: int
    budget_refusals: int
    circuit_open_rejections: int
    expired_drops: int
    deadline_timeouts: int
    idempotent_joins: int
    idempotent_hits: int
    grown: int
    shrunk: int
    lost: int
    replaced: int
    replacing: int
    members: list[MemberStatistics] = field(default_factory=list)


class _Member:
    """A pool member: its ref, circuit and the pool's own figures for it."""

    __slots__ = ("bound", "breaker", "calls", "ewma", "failures", "id", "in_flight", "lost",
                 "ok", "ref", "retired", "seen_waits", "slot")

    def __init__(self, ref: ActorRef[Any], slot: int, breaker: CircuitBreaker | None) -> None:
        self.ref = ref
        self.bound: dict[str, Any] = {}  # method -> ref.method
        self.id = ref.actor_id
        self.slot = slot
        self.breaker = breaker
        self.in_flight = 0
        self.ewma = 0.0
        self.calls = 0
        self.ok = 0
        self.failures: dict[str, int] = {}
        self.retired = False  # resized away
        self.lost = False  # its supervisor gave up on it: out of the routing, being replaced
        self.seen_waits = 0  # credit waits + backpressure on its channel at the last look

    def stats(self) -> MemberStatistics:
        b = self.breaker
        return MemberStatistics(self.ref.name, self.id, self.calls, self.ok,
                                dict(self.failures), self.in_flight, self.ewma,
                                b.state if b is not None else "closed",
                                dict(b.transitions) if b is not None else {})


def failure_kind(exc: BaseException) -> str:
    """``"crash:signal"``, ``"timeout"``, ``"stopped"``, or the exception's type name."""
    if isinstance(exc, ActorCrashed):
        return f"crash:{exc.cause}"
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, ActorStopped):
        return "stopped"
    return type(exc).__name__


class _Call:
    """One pool call, across its attempts. Also the outer reply's waiter (``ReplyWaiter``)."""

    __slots__ = ("args", "attempt", "config", "deadline", "inner", "key", "kwargs", "member",
                 "method", "outer", "pool", "sent_at", "token")

    may_deadlock = False

    def __init__(self, pool: Pool[Any], method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], key: Any, deadline: float | None,
                 idem: Any = None) -> None:
        self.pool = pool
        self.config: SystemConfig = pool._config
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.key = key
        self.deadline = deadline
        # the same for every attempt of this call; it travels with each (context.token)
        self.token = idem if idem is not None else f"{pool._token_prefix}{next(_call_tokens)}"
        self.attempt = 0
        self.inner: Reply[Any] | None = None
        self.member: _Member | None = None
        self.sent_at = 0.0
        self.outer: Reply[Any] = Reply(self, pool, 0, method)  # described lazily

    # -- ReplyWaiter: a sync waiter on the outer reply helps the current attempt -------------

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        outer = self.outer
        while not outer.done() and not deadline.expired():
            inner = self.inner
            if inner is not None and not inner.done():
                inner.waiter.wait_reply(inner, deadline)  # drains the rings, as a ref call
            else:  # between attempts (a backoff): the retry will set a new inner
                outer.sleep_until_done(min(deadline.remaining(), 0.005))

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
        try:
            self._send(member)
        except (TypeError, AttributeError):
            pool._release(member)
            raise  # bad input: nothing was sent
        except Exception as exc:
            self._attempt_failed(member, exc)

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

    def _send(self, member: _Member) -> None:
        self.member = member
        self.sent_at = time.perf_counter()
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
        elapsed = time.perf_counter() - self.sent_at
        pool = self.pool
        if exc is None:  # the common case, inlined: one lock, the circuit's fast path
            with pool._lock:
                member.in_flight -= 1
                ewma = member.ewma
                member.ewma = elapsed if ewma == 0.0 else ewma + EWMA_ALPHA * (elapsed - ewma)
                member.ok += 1
                pool._stats["succeeded"] += 1
            breaker = member.breaker
            if breaker is not None and (breaker._state != "closed" or breaker._failures):
                breaker.record_success()
            self.outer.set_result(value)
            self.args = self.kwargs = None  # type: ignore[assignment]  # see _forget
            self.inner = None
            self.outer = _FINISHED
            return
        self._attempt_failed(member, exc, elapsed)

    def _attempt_failed(self, member: _Member, exc: BaseException,
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
        SCHEDULER.call_later(delay, lambda: self.retry(exc), pool._timers,
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


_POOL_ATTRS = frozenset({"name", "cls", "cls_name", "handlers", "routing", "circuit", "retry",
                         "timeout", "min_size", "max_size", "idle_timeout", "size"})
_FINISHED: Reply[Any] = Reply.pending("a finished pool call")
_FINISHED.set_result(None)


class _Bound:
    """``pool.method``: calls *method* through the pool."""

    __slots__ = ("method", "pool")

    def __init__(self, pool: Pool[Any], method: str) -> None:
        self.pool = pool
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Reply[Any]:
        if kwargs:
            key = kwargs.pop("key", None)
            timeout = kwargs.pop("timeout", None)
            idem = kwargs.pop("idempotency_key", None)
            return self.pool._submit(self.method, args, kwargs, key, timeout, idem)
        return self.pool._submit(self.method, args, kwargs, None, None, None)


class Pool(Generic[A]):
    """A group of actors of one class, called like one ref; create with ``system.pool``.

    ``pool.method(*args, **kwargs)`` and ``pool.call("method", ...)`` return a ``Reply``;
    ``tell``/``ask`` go to ``receive``. Three keywords of a pool call are the pool's, not
    the handler's: ``key=`` (routing ``"hash"``), ``timeout=`` (this call's deadline, all
    attempts included) and ``idempotency_key=`` (see ``docs/concepts.md``). Pass a
    handler keyword with one of those names through ``call_with(method, args, kwargs)``.
    """

    def __init__(self, host: PoolHost, cls: type, args: tuple[Any, ...],
                 kwargs: dict[str, Any], *, size: int | tuple[int, int] | None,
                 routing: str, circuit: CircuitBreaker | None, retry: Retry | None,
                 timeout: float | None, name: str | None = None, idle_timeout: float = 5.0,
                 oversubscribe: bool = False, idempotency_ttl: float = 300.0,
                 idempotency_size: int = 10_000, replace_backoff: Backoff | None = None) -> None:
        validate_options(size, routing, circuit, retry, timeout, idle_timeout, oversubscribe)
        if replace_backoff is not None and not isinstance(replace_backoff, Backoff):
            msg = f"replace_backoff must be an actorq.Backoff or None, not {replace_backoff!r}"
            raise TypeError(msg)
        lo, hi = parse_size(size, oversubscribe)
        self.name = name or f"pool-{cls.__name__}-{next(_pool_ids)}"
        self.cls = cls
        self.cls_name = cls.__name__
        self.handlers = handler_names(cls)
        self.routing = routing
        self.circuit = circuit
        self.retry = retry
        self.timeout = timeout
        self.min_size, self.max_size = lo, hi
        self.idle_timeout = idle_timeout
        self._host = host
        self._config = host.config
        self._bare = retry is None and circuit is None  # see _bare_call
        self._args, self._kwargs = args, kwargs
        self._router: Router = make_router(routing)
        self._token_prefix = f"{self.name}/{os.getpid()}/"
        self._timers = object()  # owns its entries on the routing scheduler (cancel)
        self._budget: RetryBudget | None = (retry.budget.fresh() if retry is not None
                                            and retry.budget is not None else None)
        self._lock = threading.Lock()
        self._members: list[_Member] = []
        self._candidates: list[_Member] = []  # members that are not retired
        self._stopped = False
        self._owner = True
        self._stats: dict[str, int] = dict.fromkeys(
            ("calls", "succeeded", "failed", "retries", "budget_refusals",
             "circuit_open_rejections", "expired_drops", "deadline_timeouts",
             "idempotent_joins", "idempotent_hits", "grown", "shrunk", "lost", "replaced"), 0)
        self._retired_stats: list[MemberStatistics] = []
        self._idem_ttl = idempotency_ttl
        self._idem_size = idempotency_size
        self._idem_running: dict[Any, Reply[Any]] = {}
        self._idem_done: OrderedDict[Any, tuple[float, Reply[Any]]] = OrderedDict()
        self._busy_ticks = 0
        self._idle_since = time.monotonic()
        self._resize_lock = threading.Lock()
        self._replace_backoff = replace_backoff or default_replace_backoff()
        self._lost_streak = 0  # members lost in a row (no REPLACE_QUIET gap between them)
        self._lost_at = 0.0
        try:
            self._grow(lo)
        except BaseException:
            self._host.close()
            raise
        self._host.watch(_on_lost_weakly(self))
        if hi > lo:
            _tick_later(self)

    # -- the ref-like surface -----------------------------------------------------------------

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        self._check_method(method)
        bound = _Bound(self, method)
        if method not in _POOL_ATTRS:
            self.__dict__[method] = bound  # next time found without __getattr__
        return bound

    def _check_method(self, method: str) -> None:
        if method not in self.handlers and method != "receive":
            known = ", ".join(sorted(self.handlers)) or "none"
            msg = f"pool {self.name!r} ({self.cls_name}) has no handler {method!r} (its " \
                  f"public methods: {known})"
            raise AttributeError(msg)

    def call(self, method: str, *args: Any, key: Any = None, timeout: float | None = None,
             idempotency_key: Any = None, **kwargs: Any) -> Reply[Any]:
        """Call *method* on one member (routed); return a ``Reply`` spanning every attempt.

        Raises before anything is sent: ``AttributeError`` for an unknown method,
        ``TypeError`` for arguments or a key that cannot be pickled/hashed, ``ValueError``
        for a negative timeout or a ``hash`` pool called without ``key``,
        ``ActorStopped`` for a stopped pool. The reply raises ``CircuitOpen`` when every
        member's circuit is open, ``CallTimeout`` past the deadline, and the last
        attempt's error when the retry policy gives up.
        """
        self._check_method(method)
        return self._submit(method, args, kwargs, key, timeout, idempotency_key)

    def call_with(self, method: str, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, *, key: Any = None,
                  timeout: float | None = None, idempotency_key: Any = None) -> Reply[Any]:
        """Like ``call``, with the handler's arguments given as a tuple and a dict."""
        self._check_method(method)
        return self._submit(method, tuple(args), dict(kwargs or {}), key, timeout,
                            idempotency_key)

    def ask(self, message: Any, *, key: Any = None, timeout: float | None = None) -> Reply[Any]:
        """Send *message* to one member's ``receive``; return a ``Reply`` with its answer."""
        return self._submit("receive", (message,), {}, key, timeout, None)

    def tell(self, message: Any, *, key: Any = None) -> None:
        """Send *message* to one member's ``receive``; no reply, no retry (fire and forget)."""
        self._check_open()
        if self._router.needs_key:
            self._check_key(key)
        member = self._pick(key, None)
        if member is None:
            msg = "receive"
            raise self._circuit_open_error(msg)
        try:
            member.ref.tell(message)
        finally:
            self._release(member)

    def members(self) -> list[ActorRef[Any]]:
        """The members' refs, in slot order."""
        with self._lock:
            return [m.ref for m in self._members]

    def call_member(self, ref: ActorRef[Any], method: str, *args: Any) -> Reply[Any]:
        """Call *method* on the member *ref* itself: the caller routes (a scheduler of its
        own, such as the job graph's). Counted like a routed call (in flight, latency,
        failures in ``statistics()``); no retry, circuit or deadline. ``ValueError`` if
        *ref* is not a member (any more), ``ActorStopped`` if the pool is stopped."""
        self._check_open()
        with self._lock:
            for member in self._candidates:
                if member.id == ref.actor_id:
                    break
            else:
                msg = f"{ref!r} is not a member of pool {self.name!r}"
                raise ValueError(msg)
            member.in_flight += 1
            member.calls += 1
            self._stats["calls"] += 1
        try:
            inner: Reply[Any] = member.ref.call(method, *args)
        except BaseException:
            self._uncount(member)
            raise
        sent = time.perf_counter()
        inner.add_done_callback(lambda r: self._bare_done(member, sent, r))
        return inner

    def circuits(self) -> dict[str, str]:
        """Each member's circuit state (by member name): closed, open or half_open."""
        with self._lock:
            return {m.ref.name: (m.breaker.state if m.breaker is not None else "closed")
                    for m in self._members}

    @property
    def size(self) -> int:
        """How many members the pool has now."""
        return len(self._members)

    def resize(self, n: int) -> None:
        """Grow or shrink to *n* members now (members leaving finish their current call;
        calls still queued for them are retried on the others). A ``(min, max)`` pool
        keeps scaling within its bounds afterwards."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            msg = f"a pool's size must be an int >= 1, not {n!r}"
            raise ValueError(msg)
        self._check_owner("resize")
        self._check_open()
        with self._resize_lock:
            have = len(self._members)
            if n > have:
                self._grow(n - have)
            elif n < have:
                self._shrink(have - n)

    def stop(self) -> None:
        """Stop every member for good; later calls raise ``ActorStopped``. Its timers
        (autoscaling, replacements, deadlines) go; a retry waiting for its backoff fails
        with ``ActorStopped`` now."""
        if self._stopped:
            return
        self.halt()
        if self._owner:
            self._host.close()

    def halt(self) -> None:
        """Stop routing (its system is closing, or ``stop``): later calls raise
        ``ActorStopped``, its entries leave the routing scheduler (retries waiting for
        their backoff fail now), and the autoscaler ends. The members are not touched."""
        self._stopped = True
        SCHEDULER.cancel(self._timers)

    def statistics(self) -> PoolStatistics:
        """The pool's figures now (a frozen snapshot)."""
        with self._lock:
            members = [m.stats() for m in self._members] + list(self._retired_stats)
            replacing = sum(1 for m in self._members if m.lost)
            return PoolStatistics(name=self.name, size=len(self._members),
                                  routing=self.routing, members=members,
                                  replacing=replacing, **self._stats)

    def __enter__(self) -> Pool[A]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"size={len(self._members)}"
        return f"<Pool {self.name!r} {self.cls_name} {self.routing} {state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        with self._lock:
            refs = [m.ref for m in self._members]
        return (_rebuild_pool, (self.name, self.cls_name, self.handlers, refs, self.routing,
                                self.circuit, self.retry, self.timeout))

    # -- calls ---------------------------------------------------------------------------------

    def _describe(self, method: str | None = None) -> str:
        """``"pool 'name'.method"``, for error messages (the outer replies' ``describe``)."""
        return f"pool {self.name!r}.{method}" if method else f"pool {self.name!r}"

    def _check_open(self) -> None:
        if self._stopped:
            msg = f"pool {self.name!r} is stopped"
            raise ActorStopped(msg)

    def _check_owner(self, what: str) -> None:
        if not self._owner:
            msg = (f"{what}() is for the process that created pool {self.name!r}; this is "
                   "a copy that was sent to another process (it can call the members)")
            raise RuntimeError(msg)

    def _check_key(self, key: Any) -> None:
        if key is None:
            msg = f"pool {self.name!r} routes by hash: pass key= with each call"
            raise ValueError(msg)
        key_point(key)  # TypeError for a key that cannot be hashed

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: Any,
                timeout: float | None, idem: Any) -> Reply[Any]:
        if self._stopped:
            self._check_open()
        if self._router.needs_key:
            self._check_key(key)
        if timeout is None:
            timeout = self.timeout
            deadline = None if timeout is None else time.monotonic() + timeout
        else:
            check_timeout(timeout, "timeout")
            deadline = time.monotonic() + timeout
        if idem is not None:
            joined = self._idem_lookup(idem)
            if joined is not None:
                return joined
        elif deadline is None and self._bare:
            return self._bare_call(method, args, kwargs, key)
        call = _Call(self, method, args, kwargs, key, deadline, idem)
        self._stats["calls"] += 1
        if self._budget is not None:
            self._budget.record_call()
        if idem is not None:
            self._idem_register(idem, call.outer)
        outer = call.outer
        try:
            call.start()
        except BaseException:
            if idem is not None:
                self._idem_running.pop(idem, None)
            raise
        if deadline is not None and not outer.done():
            SCHEDULER.call_later(deadline - time.monotonic(), call.expire, self._timers)
        return outer

    def _bare_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                   key: Any) -> Reply[Any]:
        """A pool without retry, circuit or deadline: the member's own reply is the
        call's reply; only the routing and the bookkeeping are added."""
        with self._lock:
            candidates = self._candidates
            if not candidates:
                raise self._circuit_open_error(method)
            member: _Member = self._router.choose(candidates, key)
            member.in_flight += 1
            member.calls += 1
            self._stats["calls"] += 1
        try:
            bound = member.bound.get(method)
            if bound is None:  # ref.method, cached: the ref's own fast path
                bound = member.bound[method] = getattr(member.ref, method)
            inner: Reply[Any] = bound(*args, **kwargs)
        except BaseException:
            self._uncount(member)
            raise
        sent = time.perf_counter()
        inner.add_done_callback(lambda r: self._bare_done(member, sent, r))
        return inner

    def _uncount(self, member: _Member) -> None:
        """Take back the counts of a bare call that could not be sent."""
        with self._lock:
            member.in_flight -= 1
            member.calls -= 1
            self._stats["calls"] -= 1

    def _bare_done(self, member: _Member, sent: float, inner: Reply[Any]) -> None:
        elapsed = time.perf_counter() - sent
        exc = inner.outcome()[1]
        if exc is None:
            with self._lock:
                member.in_flight -= 1
                ewma = member.ewma
                member.ewma = elapsed if ewma == 0.0 else ewma + EWMA_ALPHA * (elapsed - ewma)
                member.ok += 1
                self._stats["succeeded"] += 1
            return
        self._finished(member, exc, elapsed)
        if isinstance(exc, CallTimeout) and exc.reason == "expired":
            self._stats_inc("expired_drops")
        elif isinstance(exc, ActorStopped) and not member.retired:
            self._member_lost(member)
        self._stats_inc("failed")

    def _pick(self, key: Any, avoid: _Member | None) -> _Member | None:
        """Choose a member whose circuit lets the call through; count it in flight."""
        with self._lock:
            candidates = self._candidates
            if self.circuit is not None and not all_closed(candidates):
                candidates = [m for m in candidates
                              if m.breaker is not None and m.breaker.available()]
            if avoid is not None and len(candidates) > 1 and not self._router.needs_key:
                candidates = [m for m in candidates if m is not avoid] or candidates
            if not candidates:
                return None
            member: _Member = self._router.choose(candidates, key)
            breaker = member.breaker
            if breaker is not None and breaker._state != "closed" and not breaker.allow():
                return None  # pragma: no cover - raced for the last half-open probe
            member.in_flight += 1
            member.calls += 1
            return member

    def _release(self, member: _Member) -> None:
        """A member was picked but nothing came of it (bad input, or a tell): undo."""
        with self._lock:
            member.in_flight -= 1
            member.calls -= 1
        if member.breaker is not None:
            member.breaker.cancel()  # a half-open probe slot it took is given back

    def _finished(self, member: _Member, exc: BaseException | None,
                  elapsed: float | None) -> None:
        with self._lock:
            member.in_flight -= 1
            if elapsed is not None and (exc is None or not isinstance(exc, ActorStopped)):
                member.ewma = elapsed if member.ewma == 0.0 else (
                    member.ewma + EWMA_ALPHA * (elapsed - member.ewma))
            if exc is None:
                member.ok += 1
            else:
                kind = failure_kind(exc)
                member.failures[kind] = member.failures.get(kind, 0) + 1
        if member.breaker is not None and not member.lost:  # a lost one's circuit stays open
            member.breaker.record(exc)

    def _stats_inc(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def _circuit_open_error(self, method: str, last: BaseException | None = None
                            ) -> CircuitOpen:
        with self._lock:
            breakers = [m.breaker for m in self._candidates if m.breaker is not None]
        if not breakers:
            msg = f"pool {self.name!r}.{method}: no member can take the call"
            if last is not None:  # a retry found none: say why the last attempt failed
                msg += f" (its last attempt: {type(last).__name__}: {last})"
            err = CircuitOpen(msg)
            err.__cause__ = last
            return err
        due = min(b.next_probe_at() for b in breakers)
        wait = max(0.0, due - breakers[0].clock())
        msg = (f"pool {self.name!r}.{method}: the circuit of every member "
               f"({len(breakers)}) is open; the next probe is due in {wait:.2f}s")
        err = CircuitOpen(msg)
        err.__cause__ = last
        return err

    # -- idempotency ---------------------------------------------------------------------------

    def _idem_lookup(self, idem: Any) -> Reply[Any] | None:
        try:
            hash(idem)
        except TypeError:
            msg = f"idempotency_key must be hashable, not {type(idem).__name__}"
            raise TypeError(msg) from None
        with self._lock:
            running = self._idem_running.get(idem)
            if running is not None:
                self._stats["idempotent_joins"] += 1
                return running
            done = self._idem_done.get(idem)
            if done is not None:
                expires, reply = done
                if expires > time.monotonic():
                    self._stats["idempotent_hits"] += 1
                    return reply
                del self._idem_done[idem]
        return None

    def _idem_register(self, idem: Any, outer: Reply[Any]) -> None:
        with self._lock:
            self._idem_running[idem] = outer

        def store(reply: Reply[Any]) -> None:
            with self._lock:
                self._idem_running.pop(idem, None)
                if reply.outcome()[1] is not None:
                    return  # a failure is not remembered: the next call runs again
                self._idem_done[idem] = (time.monotonic() + self._idem_ttl, reply)
                self._idem_done.move_to_end(idem)
                while len(self._idem_done) > self._idem_size:
                    self._idem_done.popitem(last=False)

        outer.add_done_callback(store)

    # -- membership ----------------------------------------------------------------------------

    def _member_lost(self, member: _Member) -> bool:
        """*member* is gone for good (its supervisor gave up on it, or it answered
        ``ActorStopped``): take it out of the routing, open its circuit, and replace it
        after a backoff. False if the pool or its host is stopped (nothing to replace)."""
        if self._stopped or not self._host.running():
            return False
        now = time.monotonic()
        with self._lock:
            if member.lost or member.retired or member not in self._members:
                return True
            member.lost = True
            self._candidates = [m for m in self._members if not (m.retired or m.lost)]
            if now - self._lost_at > REPLACE_QUIET:
                self._lost_streak = 0
            self._lost_at = now
            delay = self._replace_backoff.delay(self._lost_streak)
            self._lost_streak += 1
            self._stats["lost"] += 1
        if member.breaker is not None:
            member.breaker.trip()
        logger.warning("pool %r: member %r is gone for good; replacing it in %.3fs",
                       self.name, member.ref.name, delay)
        ref = weakref.ref(self)

        def replace() -> None:
            pool = ref()
            if pool is not None:
                pool._replace(member)

        # spawning may wait (for an actor's loop, for the system): off the scheduler
        SCHEDULER.call_later(delay, lambda: threading.Thread(
            target=replace, name="actorq-pool-replace", daemon=True).start(), self._timers)
        return True

    def _replace(self, member: _Member) -> None:
        """Start a new member in *member*'s slot (scheduler thread). It keeps the slot's
        circuit, half open: its first calls are probes."""
        if self._stopped or not self._host.running():
            return
        with self._resize_lock:
            with self._lock:
                if member not in self._members:
                    return  # resized away meanwhile
            try:
                ref = self._host.spawn_member(self.cls, self._args, dict(self._kwargs),
                                              f"{self.name}-{member.slot}")
            except ActorStopped:
                return  # the host stopped meanwhile
            except Exception:
                logger.exception("pool %r: replacing member %r failed", self.name,
                                 member.ref.name)
                return
            new = _Member(ref, member.slot, member.breaker)
            with self._lock:
                self._members[self._members.index(member)] = new
                self._candidates = [m for m in self._members if not (m.retired or m.lost)]
                self._router.resized([m.id for m in self._members])
                self._retired_stats.append(member.stats())
                self._stats["replaced"] += 1
        if new.breaker is not None:
            new.breaker.probe_now()

    def _grow(self, n: int) -> None:
        for _ in range(n):
            with self._lock:
                slot = len(self._members)
            ref = self._host.spawn_member(self.cls, self._args, dict(self._kwargs),
                                          f"{self.name}-{slot}")
            breaker = self.circuit.fresh() if self.circuit is not None else None
            with self._lock:
                self._members.append(_Member(ref, slot, breaker))
                self._candidates = [m for m in self._members if not m.retired]
                self._router.resized([m.id for m in self._members])
        if self._members and n and len(self._members) > self.min_size:
            self._stats_inc("grown")

    def _shrink(self, n: int) -> None:
        with self._lock:
            leaving = self._members[-n:]
            for m in leaving:
                m.retired = True
            self._members = self._members[:-n]
            self._candidates = [m for m in self._members if not m.retired]
            self._router.resized([m.id for m in self._members])
            self._stats["shrunk"] += 1
        # Calls already sent to them are let finish first (no new ones come: they are
        # out of the routing), bounded by the stop timeout; then they are stopped.
        end = time.monotonic() + self._config.stop_timeout
        while any(m.in_flight for m in leaving) and time.monotonic() < end:
            time.sleep(0.005)
        for m in leaving:
            self._host.stop_member(m.ref)
            with self._lock:
                self._retired_stats.append(m.stats())

    def _autoscale(self) -> None:
        """Every tick (scheduler thread): grow while calls wait for credit, shrink after
        ``idle_timeout`` with a member idle at every look.

        What it reads is the kernel's flow control on this process's channel to each
        member (``ref.channel_statistics()``): senders waiting for credit now, and
        credit waits or ``Backpressure`` since the last look. Two pressed looks in a row
        before growing (one burst does not start a process); a member without calls
        in flight (the kernel's credits in use) at every look for ``idle_timeout``
        before shrinking (any look without one starts the wait again)."""
        if self._stopped or not self._host.running():
            return  # stopped, or its system closed: no more ticks
        now = time.monotonic()
        with self._lock:
            members = list(self._candidates)
            size = len(self._members)
        pressed = idle = 0
        for m in members:
            try:
                st = m.ref.channel_statistics()
            except Exception:
                continue
            waited = st.waits + st.backpressure
            if st.waiting or waited > m.seen_waits:
                pressed += 1
            m.seen_waits = waited
            if st.in_flight == 0:
                idle += 1
        if pressed:
            self._busy_ticks += 1
            self._idle_since = now
        else:
            self._busy_ticks = 0
            if not idle:
                self._idle_since = now
        action: Callable[[], None] | None = None
        if self._busy_ticks >= 2 and size < self.max_size:
            self._busy_ticks = 0
            action = lambda: self._resize_to(size + 1)  # noqa: E731
        elif now - self._idle_since >= self.idle_timeout and size > self.min_size:
            self._idle_since = now
            action = lambda: self._resize_to(size - 1)  # noqa: E731
        if action is not None:
            # spawning returns at once, stopping waits for the process: off the scheduler
            threading.Thread(target=action, name="actorq-pool-resize", daemon=True).start()
        _tick_later(self)

    def _resize_to(self, n: int) -> None:
        try:
            if not self._stopped:
                self.resize(n)
        except ActorStopped:
            pass
        except Exception:
            logger.exception("pool %r: resizing to %d failed", self.name, n)


class SupervisorHost:
    """A pool's members under a supervisor of its own, *sup*, which gives up on one
    member at a time (past its restart intensity) rather than failing as a whole; the
    pool replaces a member it gave up on.

    Built on the system's public surface: ``sup.spawn(...)``, ``system.stop(ref)``,
    ``sup.stop()``, ``system.subscribe(...)`` (``gave_up`` events name lost members).
    """

    def __init__(self, system: Any, sup: Any, *, member_options: Any = None) -> None:
        self.system = system
        self.config: SystemConfig = system.config
        self.member_options = member_options
        self.sup = sup
        self._unsubscribe: Callable[[], None] | None = None

    def running(self) -> bool:
        return bool(self.sup.state == "running")

    def watch(self, on_lost: Callable[[int], None]) -> None:
        sup_name = self.sup.name

        def listen(event: ActorEvent) -> None:  # the system's loop thread: quick
            if event.kind is EventKind.GAVE_UP and event.supervisor == sup_name:
                on_lost(event.actor_id)

        self._unsubscribe = self.system.subscribe(listen)

    def spawn_member(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str) -> ActorRef[Any]:
        if self.member_options is not None and "actor_options" not in kwargs:
            kwargs["actor_options"] = self.member_options
        ref: ActorRef[Any] = self.sup.spawn(cls, *args, **kwargs)
        return ref

    def stop_member(self, ref: ActorRef[Any]) -> None:
        self.system.stop(ref)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        try:
            self.sup.stop()
        except ActorStopped:
            pass  # the system is closed: its members are gone already


class ContextHost:
    """A pool's members as children of the actor that made it (``self.context.pool``),
    under a supervisor of the pool's own (below the actor's children supervisor) with
    the pool's restart intensity, counted per member."""

    def __init__(self, ops: Any, group: str, *, max_restarts: int, within: float,
                 member_options: Any = None) -> None:
        self.ops = ops
        self.config: SystemConfig = ops.system_config()
        self.member_options = member_options
        self.group = (group, max_restarts, within)
        self.refs: list[ActorRef[Any]] = []
        # the actor's thread and loop: its requests to the system are made there only
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - actors run their code on their loop
            self._loop = None

    def _on_actor_thread(self, fn: Callable[[], T]) -> T:
        """Run *fn* on the actor's own thread (between its messages) and wait for it: the
        actor's requests to the system (spawn, stop) are not made from two threads."""
        if self._loop is None or threading.get_ident() == self._thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                done.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # its loop is closed: the actor is stopping
            msg = "the actor that runs this pool is stopping"
            raise ActorStopped(msg) from None
        return done.result()

    def spawn_member(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str) -> ActorRef[Any]:
        if self.member_options is not None and "actor_options" not in kwargs:
            kwargs["actor_options"] = self.member_options
        ref: ActorRef[Any] = self._on_actor_thread(lambda: self.ops.spawn_child(
            cls, args, kwargs, None, "permanent", group=self.group))
        self.refs.append(ref)
        return ref

    def stop_member(self, ref: ActorRef[Any]) -> None:
        if ref in self.refs:
            self.refs.remove(ref)
        try:
            self._on_actor_thread(lambda: self.ops.stop_child(ref))
        except (ActorStopped, ValueError):
            pass  # gone already

    def close(self) -> None:
        for ref in list(self.refs):
            self.stop_member(ref)

    def running(self) -> bool:
        return True  # the actor that made the pool is running: it is the one calling

    def watch(self, on_lost: Callable[[int], None]) -> None:
        """An actor hears of a lost child from its next call (``ActorStopped``)."""


def context_pool(ops: Any, cls: type, args: tuple[Any, ...],
                 options: dict[str, Any]) -> Pool[Any]:
    """``self.context.pool(cls, *args, **options)``: a pool of the actor's children."""
    size = options.pop("size", None)
    routing = options.pop("routing", "round_robin")
    circuit = options.pop("circuit", None)
    retry = options.pop("retry", None)
    timeout = options.pop("timeout", None)
    name = options.pop("name", None) or f"pool-{cls.__name__}-{next(_pool_ids)}"
    hang_margin = options.pop("hang_margin", 1.0)
    idle_timeout = options.pop("idle_timeout", 5.0)
    oversubscribe = options.pop("oversubscribe", False)
    max_restarts = options.pop("max_restarts", 100)
    within = options.pop("within", 10.0)
    replace_backoff = options.pop("replace_backoff", None)
    scale_window = options.pop("scale_window", SCALE_WINDOW)
    validate_options(size, routing, circuit, retry, timeout, idle_timeout, oversubscribe)
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        msg = f"max_restarts must be an int >= 0, not {max_restarts!r}"
        raise ValueError(msg)
    check_timeout(within, "within")
    lo, hi = parse_size(size, oversubscribe)
    member_options = hang_options(cls, timeout, hang_margin, options,
                                  scale_window if hi > lo else None)
    host = ContextHost(ops, name, max_restarts=max_restarts, within=float(within),
                       member_options=member_options)
    return Pool(host, cls, args, options, size=size, routing=routing, circuit=circuit,
                retry=retry, timeout=timeout, name=name, idle_timeout=idle_timeout,
                oversubscribe=oversubscribe, replace_backoff=replace_backoff)


def hang_options(cls: type, timeout: float | None, hang_margin: float,
                 kwargs: dict[str, Any], scale_window: int | None = None) -> Any:
    """The members' ``ActorOptions``: a hang timeout of *timeout* + *hang_margin* when
    the pool has a timeout, and a credit window of *scale_window* messages for an
    autoscaling pool (calls beyond it wait for credit: the signal to grow); None when
    neither applies, or the caller passed ``actor_options``. A class's own hang timeout
    or adaptive window is kept."""
    if not (isinstance(hang_margin, (int, float)) and hang_margin > 0):
        msg = f"hang_margin must be positive seconds, not {hang_margin!r}"
        raise ValueError(msg)
    if scale_window is not None and (isinstance(scale_window, bool) or not isinstance(
            scale_window, int) or scale_window < 1):
        msg = f"scale_window must be an int >= 1, not {scale_window!r}"
        raise ValueError(msg)
    if "actor_options" in kwargs:
        return None
    base = getattr(cls, "actor_options", None) or ActorOptions()
    changes: dict[str, Any] = {}
    if timeout is not None and base.hang_timeout is None:
        changes["hang_timeout"] = timeout + hang_margin
    if scale_window is not None and base.window_target is None:
        # a fixed window: the adaptive one pinned (its target is never exceeded)
        changes.update(window_target=SCALE_TARGET, window_min=scale_window,
                       window_max=scale_window)
    return dataclasses.replace(base, **changes) if changes else None


def _on_lost_weakly(pool: Pool[Any]) -> Callable[[int], None]:
    """``on_lost(actor_id)`` for the host to call, holding the pool weakly."""
    ref = weakref.ref(pool)

    def on_lost(actor_id: int) -> None:
        alive = ref()
        if alive is None:
            return
        with alive._lock:
            member = next((m for m in alive._members if m.id == actor_id), None)
        if member is not None:
            alive._member_lost(member)

    return on_lost


def _tick_later(pool: Pool[Any]) -> None:
    """The next autoscale look, holding the pool weakly: a pool nobody holds stops."""
    ref = weakref.ref(pool)

    def tick() -> None:
        alive = ref()
        if alive is not None:
            alive._autoscale()

    SCHEDULER.call_later(AUTOSCALE_TICK, tick, pool._timers)


class _NoHost:
    """The host of a pool copied into another process: it calls, it does not own."""

    def __init__(self) -> None:
        self.config = SystemConfig()

    def spawn_member(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str) -> ActorRef[Any]:  # pragma: no cover - never called
        msg = "a copied pool does not spawn"
        raise RuntimeError(msg)

    def stop_member(self, ref: ActorRef[Any]) -> None:  # pragma: no cover - never called
        msg = "a copied pool does not stop members"
        raise RuntimeError(msg)

    def close(self) -> None:
        """Nothing to close: the members belong to the original pool."""

    def running(self) -> bool:
        return False  # a copy does not replace members (the original pool does)

    def watch(self, on_lost: Callable[[int], None]) -> None:
        """A copy does not watch."""


def _rebuild_pool(name: str, cls_name: str, handlers: frozenset[str],
                  refs: list[ActorRef[Any]], routing: str, circuit: CircuitBreaker | None,
                  retry: Retry | None, timeout: float | None) -> Pool[Any]:
    """A pool unpickled in another process: the same members, its own circuits and figures."""
    pool: Pool[Any] = Pool.__new__(Pool)
    pool.__dict__.update(name=name, cls=None, cls_name=cls_name, handlers=handlers,
                         routing=routing, circuit=circuit, retry=retry, timeout=timeout,
                         min_size=len(refs), max_size=len(refs), idle_timeout=5.0)
    pool._host = _NoHost()
    pool._config = pool._host.config
    pool._bare = retry is None and circuit is None
    pool._args, pool._kwargs = (), {}
    pool._router = make_router(routing)
    pool._token_prefix = f"{name}/{os.getpid()}/"
    pool._timers = object()
    pool._budget = retry.budget.fresh() if retry is not None and retry.budget is not None \
        else None
    pool._lock = threading.Lock()
    pool._members = [_Member(r, i, circuit.fresh() if circuit is not None else None)
                     for i, r in enumerate(refs)]
    pool._candidates = list(pool._members)
    pool._router.resized([m.id for m in pool._members])
    pool._stopped = False
    pool._owner = False
    pool._stats = dict.fromkeys(
        ("calls", "succeeded", "failed", "retries", "budget_refusals",
         "circuit_open_rejections", "expired_drops", "deadline_timeouts",
         "idempotent_joins", "idempotent_hits", "grown", "shrunk", "lost", "replaced"), 0)
    pool._retired_stats = []
    pool._idem_ttl, pool._idem_size = 300.0, 10_000
    pool._idem_running, pool._idem_done = {}, OrderedDict()
    pool._busy_ticks, pool._idle_since = 0, time.monotonic()
    pool._resize_lock = threading.Lock()
    pool._replace_backoff = default_replace_backoff()
    pool._lost_streak, pool._lost_at = 0, 0.0
    return pool


def validate_options(size: int | tuple[int, int] | None, routing: str,
                     circuit: CircuitBreaker | None, retry: Retry | None,
                     timeout: float | None, idle_timeout: float, oversubscribe: bool) -> None:
    """Raise ``ValueError``/``TypeError`` for bad pool options, before anything starts."""
    if routing not in ROUTINGS:
        msg = f"routing must be one of {', '.join(ROUTINGS)}; not {routing!r}"
        raise ValueError(msg)
    if circuit is not None and not isinstance(circuit, CircuitBreaker):
        msg = f"circuit must be an actorq.CircuitBreaker or None, not {circuit!r}"
        raise TypeError(msg)
    if retry is not None and not isinstance(retry, Retry):
        msg = f"retry must be an actorq.Retry or None, not {retry!r}"
        raise TypeError(msg)
    check_timeout(timeout, "timeout")
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) \
            or not idle_timeout > 0:
        msg = f"idle_timeout must be positive seconds, not {idle_timeout!r}"
        raise ValueError(msg)
    parse_size(size, oversubscribe)


def all_closed(members: list[_Member]) -> bool:
    """True if every member's circuit is closed (read without locks: a closed circuit
    lets every call through, and one that is opening is seen at the next call)."""
    for m in members:  # noqa: SIM110 - a plain loop: no generator per call
        if m.breaker is not None and m.breaker._state != "closed":
            return False
    return True


def check_timeout(timeout: float | None, what: str) -> None:
    """``ValueError`` for a timeout that is not positive seconds (None is fine)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        msg = f"{what} must be positive seconds, not {timeout!r}"
        raise ValueError(msg)


def parse_size(size: int | tuple[int, int] | None, oversubscribe: bool) -> tuple[int, int]:
    """``(min, max)`` from an int, a pair, or None (the cores)."""
    cores = os.cpu_count() or 1
    if size is None:
        return cores, cores
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            msg = f"a pool's size must be >= 1, not {size}"
            raise ValueError(msg)
        return size, size
    if isinstance(size, tuple) and len(size) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in size):
        lo, hi = size
        if not 1 <= lo <= hi:
            msg = f"a pool's size (min, max) needs 1 <= min <= max, not {size}"
            raise ValueError(msg)
        if not oversubscribe and hi > cores:
            hi = max(lo, cores)  # never beyond the cores unless asked
        return lo, hi
    msg = f"a pool's size must be an int or a (min, max) pair of ints, not {size!r}"
    raise TypeError(msg) if not isinstance(size, (int, tuple)) else ValueError(msg)


set_pool_factory(context_pool)
