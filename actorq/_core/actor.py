"""The Actor base class, its context, and which methods count as handlers."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from actorq._core.events import CAUSES

if TYPE_CHECKING:
    from actorq._config import SystemConfig
    from actorq._core.ref import ActorRef

HOOKS = frozenset({"on_start", "on_stop", "receive"})


def is_handler_name(name: str) -> bool:
    """True for public names that are not lifecycle hooks."""
    return not name.startswith("_") and name not in HOOKS


def handler_names(cls: type) -> frozenset[str]:
    """Return the names of *cls*'s handlers: its public methods, hooks excluded.

    Remembered per class (``inspect.getmembers`` cost ≈ 0.7 ms a spawn, a third of the
    user process's share of starting an actor), and read again if the class or a base
    gained or lost attributes since.
    """
    shape = tuple(len(c.__dict__) for c in cls.__mro__)
    known = _HANDLERS.get(cls)
    if known is not None and known[0] == shape:
        return known[1]
    names = set()
    for name, value in inspect.getmembers(cls):
        if is_handler_name(name) and callable(value) and name not in _BASE_ATTRS:
            names.add(name)
    found = frozenset(names)
    try:
        _HANDLERS[cls] = (shape, found)
    except TypeError:  # not weakly referenceable
        pass
    return found


_HANDLERS: weakref.WeakKeyDictionary[type, tuple[tuple[int, ...], frozenset[str]]] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class ActorOptions:
    """Per-actor runtime options: set ``actor_options`` on the class, or pass it to spawn.

    Args:
        hang_timeout: seconds a single handler may run; past it the process is killed and
            restarted (cause ``"hang"``). None: no limit.
        max_rss: bytes of resident memory the process may use; past it the process is
            killed and restarted (cause ``"oom"``). None: no limit.
        restart_on: causes after which a permanent or transient actor is restarted
            (default: all but ``"start"``: a constructor that raised would raise again).
        redeliver: give the message being handled at a crash to the restarted instance
            (instead of failing its caller with ``ActorCrashed``).
        poison_after: with ``redeliver``, a message that crashed the actor this many times
            in a row goes to the dead letters and its caller gets ``ActorCrashed``.
        window_target: turn the adaptive credit window on, with this target (seconds)
            for the p99 of the time a message spends in the actor (read to handled):
            above it the window halves, under it the window grows by ``window_step``.
            None (default): the window is fixed at the system's ``window``.
        window_min: the adaptive window never goes below this.
        window_max: ... nor above this (default: the system's ``window``).
        window_step: additive increase per healthy period.
    """

    hang_timeout: float | None = None
    max_rss: int | None = None
    restart_on: frozenset[str] = field(default=CAUSES - {"start"})
    redeliver: bool = False
    poison_after: int = 3
    window_target: float | None = None
    window_min: int = 8
    window_max: int | None = None
    window_step: int = 16

    def __post_init__(self) -> None:
        if self.window_target is not None and self.window_target <= 0:
            msg = f"window_target must be positive seconds, not {self.window_target}"
            raise ValueError(msg)
        if self.window_min < 1 or (self.window_max is not None
                                   and self.window_max < self.window_min):
            msg = f"need 1 <= window_min <= window_max (got {self.window_min}, {self.window_max})"
            raise ValueError(msg)
        if isinstance(self.restart_on, str):
            msg = (f"restart_on must be a set of causes, such as {{{self.restart_on!r}}}, "
                   f"not the string {self.restart_on!r}")
            raise TypeError(msg)
        unknown = set(self.restart_on) - CAUSES
        if unknown:
            msg = f"restart_on has unknown causes {sorted(unknown)}; known: {sorted(CAUSES)}"
            raise ValueError(msg)
        object.__setattr__(self, "restart_on", frozenset(self.restart_on))
        if self.hang_timeout is not None and self.hang_timeout <= 0:
            msg = f"hang_timeout must be positive, not {self.hang_timeout}"
            raise ValueError(msg)
        if self.max_rss is not None and self.max_rss <= 0:
            msg = f"max_rss must be positive, not {self.max_rss}"
            raise ValueError(msg)
        if self.poison_after < 1:
            msg = f"poison_after must be at least 1, not {self.poison_after}"
            raise ValueError(msg)


ActorOptions.__module__ = "actorq"


class ContextOps(Protocol):
    """What an actor's context needs from the process hosting it (injected, not imported)."""

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the actor registered as *name*."""
        ...

    def spawn_child(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None, restart: str,
                    group: tuple[str, int, float] | None = None) -> ActorRef[Any]:
        """Spawn *cls* as a child of the current actor (*group*: under a supervisor of
        its children named so, ``(name, max_restarts, within)``, made on first use)."""
        ...

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled; None without one."""
        ...

    def call_token(self) -> Any:
        """The token the call being handled carries; None without one."""
        ...

    def stop_child(self, ref: ActorRef[Any]) -> None:
        """Stop a child of the current actor for good."""
        ...

    def system_config(self) -> SystemConfig:
        """The configuration of the system the actor runs in."""
        ...


_pool_factory: list[Callable[..., Any]] = []  # set by actorq._routing (a layer above)


def set_pool_factory(factory: Callable[..., Any]) -> None:
    """Let ``ActorContext.pool`` build pools (called by the routing layer at import)."""
    _pool_factory[:] = [factory]


class ActorContext:
    """What an actor can see of the runtime: ``lookup``, ``spawn``, ``pool``, ``time_left``,
    ``restarts``, ``name``."""

    __slots__ = ("_ops", "name", "restarts")

    def __init__(self, ops: ContextOps, name: str, restarts: int) -> None:
        self._ops = ops
        self.name = name
        self.restarts = restarts

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the ref of the actor registered under *name* (``KeyError`` if none)."""
        return self._ops.lookup(name)

    def spawn(self, cls: type, *args: Any, name: str | None = None,
              restart: str = "permanent", **kwargs: Any) -> ActorRef[Any]:
        """Spawn a child actor supervised by this one; returns its ref at once."""
        return self._ops.spawn_child(cls, args, kwargs, name, restart)

    def time_left(self) -> float | None:
        """Seconds left until the deadline of the call being handled (negative once it
        passed), or None if the call carries none (``timeout=`` of a pool call, or
        ``ref.call_with_deadline``). Use it to give up early or to size inner timeouts."""
        return self._ops.time_left()

    @property
    def token(self) -> Any:
        """The token of the call being handled, the same for every attempt of it: a
        pool call's ``idempotency_key`` when the caller gave one, else a string unique to
        the call. None for a call that carries none (a plain ref call, or a call of a
        pool without retry, circuit or timeout, which is never retried). A member uses
        it to do a side effect once across retries (see ``docs/concepts.md``)."""
        return self._ops.call_token()

    def pool(self, cls: type, *args: Any, **options: Any) -> Any:
        """Start a pool of children of this actor (see ``ActorSystem.pool``; same options).

        Its members are this actor's children, called from this process over their own
        channels; they stop when this actor stops.
        """
        if not _pool_factory:  # pragma: no cover - actorq/__init__ loads the routing layer
            msg = "pools need actorq's routing layer (import actorq)"
            raise RuntimeError(msg)
        return _pool_factory[0](self._ops, cls, args, options)


class Actor:
    """Base class of user actors. Each instance lives in its own process.

    Public methods are handlers, called through an ``ActorRef``; they may be ``def`` or
    ``async def`` (run on the actor's uvloop loop). Messages are handled one at a time,
    in order per sender. ``receive(message)`` handles ``ref.tell(msg)`` and
    ``ref.ask(msg)``. ``on_start``/``on_stop`` run in the actor's process.
    """

    _actorq_ref: ActorRef[Any]
    _actorq_context: ActorContext
    #: Runtime options of this class's actors (an ``actorq.ActorOptions``): hang timeout,
    #: memory limit, which crashes restart it, poison messages. None: the defaults.
    actor_options: ClassVar[ActorOptions | None] = None

    @property
    def ref(self) -> ActorRef[Any]:
        """This actor's own ref (pass it to others so that they can call back)."""
        return self._actorq_ref

    @property
    def context(self) -> ActorContext:
        """This actor's context: ``lookup(name)``, ``spawn(...)``, ``restarts``."""
        return self._actorq_context

    def receive(self, message: Any) -> Any:
        """Handle a message sent with ``tell``/``ask``; override it to accept messages."""
        msg = f"{type(self).__name__} got a message but does not define receive(): {message!r}"
        raise NotImplementedError(msg)

    def on_start(self) -> Any:
        """Run once the actor's process is up, before any message (sync or async)."""

    def on_stop(self) -> Any:
        """Run when the actor is stopped gracefully (not after SIGKILL)."""


_BASE_ATTRS = frozenset({"ref", "context", "actor_options"})
Actor.__module__ = "actorq"
