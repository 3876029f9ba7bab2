"""Supervisors: restart strategies, restart intensity, escalation, backoff.

A supervisor is plain policy code on the system's loop; it owns no process. Its
children are actor cells or other supervisors, kept in start order. What it decides is
carried out through :class:`SupervisorOps`, which the system injects::

    child died (and its restart type and cause say "restart")
        │
        ├─ intensity: more than max_restarts within `within` seconds?
        │     yes → fail: escalate to the parent, which restarts this whole subtree
        │           (its own intensity permitting) or gives up on it: stopped for good
        │     (the root, and an actor's own children, give up on the one child instead)
        └─ no → strategy picks the group: one_for_one [child], one_for_all [all],
                rest_for_one [child and those started after it]; the live ones are
                stopped (reverse start order), then all start again in start order
                after a backoff delay (exponential, full jitter; by default none
                before the first restart within the window).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from actorq._core.actor import Actor
from actorq._resilience.backoff import Backoff, RestartAtOnce
from actorq._supervision.policy import STRATEGIES, SupervisorDecision

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

logger = logging.getLogger("actorq")

A = TypeVar("A", bound=Actor)


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of a supervisor (``sup.statistics()``).

    Also readable by key (``stats["restarts"]``), as the dict it replaces.

    Attributes:
        name: its name.
        strategy: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``.
        restarts: restarts it decided (each restarts one group of actors); an escalation
            is counted by the parent that restarts this subtree, not here.
        state: ``"running"``, or ``"stopped"`` once it is stopped for good.
        children: its children's names (actors and supervisors), in start order.
    """

    name: str
    strategy: str
    restarts: int
    state: str
    children: tuple[str, ...]

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


class SupervisorOps(Protocol):
    """What a supervisor needs from the system (injected, not imported): the runtime."""

    def spawn_under(self, supervisor: Supervisor, cls: type[A], args: tuple[Any, ...],
                    kwargs: dict[str, Any], name: str | None, restart: str) -> ActorRef[A]:
        """Start an actor of *cls* as a child of *supervisor*."""
        ...

    def supervisor_under(self, parent: Supervisor, strategy: str, max_restarts: int,
                         within: float, backoff: Backoff | None,
                         name: str | None, *, give_up_per_child: bool = False) -> Supervisor:
        """Create a supervisor under *parent*."""
        ...

    def stop_supervisor(self, sup: Supervisor) -> None:
        """Stop *sup*'s subtree for good; blocks until every actor in it is gone."""
        ...

    def restart_group(self, cells: list[Any], delay: float) -> None:
        """Stop the live *cells* (reverse order), then start all of them (in order)."""
        ...

    def finish_group(self, cells: list[Any], why: str) -> None:
        """Stop *cells* for good (reverse order); their refs raise ``ActorStopped``."""
        ...

    def supervisor_event(self, decision: SupervisorDecision, supervisor: Supervisor,
                         child: Any, why: str) -> None:
        """Publish what *supervisor* decided about *child* (a cell or a supervisor)."""
        ...


class Supervisor:
    """A node of the supervision tree. Create through ``system.supervisor(...)``.

    ``spawn`` adds an actor under it, ``supervisor`` a nested supervisor; ``stop``
    stops its children (reverse start order) for good.
    """

    def __init__(self, ops: SupervisorOps, name: str, *, strategy: str = "one_for_one",
                 max_restarts: int = 1, within: float = 5.0, backoff: Backoff | None = None,
                 parent: Supervisor | None = None, give_up_per_child: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if strategy not in STRATEGIES:
            msg = f"strategy must be one of {STRATEGIES}, not {strategy!r}"
            raise ValueError(msg)
        if max_restarts < 0 or within <= 0:
            msg = f"need max_restarts >= 0 and within > 0 (got {max_restarts}, {within})"
            raise ValueError(msg)
        self._ops = ops  # the runtime: decisions are carried out and spawns go through it
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        # (the first restart within the window at once: backoff.py says why)
        self.backoff = backoff if backoff is not None else RestartAtOnce()
        self.parent = parent
        self.give_up_per_child = give_up_per_child
        self.clock = clock
        self.children: list[Any] = []  # ActorCell | Supervisor, in start order
        self.state = "running"  # running | stopped
        self._history: dict[int, deque[float]] = {}  # restart times; key 0: whole supervisor
        self.restarts = 0
        if parent is not None:
            parent.children.append(self)

    # -- the user's handle -----------------------------------------------------------------

    def spawn(self, cls: type[A], *args: Any, name: str | None = None,
              restart: str = "permanent", **kwargs: Any) -> ActorRef[A]:
        """Spawn an actor supervised by this supervisor (see ``ActorSystem.spawn``)."""
        return self._ops.spawn_under(self, cls, args, kwargs, name, restart)

    def supervisor(self, *, strategy: str = "one_for_one", max_restarts: int = 1,
                   within: float = 5.0, backoff: Backoff | None = None,
                   name: str | None = None) -> Supervisor:
        """Create a supervisor under this one (a subtree)."""
        return self._ops.supervisor_under(self, strategy, max_restarts, within, backoff, name)

    def stop(self) -> None:
        """Stop every child (reverse start order) for good; blocks until they are gone."""
        self._ops.stop_supervisor(self)

    def statistics(self) -> SupervisorStatistics:
        """Name, strategy, restarts so far, state and the children's names in start order."""
        return SupervisorStatistics(self.name, self.strategy, self.restarts, self.state,
                                    tuple(c.name for c in self.children))

    # -- decisions (system loop thread) -----------------------------------------------------

    def cells(self) -> list[Any]:
        """Every actor cell below this supervisor, depth first, in start order."""
        out: list[Any] = []
        for child in self.children:
            out.extend(child.cells() if isinstance(child, Supervisor) else [child])
        return out

    def child_failed(self, child: Any, why: str) -> None:
        """A child died (restartable) or a child supervisor failed: restart or give up."""
        if self.state != "running":
            return
        key = child.id if self.give_up_per_child else 0
        history = self._history.setdefault(key, deque())
        now = self.clock()
        history.append(now)
        while history and now - history[0] > self.within:
            history.popleft()
        if len(history) > self.max_restarts:
            self._give_up(child, why, len(history))
            return
        delay = self.backoff.delay(len(history) - 1)
        group = self._group(child)
        self.restarts += 1
        self._ops.supervisor_event("restarted", self, child, why)
        if isinstance(child, Supervisor):
            child.reset()
        self._ops.restart_group(group, delay)
        # said once the restart is under way: a restart onto a prepared spare sends it
        # its GO before this line is formatted and written (issue 15)
        logger.warning("supervisor %r: %s; restarting %d actor(s) (%s) in %.3fs",
                       self.name, why, len(group), self.strategy, delay)

    def _group(self, child: Any) -> list[Any]:
        if self.strategy == "one_for_one" or child not in self.children:
            members = [child]
        elif self.strategy == "one_for_all":
            members = list(self.children)
        else:  # rest_for_one
            members = self.children[self.children.index(child):]
        cells: list[Any] = []
        for member in members:
            cells.extend(member.cells() if isinstance(member, Supervisor) else [member])
        return cells

    def _give_up(self, child: Any, why: str, count: int) -> None:
        reason = (f"{why}; more than {self.max_restarts} restarts within {self.within:g}s "
                  f"({count}), supervisor {self.name!r} gave up")
        if self.give_up_per_child or self.parent is None:
            logger.error("%s", reason)
            self._ops.supervisor_event("gave_up", self, child, reason)
            self.remove(child)
            if isinstance(child, Supervisor):
                child.mark_stopped()
            self._ops.finish_group(child.cells() if isinstance(child, Supervisor) else [child],
                                   reason)
            return
        logger.error("%s; escalating to %r", reason, self.parent.name)
        self._ops.supervisor_event("escalated", self, child, reason)
        self.parent.child_failed(self, reason)

    def reset(self) -> None:
        """Restarted by the parent: a fresh subtree with no restart history."""
        self._history.clear()
        self.state = "running"
        for child in self.children:
            if isinstance(child, Supervisor):
                child.reset()

    def mark_stopped(self) -> None:
        """This subtree is stopped for good: no more spawns into it."""
        self.state = "stopped"
        for child in self.children:
            if isinstance(child, Supervisor):
                child.mark_stopped()

    def remove(self, child: Any) -> None:
        """Forget *child* (it is gone for good)."""
        if child in self.children:
            self.children.remove(child)
        self._history.pop(getattr(child, "id", -1), None)

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy} children={len(self.children)}>"

    # Supervisors and cells share the tree; a supervisor's id keys per-child history.
    @property
    def id(self) -> int:
        """A key unique among the parent's children."""
        return -id(self)


Supervisor.__module__ = "actorq"
