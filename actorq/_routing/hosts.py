"""Where a pool's members come from: the system's supervisor, an actor's children, or
nowhere (a pool copied into another process calls the members; it does not own them)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from actorq._config import SystemConfig
from actorq._core.events import ActorEvent, EventKind
from actorq._errors import ActorStopped

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

T = TypeVar("T")


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


class NoHost:
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
