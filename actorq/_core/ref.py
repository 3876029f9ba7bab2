"""ActorRef[A]: the handle through which actors are called, from anywhere.

A ref pickles as (run, actor id, name, handler names): unpickled inside another actor of
the same run, it calls through that process's own direct channel to the target.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from actorq._core.reply import Reply
from actorq._errors import ActorStopped, CircuitOpen
from actorq._resilience.circuit import CircuitBreaker

A = TypeVar("A")


class Sender(Protocol):
    """What a ref sends through: the hub of the process it is used in."""

    def call(self, ref: ActorRef[Any], method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any] | None, on_outcome: Any = None) -> Reply[Any]:
        """Send a call to *ref*'s actor and return its reply (*on_outcome*: its hook)."""
        ...

    def call_deadline(self, ref: ActorRef[Any], method: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any] | None, deadline: float | None,
                      call_token: Any = None, on_outcome: Any = None,
                      token_prefix: str | None = None) -> Reply[Any]:
        """Send a call carrying *deadline* (a float of ``time.monotonic()`` seconds, None:
        none) and a
        token (or a *token_prefix*: see ``Hub.call_deadline``); *on_outcome*: the reply's
        hook (``ActorRef.call_with``)."""
        ...

    def tell(self, ref: ActorRef[Any], message: Any, nowait: bool) -> None:
        """Send *message* to *ref*'s actor's ``receive`` (*nowait*: raise ``Backpressure``
        rather than wait for credit)."""
        ...

    def bind_tell(self, ref: ActorRef[Any], nowait: bool) -> Callable[[Any], None]:
        """``tell`` for *ref*, bound once (what ``ref.tell`` is after its first use)."""
        ...

    def channel_statistics(self, target: int) -> ChannelStatistics:
        """The figures of this process's channel to actor *target*."""
        ...


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """This process's channel to one actor, as the kernel's flow control sees it
    (``ref.channel_statistics()``). All zeros for a channel not opened yet.

    Attributes:
        window: the credit window now (the receiver's adaptive one if it is smaller).
        in_flight: messages sent on it and not handled yet (the credits in use), plus
            those still buffered in this process.
        waiting: senders waiting for credit right now (threads, or parked sends).
        waits: times a sender had to wait for credit, since the channel opened.
        wait_seconds: the time they waited, in all.
        backpressure: ``Backpressure`` errors raised to senders on it.
    """

    window: int
    in_flight: int
    waiting: int
    waits: int
    wait_seconds: float
    backpressure: int


ChannelStatistics.__module__ = "actorq"

_hubs: dict[str, Sender] = {}


def register_hub(run_id: str, hub: Sender) -> None:
    """Make *hub* the one that refs of *run_id* unpickled in this process use."""
    _hubs[run_id] = hub


def unregister_hub(run_id: str) -> None:
    """Forget the hub of *run_id* (its system closed)."""
    _hubs.pop(run_id, None)


def _rebuild_ref(run_id: str, actor_id: int, name: str, handlers: frozenset[str],
                 cls_name: str, priority: int = 0) -> ActorRef[Any]:
    ref: ActorRef[Any] = ActorRef(_hubs.get(run_id), run_id, actor_id, name, handlers, cls_name)
    ref._priority = priority
    return ref


class _BoundTell:
    """``ActorRef.tell`` and ``tell_nowait``: the first lookup on a ref gets the hub's
    function for it (``Sender.bind_tell``) and keeps it in the ref's ``__dict__``, where
    every later lookup finds it first (this descriptor has no ``__set__``). A tell then
    runs no code of the ref and reads none of its attributes: each such read costs more
    here than elsewhere (``__getattr__`` puts every lookup on the slow path)."""

    def __init__(self, nowait: bool, doc: str) -> None:
        self.nowait = nowait
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ref: ActorRef[Any] | None, owner: type | None = None) -> Any:
        if ref is None:
            return self  # on the class: for help()
        hub = ref._hub or _hubs.get(ref.run_id)
        if hub is None:  # not attached (yet): look again at the call, raise there
            return functools.partial(_tell_unattached, ref, self.nowait)
        ref._hub = hub
        fn = hub.bind_tell(ref, self.nowait)
        ref.__dict__[self.name] = fn
        return fn


def _tell_unattached(ref: ActorRef[Any], nowait: bool, message: Any) -> None:
    ref._get_hub().bind_tell(ref, nowait)(message)


class ActorRef(Generic[A]):
    """A reference to an actor: ``ref.method(...)``, ``call``, ``tell``, ``ask``, ``tell_nowait``.

    Every public method of the actor's class is available as an attribute returning a
    ``Reply``. Refs compare equal when they name the same actor, and are picklable.
    A handler whose name is one of the ref's own attributes (``call``, ``ask``, ``tell``,
    ``tell_nowait``, ``with_priority``, ``name``, ``actor_id``, ``run_id``, ``handlers``,
    ``cls_name``) is
    reached with ``ref.call("name", ...)``.
    """

    # __dict__: ``tell`` and ``tell_nowait``, once looked up, are the hub's functions bound
    # to this ref, found there before the class's attributes (``_BoundTell``)
    __slots__ = ("__dict__", "_hub", "_methods", "_priority", "actor_id", "cls_name",
                 "handlers", "name", "run_id")

    def __init__(self, hub: Sender | None, run_id: str, actor_id: int, name: str,
                 handlers: frozenset[str], cls_name: str) -> None:
        self._hub = hub
        self.run_id = run_id
        self.actor_id = actor_id
        self.name = name
        self.handlers = handlers
        self.cls_name = cls_name
        self._methods: dict[str, Any] = {}
        self._priority = 0

    def with_circuit(self, breaker: CircuitBreaker) -> GuardedRef[A]:
        """Return a ref to the same actor whose calls go through *breaker*.

        While the circuit is open, calls fail at once (the reply raises ``CircuitOpen``,
        nothing is sent); crashes, timeouts and the breaker's ``failure_on`` types count
        against it. Share one breaker between the refs that should trip together.
        """
        if not isinstance(breaker, CircuitBreaker):
            msg = f"with_circuit() needs an actorq.CircuitBreaker, not {breaker!r}"
            raise TypeError(msg)
        return GuardedRef(self, breaker)

    def with_priority(self, priority: int) -> ActorRef[A]:
        """Return a ref to the same actor whose messages carry *priority*.

        Under pressure (no credit left), producers wait in line by priority, then first
        come first served: higher-priority messages get the credit that comes back first.
        """
        ref: ActorRef[A] = ActorRef(self._hub, self.run_id, self.actor_id, self.name,
                                    self.handlers, self.cls_name)
        ref._priority = int(priority)
        return ref

    def _twin(self) -> ActorRef[A]:
        """A ref equal to this one, with its priority (not its bound functions)."""
        return self.with_priority(self._priority)

    def _get_hub(self) -> Sender:
        hub = self._hub
        if hub is None:
            hub = self._hub = _hubs.get(self.run_id)
            if hub is None:
                msg = f"{self._describe()} belongs to an actor system that is not running here"
                raise ActorStopped(msg)
        return hub

    def _describe(self, method: str | None = None) -> str:
        """Return ``"Counter 'name'"`` or ``"Counter 'name'.method"`` for messages."""
        base = f"{self.cls_name} {self.name!r}"
        return f"{base}.{method}" if method else base

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            if method.startswith("__"):
                raise AttributeError(method)  # a protocol probe (copy, pickle, hasattr)
            msg = (f"{self._describe()} has no handler {method!r}: names starting with "
                   "'_' are never handlers (only public methods can be called through a ref)")
            raise AttributeError(msg)
        bound = self._methods.get(method)
        if bound is None:
            self._check_method(method)
            bound = self._methods[method] = self._bind(method)
        return bound

    def _bind(self, method: str) -> Any:
        """``ref.method``: straight to the hub (the name was checked once, here).

        With the C helpers: the hub's ``bind_call`` (a ``LoneCaller``, which sends the
        common call, one argument of plain data, with no Python frame and hands any
        other to ``hub.call``)."""

        ref = self
        # the hub, held here once known (a ref's hub never changes once set): each read
        # of a ref's attribute goes through ``__getattr__``'s slow lookup (~250
        # instructions), once per call otherwise
        hub = self._hub
        bind_call = getattr(hub, "bind_call", None)  # (a user's waiter may not have it)
        if bind_call is not None:
            caller = bind_call(ref, method)
            if caller is not None:
                return caller

        def bound(*args: Any, **kwargs: Any) -> Reply[Any]:
            nonlocal hub
            if hub is None:  # not attached when bound (an unpickled ref): look it up
                hub = ref._get_hub()
            return hub.call(ref, method, args, kwargs)

        bound.__name__ = bound.__qualname__ = method
        return bound

    def _check_method(self, method: str) -> None:
        if method not in self.handlers:
            known = ", ".join(sorted(self.handlers)) or "none"
            msg = (f"{self._describe()} has no handler {method!r} "
                   f"(its public methods: {known})")
            raise AttributeError(msg)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Reply[Any]:
        """Call *method* with *args*/*kwargs* in the actor; return a ``Reply`` at once.

        Raises ``AttributeError`` for an unknown method and ``TypeError`` for an argument
        that cannot be pickled, before anything is sent; ``ActorStopped`` if the actor is
        gone; ``Backpressure`` when a synchronous caller waited past the send timeout.
        """
        if method != "receive":
            self._check_method(method)
        return self._get_hub().call(self, method, args, kwargs)

    def call_with_deadline(self, deadline: float, method: str, *args: Any,
                           **kwargs: Any) -> Reply[Any]:
        """Like ``call``, with an absolute *deadline* (``time.monotonic()`` seconds) that
        travels with the message: the actor drops the call unrun if the deadline passed
        while it was queued (the reply raises ``CallTimeout``), and the handler can read
        ``self.context.time_left()``. The reply does not wait past the deadline by itself:
        use ``result(timeout)`` as usual."""
        if method != "receive":
            self._check_method(method)
        return self._get_hub().call_deadline(self, method, args, kwargs, float(deadline))

    def call_with(self, method: str, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, *, deadline: float | None = None,
                  token: Any = None,
                  on_outcome: Callable[[Reply[Any], Any, BaseException | None], bool]
                  | None = None) -> Reply[Any]:
        """Call *method* with the message carrying an absolute *deadline* (as
        ``call_with_deadline``; None: none) and a *token* the handler reads as
        ``self.context.token`` (None: none; plain data, a str or an int best). A pool
        sends every attempt of a call with the same token, so that a member can do a
        side effect once across retries.

        *on_outcome(reply, value, exc)*, if given, runs once when the call's outcome
        arrives, before it is published (before ``done()`` turns True, waiters wake and
        callbacks run), on the thread that completes the reply: quick, never blocking.
        It returns False to publish the outcome, or True to take the reply over: it then
        stays pending until its taker completes it (``set_result``/``set_exception``,
        e.g. with a retry's outcome), or the hook completed it itself. A pool retries a
        failed call this way without a second reply for calls that succeed. An
        exception it raises is logged and the outcome published."""
        if method != "receive" and method not in self.handlers:
            self._check_method(method)  # raises
        if deadline is None and token is None:  # a plain call: the shorter message
            return (self._hub or self._get_hub()).call(self, method, args, kwargs, on_outcome)
        return (self._hub or self._get_hub()).call_deadline(
            self, method, args, kwargs, None if deadline is None else float(deadline),
            token, on_outcome)

    def ask(self, message: Any) -> Reply[Any]:
        """Send *message* to the actor's ``receive`` and return a ``Reply`` with its answer."""
        return self._get_hub().call(self, "receive", (message,), None)

    def channel_statistics(self) -> ChannelStatistics:
        """The flow-control figures of this process's channel to the actor: credits in
        use, the window, senders waiting for credit now and so far, ``Backpressure``
        errors. Read without locks (a snapshot; cheap). A pool grows on these."""
        return self._get_hub().channel_statistics(self.actor_id)

    tell = _BoundTell(False, """Send *message* to the actor's ``receive``; no reply.

        In synchronous code, waits for mailbox credit up to the send timeout, then raises
        ``Backpressure``; on a running event loop it never waits.
        """)
    tell_nowait = _BoundTell(True, """Like ``tell`` but never waits: raises ``Backpressure``
        if the mailbox has no credit.""")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_ref, (self.run_id, self.actor_id, self.name, self.handlers,
                               self.cls_name, self._priority))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActorRef):
            return NotImplemented
        return (self.run_id, self.actor_id) == (other.run_id, other.actor_id)

    def __hash__(self) -> int:
        return hash((self.run_id, self.actor_id))

    def __repr__(self) -> str:
        return f"<ActorRef {self._describe()} #{self.actor_id} of run {self.run_id}>"


ActorRef.__module__ = "actorq"
Reply.__module__ = "actorq"


class GuardedRef(Generic[A]):
    """A ref whose calls pass through a ``CircuitBreaker`` (``ref.with_circuit(breaker)``).

    ``guarded.method(...)``, ``call``, ``ask`` return a ``Reply``; ``tell`` is not
    guarded (no outcome to learn from). ``breaker`` and ``ref`` are public.
    """

    __slots__ = ("breaker", "ref")

    def __init__(self, ref: ActorRef[A], breaker: CircuitBreaker) -> None:
        self.ref = ref
        self.breaker = breaker

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        self.ref._check_method(method)

        def bound(*args: Any, **kwargs: Any) -> Reply[Any]:
            return self._guard(method, args, kwargs)

        bound.__name__ = bound.__qualname__ = method
        return bound

    def call(self, method: str, *args: Any, **kwargs: Any) -> Reply[Any]:
        """``ActorRef.call`` through the circuit."""
        if method != "receive":
            self.ref._check_method(method)
        return self._guard(method, args, kwargs)

    def ask(self, message: Any) -> Reply[Any]:
        """``ActorRef.ask`` through the circuit."""
        return self._guard("receive", (message,), {})

    def tell(self, message: Any) -> None:
        """``ActorRef.tell`` (not guarded: a tell has no outcome)."""
        self.ref.tell(message)

    def _guard(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Reply[Any]:
        breaker = self.breaker
        if not breaker.allow():
            wait = max(0.0, breaker.next_probe_at() - breaker.clock())
            reply: Reply[Any] = Reply.pending(self.ref._describe(method))
            msg = (f"{self.ref._describe(method)}: its circuit is open; the next probe is "
                   f"due in {wait:.2f}s")
            reply.set_exception(CircuitOpen(msg))
            return reply
        try:
            reply = self.ref.call(method, *args, **kwargs)
        except ActorStopped as exc:
            breaker.record_failure()
            raise exc from None
        except BaseException:
            breaker.record_success()  # bad input: not the target's fault; frees a probe
            raise
        reply.add_done_callback(lambda r: breaker.record(r._exc))
        return reply

    def __repr__(self) -> str:
        return f"<GuardedRef {self.ref._describe()} circuit={self.breaker.state}>"


