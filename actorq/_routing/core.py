"""PoolCore: a pool's state and its call paths, behind the user's ``Pool``.

``Pool`` (pool.py) is what users hold: it has a ``__getattr__`` (``pool.method(...)``),
and a class with one reads *every* attribute of its instances the slow way (CPython
does not specialize attribute reads on such a type: about 3.5-5k more instructions
per pool call, counted by ``benchmarks/callgrind_pool_call.py``). So the state every
call reads lives here, on an object with slots and no ``__getattr__``, and the
``pool.method`` closures call this object directly.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from types import MethodType
from typing import TYPE_CHECKING, Any

from actorq import _native
from actorq._core.reply import Reply
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.autoscale import Autoscaler
from actorq._routing.calls import (
    _Call,
    bare_outcome,
    first_not_sent,
    first_outcome,
    pick_first,
    send_first,
)
from actorq._routing.deadlines import rearm, watch
from actorq._routing.hosts import PoolHost
from actorq._routing.idempotency import Idempotency
from actorq._routing.members import EWMA_ALPHA, PoolMember, default_replace_backoff
from actorq._routing.metrics import STAT_NAMES, PoolStatistics
from actorq._routing.options import check_timeout
from actorq._routing.routers import (
    PLAIN_KEYS,
    SLOT_CACHE_KEYS,
    ConsistentHash,
    Fastest,
    LeastLoaded,
    RoundRobin,
    Router,
    key_point,
    make_router,
)
from actorq._routing.scheduler import SCHEDULER

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

Route = Callable[["PoolCore", str, tuple[Any, ...]], Reply[Any]]
# (pool, method, args, kwargs, key): a call whose only keyword is a plain key= (routers.PLAIN_KEYS)
KeyRoute = Callable[["PoolCore", str, tuple[Any, ...], Any, Any], Reply[Any]]


class PoolCore(Idempotency, Autoscaler):
    """A pool's members, figures and call paths (see the module docstring)."""

    __slots__ = ("__weakref__", "_bare", "_bare_route", "_route", "_route_key",
                 "_send_route", "cls_name", "handlers", "routing")

    def __init__(self, host: PoolHost, name: str, cls: type | None, cls_name: str,
                 handlers: frozenset[str], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 routing: str, circuit: CircuitBreaker | None, retry: Retry | None,
                 timeout: float | None, sizes: tuple[int, int], idle_timeout: float = 5.0,
                 idempotency_ttl: float = 300.0, idempotency_size: int = 10_000,
                 replace_backoff: Backoff | None = None, owner: bool = True) -> None:
        self.name = name
        self.cls = cls
        self.cls_name = cls_name
        self.handlers = handlers
        self.routing = routing
        self.circuit = circuit
        self.retry = retry
        self.timeout = timeout
        self.min_size, self.max_size = sizes
        self.idle_timeout = idle_timeout
        self._host = host
        self._config = host.config
        self._bare = retry is None and circuit is None  # see _bare_call
        self._closed = True
        self._args, self._kwargs = args, kwargs
        self._router = make_router(routing)
        # the C pool calls (actorq/_native/_pool.c) if selected now, else the Python ones
        native = _native.PoolCalls
        self._bare_route: Callable[..., Reply[Any]] = (PoolCore._bare_call if native is None
                                                       else native.bare_call)
        self._send_route: Callable[..., Reply[Any]] = (send_first if native is None
                                                       else native.send_first)
        self._pick_first = pick_first if native is None else native.pick_first
        self._make_hook = None if native is None else native.hook
        self._route: Route = self._choose_route()
        self._route_key: KeyRoute = self._choose_key_route()
        self._token_prefix = f"{name}/{os.getpid()}/"
        self._timers = object()  # owns its entries on the routing scheduler (cancel)
        self._budget = (retry.budget.fresh() if retry is not None
                                            and retry.budget is not None else None)
        self._budget_told = 0
        self._lock = threading.Lock()
        self._members: list[PoolMember] = []
        self._candidates: list[PoolMember] = []  # members that are not retired
        self._stopped = False
        self._owner = owner
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        del self._stats["calls"], self._stats["succeeded"]  # attributes (MemberSet)
        self._calls = self._succeeded = 0
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
        self._due = deque()
        self._due_at = math.inf  # no sweep set
        self._expiring = None

    def adopt(self, refs: list[ActorRef[Any]]) -> None:
        """Take *refs* as the members, in slot order (a copy of a pool, unpickled)."""
        circuit = self.circuit
        with self._lock:
            self._members = [PoolMember(r, i, circuit.fresh() if circuit is not None else None)
                             for i, r in enumerate(refs)]
            self._routing_changed()

    # -- the surface's work (``Pool`` forwards here) -------------------------------------------

    def check_method(self, method: str) -> None:
        """``AttributeError`` unless *method* is a handler of the members (or ``receive``)."""
        if method not in self.handlers and method != "receive":
            known = ", ".join(sorted(self.handlers)) or "none"
            msg = f"pool {self.name!r} ({self.cls_name}) has no handler {method!r} (its " \
                  f"public methods: {known})"
            raise AttributeError(msg)

    def tell(self, message: Any, key: Any) -> None:
        """``Pool.tell``: one member's ``receive``, no reply, no retry."""
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

    def member_refs(self) -> list[ActorRef[Any]]:
        """The members' refs, in slot order."""
        with self._lock:
            return [m.ref for m in self._members]

    def call_member(self, ref: ActorRef[Any], method: str, args: tuple[Any, ...],
                    then: Callable[[Any, BaseException | None], object] | None = None
                    ) -> Reply[Any]:
        """``Pool.call_member``: *method* on the member *ref*, counted, no retry;
        *then(value, exc)* told the outcome once it is counted."""
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
            self._calls += 1
        try:
            return member.ref.call_with(method, args, on_outcome=partial(
                bare_outcome, self, member, time.monotonic(), then))
        except BaseException:
            self._uncount(member)
            raise

    def circuits(self) -> dict[str, str]:
        """Each member's circuit state (by member name)."""
        with self._lock:
            return {m.ref.name: (m.breaker.state if m.breaker is not None else "closed")
                    for m in self._members}

    def halt(self) -> None:
        """``Pool.halt``: stop routing; the pool's timers go (see there)."""
        self._stopped = True
        self._route = PoolCore._route_checked  # which raise ActorStopped now
        self._route_key = PoolCore._route_key_checked
        SCHEDULER.cancel(self._timers)

    def statistics(self) -> PoolStatistics:
        """The pool's figures now (a frozen snapshot)."""
        with self._lock:
            members = [m.stats() for m in self._members] + list(self._retired_stats)
            replacing = sum(1 for m in self._members if m.lost)
            return PoolStatistics(name=self.name, size=len(self._members),
                                  routing=self.routing, members=members,
                                  replacing=replacing,
                                  **{**self._stats, "calls": self._calls,
                                     "succeeded": self._succeeded})

    # -- calls ---------------------------------------------------------------------------------

    def _check_key(self, key: Any) -> None:
        if key is None:
            msg = f"pool {self.name!r} routes by hash: pass key= with each call"
            raise ValueError(msg)
        if type(key) not in PLAIN_KEYS:  # those always hash
            key_point(key)  # TypeError for a key that cannot be hashed

    # A call without keywords (``pool.method(x)``) takes the pool's route, chosen once at
    # construction from its options: the checks that cannot fail for this pool are skipped.

    def _choose_route(self) -> Route:
        """The function (not a bound method: no pool -> pool cycle) calls take."""
        if self._router.needs_key:
            return PoolCore._route_checked  # raises: a hash pool needs key=
        if self._bare and self.timeout is None:
            return self._bare_route
        return self._send_route  # a retry, a circuit or a deadline: a _Call only on a failure

    def _choose_key_route(self) -> KeyRoute:
        """The function a call whose only keyword is a ``key=`` of a plain type takes
        (``pool.method(x, key=k)``): such a key always hashes, and a pool that does not
        route by hash ignores it."""
        if self._bare and self.timeout is None:
            return self._bare_route
        return self._send_route

    def _route_checked(self, method: str, args: tuple[Any, ...]) -> Reply[Any]:
        return self.submit(method, args, {}, None, None, None)

    def _route_key_checked(self, method: str, args: tuple[Any, ...], kwargs: Any,
                           key: Any) -> Reply[Any]:
        return self.submit(method, args, {}, key, None, None)

    def submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: Any,
               timeout: float | None, idem: Any) -> Reply[Any]:
        """A call with the pool's keywords (*method* checked by the caller)."""
        if self._stopped:
            self._check_open()
        if self._router.needs_key:
            self._check_key(key)
        if timeout is None:
            timeout = self.timeout
        else:
            check_timeout(timeout, "timeout")
        if idem is not None:
            return self._submit_keyed(method, args, kwargs, key, timeout, idem)
        if timeout is None and self._bare:
            return self._bare_route(self, method, args, kwargs, key)
        return self._send_route(self, method, args, kwargs, key, timeout)

    def _submit_keyed(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                      key: Any, timeout: float | None, idem: Any) -> Reply[Any]:
        """A call with an idempotency key: joined to a running one with the same key, or
        answered from the store, or run as a ``_Call`` whose reply the key keeps."""
        deadline = None if timeout is None else time.monotonic() + timeout
        joined = self._idem_lookup(idem)
        if joined is not None:
            return joined
        call = _Call(self, method, args, kwargs, key, deadline, idem)
        self._count_call()
        self._idem_register(idem, call.outer)
        outer = call.outer
        try:
            call.start()
        except BaseException:
            self._idem_running.pop(idem, None)
            raise
        if deadline is not None and not outer.done():
            SCHEDULER.call_later(deadline - time.monotonic(), call.expire, self._timers)
        return outer

    def _bare_call(self, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any] | None = None, key: Any = None) -> Reply[Any]:
        """A pool without retry, circuit or deadline: the member's own reply is the
        call's reply; only the routing and the bookkeeping are added. No token travels
        with it (it is not retried, but for its member being gone: see below)."""
        member: PoolMember | None = None
        lock = self._lock
        lock.acquire()  # not ``with``: see members.succeeded
        try:
            candidates = self._candidates
            if candidates:
                member = self._router.choose(candidates, key)
                member.in_flight += 1
                member.calls += 1
                self._calls += 1
        finally:
            lock.release()
        if member is None:  # (raised outside the lock, which the error's text takes)
            raise self._circuit_open_error(method)
        # the member's own reply: first_outcome counts its outcome before it is seen, and
        # sends it again if its member was resized away or lost (ActorStopped): a _Call
        # then, made only for such a call
        try:  # ``ref.call_with``, checked; in C for plain data (``_native.hub_call``)
            hub = member.hub or member.attach()
            make = self._make_hook  # the hook in C (actorq/_native/_pool.c), or None
            hook = (MethodType(first_outcome, (self, member, method, args, kwargs, key, None,
                                               time.monotonic()))
                    if make is None
                    else make(self, member, method, args, kwargs, key, None, time.monotonic()))
            send = _native.hub_call
            if send is not None:
                reply: Reply[Any] = send(hub, member.ref, method, args, kwargs, hook)
                return reply
            return hub.call(member.ref, method, args, kwargs, hook)
        except BaseException:
            self._uncount(member)
            raise


if _native.POOL_C is not None:  # what the C pool calls stand for (see _pool.c)
    _native.POOL_C.configure({
        "bare_call": PoolCore._bare_call, "pick_first": pick_first,
        "first_outcome": first_outcome, "send_first": send_first,
        "first_not_sent": first_not_sent, "watch": watch, "rearm": rearm,
        "PoolCore": PoolCore, "PoolMember": PoolMember, "Router": Router,
        "RoundRobin": RoundRobin, "LeastLoaded": LeastLoaded, "Fastest": Fastest,
        "ConsistentHash": ConsistentHash, "ewma_alpha": EWMA_ALPHA,
        "slot_cache_keys": SLOT_CACHE_KEYS,
        # a member's hub's call and call_deadline in C (as a ref's own calls), if built
        "hub_call": _native.hub_call, "hub_call_deadline": _native.hub_call_deadline,
        "lock": threading.Lock()})
