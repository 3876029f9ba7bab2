"""Control messages from actors: ready, failed, crashing, and their requests.

An actor's process speaks on its control socket (``_transport/control.py``): READY once
its constructor ran, FAILED / CRASHING before it dies of a start failure or an escaped
exception, and requests that need the system: CONNECT (a ring to another actor), LOOKUP
(a name), SPAWN / STOP_CHILD (its own children, supervised on its behalf), DEAD_LETTER
(a message it could not unpickle). Runs on the loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from actorq import _serialization
from actorq._core.actor import ActorOptions, handler_names
from actorq._core.events import EventKind
from actorq._core.protocol import Ctl
from actorq._core.ref import ActorRef
from actorq._runtime.cells import DEAD_STATES, ActorCell, CellState, new_ring
from actorq._runtime.deaths import WATCH_AFTER, Deaths
from actorq._runtime.launch import Launcher
from actorq._runtime.state import RuntimeState
from actorq._runtime.stopping import Stopper
from actorq._supervision.supervisor import Supervisor, SupervisorOps
from actorq._transport import control

logger = logging.getLogger("actorq")

# spawn_blob(blob, cls_name, handlers, name, restart, supervisor, options): the runtime's
SpawnBlob = Callable[[bytes, str, frozenset[str], "str | None", str, Supervisor, ActorOptions],
                     ActorRef[Any]]


class Requests:
    """Reads actors' control sockets and answers what they ask of the system.

    *ops* is what the supervisors made here (an actor's children's) act through: the
    runtime. *spawn_blob* starts an actor from its pickled class and arguments.
    """

    def __init__(self, state: RuntimeState, launcher: Launcher, deaths: Deaths,
                 stopper: Stopper, ops: SupervisorOps, spawn_blob: SpawnBlob) -> None:
        self._s = state
        self._launch = launcher
        self._deaths = deaths
        self._stop = stopper
        self._ops = ops
        self._spawn_blob = spawn_blob

    def on_ctrl(self, cell: ActorCell, sock: Any) -> None:
        while True:
            try:
                got = control.recv(sock)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                if self._s.hub.loop is not None:
                    self._s.hub.loop.remove_reader(sock)
                return
            try:
                self._handle_ctrl(cell, sock, got[0])
            except Exception:
                logger.exception("control message from %s failed", cell.describe())

    def _handle_ctrl(self, cell: ActorCell, sock: Any, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == Ctl.READY:
            cell.pid = msg[1]
            # not at once: the watcher thread, woken now, would take the GIL from the
            # loop just as the new process's first answers arrive
            assert self._s.hub.loop is not None
            self._s.hub.loop.call_later(WATCH_AFTER, self._deaths.watch_life, cell, cell.pid)
            if cell.state == "starting":
                cell.state = CellState.RUNNING
            # running: prepare a spare for it now, if one is free (after a restart with
            # one spare there is none: the refill prepares the next; waking the starter
            # thread for nothing would take the GIL just as the first answers arrive)
            self._launch.on_ready(cell)
            cell.ready.set()
            self._s.publish(EventKind.STARTED, cell)
            logger.debug("%s started (pid %s, restarts %d)", cell.describe(), cell.pid,
                         cell.restarts)
        elif kind == Ctl.FAILED:
            cell.failed_start = (msg[1], msg[2])
            cell.reported = "start"
        elif kind == Ctl.CRASHING:
            cell.reported = "exception"
            logger.error("%s: an exception escaped its handlers:\n%s", cell.describe(), msg[1])
        elif kind == Ctl.CONNECT:
            answer, fds = self._connect(cell, msg[2])
            control.send(sock, (Ctl.ANSWER, msg[1], answer), fds)
        elif kind == Ctl.LOOKUP:
            target = self._s.cells.get(self._s.names.get(msg[2], -1))
            found: tuple[Any, ...] = ("missing",)
            if target is not None and target.state not in DEAD_STATES:
                found = ("ref", target.id, target.handlers, target.cls_name)
            control.send(sock, (Ctl.ANSWER, msg[1], found))
        elif kind == Ctl.SPAWN:
            control.send(sock, (Ctl.ANSWER, msg[1], self._spawn_for(cell, *msg[2:])))
        elif kind == Ctl.STOP_CHILD:
            control.send(sock, (Ctl.ANSWER, msg[1], self._stop_for(cell, msg[2])))
        elif kind == Ctl.DEAD_LETTER:  # a message the actor could not unpickle
            self._s.dead.add(cell.name, msg[1], msg[2])

    def _connect(self, cell: ActorCell, target_id: int) -> tuple[tuple[Any, ...], list[int]]:
        target = self._s.cells.get(target_id)
        if target is None or target.state in DEAD_STATES:
            why = self._s.hub.gone.get(target_id, "no such actor")
            return (Ctl.GONE, target_id, why), []
        if target_id not in cell.outbound:
            seg = new_ring(self._s.config, f"{self._s.run_id}a{target_id}_in{cell.id}")
            target.inbound[cell.id] = seg
            cell.outbound[target_id] = seg.name
            if target.ctrl is not None:
                try:
                    control.send(target.ctrl, (Ctl.INBOUND, cell.id, seg.name), [cell.efd])
                except OSError:
                    pass  # restarting: the boot message will list this ring
        ring_name = cell.outbound[target_id]
        return ("channel", target_id, ring_name, target.ctl.seg.name), [target.efd]

    def _spawn_for(self, parent: ActorCell, blob: bytes, name: str | None, restart: str,
                   options: ActorOptions | None = None,
                   group: tuple[str, int, float] | None = None) -> tuple[Any, ...]:
        """An actor spawns a child: it is supervised on the actor's behalf, by the
        supervisor of its children or, with *group*, by one under it (a pool's: its own
        restart intensity, per child)."""
        try:
            cls, _args, _kwargs = _serialization.loads(blob)

            if parent.kids is None:
                parent.kids = Supervisor(self._ops, f"{parent.name}.children",
                                         give_up_per_child=True)
            sup = parent.kids if group is None else self._group_of(parent.kids, *group)
            options = options or getattr(cls, "actor_options", None) or ActorOptions()
            ref = self._spawn_blob(blob, cls.__name__, handler_names(cls), name, restart,
                                   sup, options)
        except Exception as exc:
            return ("error", exc)
        return ("ref", ref.actor_id, ref.name, ref.handlers, ref.cls_name)

    def _group_of(self, kids: Supervisor, name: str, max_restarts: int,
                  within: float) -> Supervisor:
        """The supervisor *name* under an actor's children supervisor (made on first use):
        it gives up on one child at a time, past *max_restarts* within *within* each."""
        for child in kids.children:
            if isinstance(child, Supervisor) and child.name == name:
                return child
        return Supervisor(self._ops, name, max_restarts=max_restarts, within=within, parent=kids,
                          give_up_per_child=True)

    def _stop_for(self, parent: ActorCell, child_id: int) -> tuple[Any, ...]:
        """An actor stops one of its children (asynchronously: the answer comes at once)."""
        child = self._s.cells.get(child_id)
        if child is None or parent.kids is None or child not in parent.kids.cells():
            err = ValueError(f"actor #{child_id} is not a child of {parent.describe()}")
            return ("error", err)
        parent.kids.remove(child)
        for sup in parent.kids.children:  # or under a group of them (a pool's)
            if isinstance(sup, Supervisor):
                sup.remove(child)
        self._stop.finish_group([child], f"stopped by its parent {parent.name!r}")
        return ("ok",)

