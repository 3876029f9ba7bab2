"""Pool: a group of supervised actors called like one ref, routed per call.

A pool lives in the process that created it (the user's, or an actor's). Its members
are ordinary actors under a supervisor of their own; the pool calls them directly over
their own channels, so a pool call is a ref call plus a routing decision and a little
bookkeeping (no dispatcher process, no extra hop).

The pool is built in layers, each module on the ones before it::

    options      validation, the members' ActorOptions
    metrics      PoolStatistics, MemberStatistics
    hosts        where members come from (a supervisor, an actor's children)
    members      MemberSet: picking a member, its counts, grow/shrink/lost/replaced
    calls        one call across its attempts (retries, deadlines)
    idempotency  idempotency keys          autoscale   (min, max) pools
    pool         Pool: the ref-like surface, the bare fast path
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from actorq._core.actor import handler_names, set_pool_factory
from actorq._core.reply import Reply
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.autoscale import Autoscaler, tick_later
from actorq._routing.calls import _Call, send_first
from actorq._routing.hosts import ContextHost, NoHost, PoolHost, SupervisorHost
from actorq._routing.idempotency import Idempotency
from actorq._routing.members import (
    PoolMember,
    bare_outcome,
    default_replace_backoff,
    on_lost_weakly,
)
from actorq._routing.metrics import (
    STAT_NAMES,
    MemberStatistics,
    PoolStatistics,
)
from actorq._routing.options import (
    SCALE_WINDOW,
    check_timeout,
    hang_options,
    parse_size,
    validate_options,
)
from actorq._routing.routers import key_point, make_router
from actorq._routing.scheduler import SCHEDULER

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

__all__ = ["SCALE_WINDOW", "MemberStatistics", "Pool", "PoolStatistics", "SupervisorHost",
           "context_pool", "hang_options", "parse_size", "validate_options"]

A = TypeVar("A")
Route = Callable[["Pool[Any]", str, tuple[Any, ...]], Reply[Any]]
_pool_ids = itertools.count(1)


_POOL_ATTRS = frozenset({"name", "cls", "cls_name", "handlers", "routing", "circuit", "retry",
                         "timeout", "min_size", "max_size", "idle_timeout", "size"})


def _bind(pool: Pool[Any], method: str) -> Callable[..., Reply[Any]]:
    """``pool.method``: calls *method* through the pool. A closure, as a ref's methods
    are: called straight, without the ``__call__`` lookup an object's call takes."""

    def bound(*args: Any, **kwargs: Any) -> Reply[Any]:
        if kwargs:
            key = kwargs.pop("key", None)
            timeout = kwargs.pop("timeout", None)
            idem = kwargs.pop("idempotency_key", None)
            return pool._submit(method, args, kwargs, key, timeout, idem)
        return pool._route(pool, method, args)  # the pool's own path, chosen once

    bound.__name__ = bound.__qualname__ = method
    return bound


class Pool(Idempotency, Autoscaler, Generic[A]):
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
        self._closed = True
        self._args, self._kwargs = args, kwargs
        self._router = make_router(routing)
        self._route = self._choose_route()
        self._token_prefix = f"{self.name}/{os.getpid()}/"
        self._timers = object()  # owns its entries on the routing scheduler (cancel)
        self._budget = (retry.budget.fresh() if retry is not None
                                            and retry.budget is not None else None)
        self._budget_told = 0
        self._lock = threading.Lock()
        self._members = []
        self._candidates = []  # members that are not retired
        self._stopped = False
        self._owner = True
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._retired_stats = []
        self._idem_ttl = idempotency_ttl
        self._idem_size = idempotency_size
        self._idem_running = {}
        self._idem_done = OrderedDict()
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
        self._host.watch(on_lost_weakly(self))
        if hi > lo:
            tick_later(self)

    # -- the ref-like surface -----------------------------------------------------------------

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        self._check_method(method)
        bound = _bind(self, method)
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
            return member.ref.call_with(method, args, on_outcome=partial(
                bare_outcome, self, member, time.perf_counter()))
        except BaseException:
            self._uncount(member)
            raise

    def circuits(self) -> dict[str, str]:
        """Each member's circuit state (by member name): closed, open or half_open."""
        with self._lock:
            return {m.ref.name: (m.breaker.state if m.breaker is not None else "closed")
                    for m in self._members}

    @property
    def size(self) -> int:
        """How many members the pool has now."""
        return len(self._members)

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
        self._route = Pool._route_checked  # which raises ActorStopped now
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

    def _check_key(self, key: Any) -> None:
        if key is None:
            msg = f"pool {self.name!r} routes by hash: pass key= with each call"
            raise ValueError(msg)
        key_point(key)  # TypeError for a key that cannot be hashed

    # A call without keywords (``pool.method(x)``) takes the pool's route, chosen once at
    # construction from its options: the checks that cannot fail for this pool are skipped.

    def _choose_route(self) -> Route:
        """The function (not a bound method: no pool -> pool cycle) calls take."""
        if self._router.needs_key:
            return Pool._route_checked  # raises: a hash pool needs key=
        if self.timeout is not None:
            return Pool._route_checked  # a deadline per call
        if self._bare:
            return Pool._bare_call
        return send_first  # a retry or a circuit, no timeout: a _Call only on a failure

    def _route_checked(self, method: str, args: tuple[Any, ...]) -> Reply[Any]:
        return self._submit(method, args, {}, None, None, None)

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
        elif deadline is None:
            if self._bare:
                return self._bare_call(method, args, kwargs, key)
            return send_first(self, method, args, kwargs, key)
        call = _Call(self, method, args, kwargs, key, deadline, idem)
        self._count_call()
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

    def _bare_call(self, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any] | None = None, key: Any = None) -> Reply[Any]:
        """A pool without retry, circuit or deadline: the member's own reply is the
        call's reply; only the routing and the bookkeeping are added."""
        with self._lock:
            candidates = self._candidates
            if not candidates:
                raise self._circuit_open_error(method)
            member: PoolMember = self._router.choose(candidates, key)
            member.in_flight += 1
            member.calls += 1
            self._stats["calls"] += 1
        try:  # the member's own reply; bare_outcome counts its outcome before it is seen
            return member.ref.call_with(method, args, kwargs, on_outcome=partial(
                bare_outcome, self, member, time.perf_counter()))
        except BaseException:
            self._uncount(member)
            raise


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



def _rebuild_pool(name: str, cls_name: str, handlers: frozenset[str],
                  refs: list[ActorRef[Any]], routing: str, circuit: CircuitBreaker | None,
                  retry: Retry | None, timeout: float | None) -> Pool[Any]:
    """A pool unpickled in another process: the same members, its own circuits and figures."""
    pool: Pool[Any] = Pool.__new__(Pool)
    pool.__dict__.update(name=name, cls=None, cls_name=cls_name, handlers=handlers,
                         routing=routing, circuit=circuit, retry=retry, timeout=timeout,
                         min_size=len(refs), max_size=len(refs), idle_timeout=5.0)
    pool._host = NoHost()
    pool._config = pool._host.config
    pool._bare = retry is None and circuit is None
    pool._closed = True
    pool._args, pool._kwargs = (), {}
    pool._router = make_router(routing)
    pool._route = pool._choose_route()
    pool._token_prefix = f"{name}/{os.getpid()}/"
    pool._timers = object()
    pool._budget = retry.budget.fresh() if retry is not None and retry.budget is not None \
        else None
    pool._budget_told = 0
    pool._lock = threading.Lock()
    pool._members = [PoolMember(r, i, circuit.fresh() if circuit is not None else None)
                     for i, r in enumerate(refs)]
    pool._candidates = list(pool._members)
    pool._router.resized([m.id for m in pool._members], [m.slot for m in pool._members])
    pool._stopped = False
    pool._owner = False
    pool._stats = dict.fromkeys(STAT_NAMES, 0)
    pool._retired_stats = []
    pool._idem_ttl, pool._idem_size = 300.0, 10_000
    pool._idem_running, pool._idem_done = {}, OrderedDict()
    pool._busy_ticks, pool._idle_since = 0, time.monotonic()
    pool._resize_lock = threading.Lock()
    pool._replace_backoff = default_replace_backoff()
    pool._lost_streak, pool._lost_at = 0, 0.0
    return pool



set_pool_factory(context_pool)
