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
    core         PoolCore: the state and the call paths, the bare fast path
    pool         Pool: the ref-like surface (``pool.method`` closures call the core)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from actorq import _native
from actorq._core.actor import handler_names, set_pool_factory
from actorq._core.reply import Reply
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.autoscale import tick_later
from actorq._routing.core import PoolCore
from actorq._routing.hosts import ContextHost, NoHost, PoolHost, SupervisorHost
from actorq._routing.members import on_lost_weakly
from actorq._routing.metrics import MemberStatistics, PoolStatistics
from actorq._routing.options import (
    SCALE_WINDOW,
    check_timeout,
    hang_options,
    parse_size,
    validate_options,
)
from actorq._routing.routers import PLAIN_KEYS

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

__all__ = ["SCALE_WINDOW", "MemberStatistics", "Pool", "PoolStatistics", "SupervisorHost",
           "context_pool", "hang_options", "parse_size", "validate_options"]

A = TypeVar("A")
_pool_ids = itertools.count(1)


_POOL_ATTRS = frozenset({"name", "cls", "cls_name", "handlers", "routing", "circuit", "retry",
                         "timeout", "min_size", "max_size", "idle_timeout", "size"})


def _bind(pool: Pool[Any], core: PoolCore, method: str) -> Callable[..., Reply[Any]]:
    """``pool.method``: calls *method* through the pool. A closure, reading only *core*
    (see core.py: no attribute of *pool* on the way); with the C pool calls, a
    ``PoolCaller`` (``_native._pool``) that sends a call of positional arguments, with a
    plain ``key=`` or none, to the pool's route without the closure's frame, and any
    other to the closure."""
    plain_keys = PLAIN_KEYS

    def bound(*args: Any, key: Any = None, **kwargs: Any) -> Reply[Any]:
        # key= is a parameter (bound by the interpreter, not popped from a dict)
        if kwargs:
            timeout = kwargs.pop("timeout", None)
            idem = kwargs.pop("idempotency_key", None)
            return core.submit(method, args, kwargs, key, timeout, idem)
        if key is None:
            return core._route(core, method, args)  # the pool's own path, chosen once
        if type(key) in plain_keys:  # key= alone, a plain one: the pool's own keyed path
            return core._route_key(core, method, args, None, key)
        return core.submit(method, args, kwargs, key, None, None)

    bound.__name__ = bound.__qualname__ = method
    bound.pool = pool  # type: ignore[attr-defined]  # held while its methods are
    native = _native.PoolCalls
    if native is not None:  # straight to core._route (or _route_key), with no frame
        caller: Callable[..., Reply[Any]] = native.PoolCaller(pool, core, method, bound)
        return caller
    return bound


class Pool(Generic[A]):
    """A group of actors of one class, called like one ref; create with ``system.pool``.

    ``pool.method(*args, **kwargs)`` and ``pool.call("method", ...)`` return a ``Reply``;
    ``tell``/``ask`` go to ``receive``. Three keywords of a pool call are the pool's, not
    the handler's: ``key=`` (routing ``"hash"``), ``timeout=`` (this call's deadline, all
    attempts included) and ``idempotency_key=`` (see ``docs/concepts.md``). Pass a
    handler keyword with one of those names through ``call_with(method, args, kwargs)``.
    """

    # the pool's options, as given (read-only; the pool's state is its core's)
    name: str
    cls: type | None
    cls_name: str
    handlers: frozenset[str]
    routing: str
    circuit: CircuitBreaker | None
    retry: Retry | None
    timeout: float | None
    min_size: int
    max_size: int
    idle_timeout: float

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
        core = PoolCore(host, name or f"pool-{cls.__name__}-{next(_pool_ids)}", cls,
                        cls.__name__, handler_names(cls), args, kwargs, routing=routing,
                        circuit=circuit, retry=retry, timeout=timeout, sizes=(lo, hi),
                        idle_timeout=idle_timeout, idempotency_ttl=idempotency_ttl,
                        idempotency_size=idempotency_size, replace_backoff=replace_backoff)
        try:
            core._grow(lo)
        except BaseException:
            host.close()
            raise
        host.watch(on_lost_weakly(core))
        if hi > lo:
            tick_later(core)
        self._attach(core)

    def _attach(self, core: PoolCore) -> None:
        self._core = core
        for attr in _POOL_ATTRS - {"size"}:
            self.__dict__[attr] = getattr(core, attr)

    # -- the ref-like surface -----------------------------------------------------------------

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        core = self._core
        core.check_method(method)
        bound = _bind(self, core, method)
        if method not in _POOL_ATTRS:
            self.__dict__[method] = bound  # next time found without __getattr__
        return bound

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
        core = self._core
        core.check_method(method)
        return core.submit(method, args, kwargs, key, timeout, idempotency_key)

    def call_with(self, method: str, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, *, key: Any = None,
                  timeout: float | None = None, idempotency_key: Any = None) -> Reply[Any]:
        """Like ``call``, with the handler's arguments given as a tuple and a dict."""
        core = self._core
        core.check_method(method)
        return core.submit(method, tuple(args), dict(kwargs or {}), key, timeout,
                           idempotency_key)

    def ask(self, message: Any, *, key: Any = None, timeout: float | None = None) -> Reply[Any]:
        """Send *message* to one member's ``receive``; return a ``Reply`` with its answer."""
        return self._core.submit("receive", (message,), {}, key, timeout, None)

    def tell(self, message: Any, *, key: Any = None) -> None:
        """Send *message* to one member's ``receive``; no reply, no retry (fire and forget)."""
        self._core.tell(message, key)

    def members(self) -> list[ActorRef[Any]]:
        """The members' refs, in slot order."""
        return self._core.member_refs()

    def call_member(self, ref: ActorRef[Any], method: str, *args: Any,
                    then: Callable[[Any, BaseException | None], object] | None = None
                    ) -> Reply[Any]:
        """Call *method* on the member *ref* itself: the caller routes (a scheduler of its
        own, such as the job graph's). Counted like a routed call (in flight, latency,
        failures in ``statistics()``); no retry, circuit or deadline. ``ValueError`` if
        *ref* is not a member (any more), ``ActorStopped`` if the pool is stopped.
        *then(value, exc)*, if given, is told the call's outcome once it is counted,
        before the reply is published, on the thread that completes it (usually the
        system's loop thread): quick, never blocking, never raising. It is the job
        graph's way to take a batch's outcome without a done-callback on its reply."""
        return self._core.call_member(ref, method, args, then)

    def circuits(self) -> dict[str, str]:
        """Each member's circuit state (by member name): closed, open or half_open."""
        return self._core.circuits()

    @property
    def size(self) -> int:
        """How many members the pool has now."""
        return len(self._core._members)

    def resize(self, n: int) -> None:
        """Grow or shrink to *n* members now (see ``docs/api.md``, "Pool"): shrinking
        retires the least busy members, which finish the calls they have."""
        self._core.resize(n)

    def retire(self, ref: ActorRef[Any]) -> None:
        """Take the member *ref* out: no new calls, it finishes its calls, then stops.
        ``ValueError`` if it is not a member or is the last one; blocks until it is gone."""
        self._core.retire(ref)

    def stop(self) -> None:
        """Stop every member for good; later calls raise ``ActorStopped``. Its timers
        (autoscaling, replacements, deadlines) go; a retry waiting for its backoff fails
        with ``ActorStopped`` now."""
        core = self._core
        if core._stopped:
            return
        core.halt()
        if core._owner:
            core._host.close()

    def halt(self) -> None:
        """Stop routing (its system is closing, or ``stop``): later calls raise
        ``ActorStopped``, its entries leave the routing scheduler (retries waiting for
        their backoff fail now), and the autoscaler ends. The members are not touched."""
        self._core.halt()

    def statistics(self) -> PoolStatistics:
        """The pool's figures now (a frozen snapshot)."""
        return self._core.statistics()

    def __enter__(self) -> Pool[A]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        core = self._core
        state = "stopped" if core._stopped else f"size={len(core._members)}"
        return f"<Pool {self.name!r} {self.cls_name} {self.routing} {state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pool, (self.name, self.cls_name, self.handlers,
                                self._core.member_refs(), self.routing, self.circuit,
                                self.retry, self.timeout))


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
    core = PoolCore(NoHost(), name, None, cls_name, handlers, (), {}, routing=routing,
                    circuit=circuit, retry=retry, timeout=timeout,
                    sizes=(len(refs), len(refs)), owner=False)
    core.adopt(refs)
    pool: Pool[Any] = Pool.__new__(Pool)
    pool._attach(core)
    return pool


set_pool_factory(context_pool)
