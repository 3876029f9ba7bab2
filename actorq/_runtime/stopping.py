"""Stopping actors: for good (``finish_group``), gone for good (``finish``), and teardown.

A stop, from the request to the actor gone::

    finish_group ── name released (a successor may take it at once)
       ├─ alive: ask_to_stop (C_STOP slot + STOP message; SIGKILL of its process tree
       │    after ``stop_timeout``) → its death (deaths.py) → finish
       └─ not alive: finish ── queued messages → dead letters; callers fail
            (ActorStopped, or ActorCrashed with the cause); peers told GONE; past
            ``stopped_kept`` the oldest stopped actor is forgotten (its shared memory)

``close()`` (runtime.py) writes down the shutdown order; the steps that wait for actors
and release their processes and memory are here (``wait_stopped``, ``reap``,
``release_all``). Runs on the loop thread, except ``stop_cell`` and the teardown steps
(the user's thread).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from actorq._clock import Deadline
from actorq._core.events import EventKind
from actorq._core.protocol import C_STOP, Ctl
from actorq._core.reply import Reply
from actorq._errors import ActorCrashed, ActorStopped
from actorq._process.reap import kill_tree
from actorq._runtime.cells import DEAD_STATES, ActorCell, CellState
from actorq._runtime.crashes import dead_letter_queued
from actorq._runtime.state import RuntimeState
from actorq._transport import control
from actorq._transport.oob import forget_mapped
from actorq._transport.shm import unlink_prefix

logger = logging.getLogger("actorq")

INTERRUPT_SLICE = 0.2  # seconds: the longest a Ctrl-C waits to be seen (wait_in_slices)
NOTICE_AFTER = 0.5  # seconds close() waits for actors before it says that it waits


class Stopper:
    """Stops actors and forgets them; releases their processes and memory at close."""

    def __init__(self, state: RuntimeState) -> None:
        self._s = state

    def finish_group(self, cells: list[ActorCell], why: str) -> None:
        """Stop *cells* for good, in reverse start order (SupervisorOps)."""
        for cell in reversed(cells):
            if cell.state in DEAD_STATES:
                continue
            cell.finish_why = why
            self.release_name(cell)  # a successor may take the name at once
            if cell.alive():
                self.ask_to_stop(cell)
                cell.state = CellState.STOPPING
            else:
                self.finish(cell, CellState.STOPPED, why)

    def ask_to_stop(self, cell: ActorCell) -> None:
        """Graceful stop now, SIGKILL (process tree) after the stop timeout."""
        cell.ctl.slots[C_STOP] = 1  # a busy actor sees it between two messages
        if cell.ctrl is not None:
            try:
                control.send(cell.ctrl, (Ctl.STOP,))
            except OSError:
                pass
        proc = cell.proc
        assert self._s.hub.loop is not None
        self._s.hub.loop.call_later(self._s.config.stop_timeout, self._kill_if_still, cell, proc)

    def _kill_if_still(self, cell: ActorCell, proc: Any) -> None:
        if cell.proc is proc and proc is not None:
            logger.warning("%s did not stop within %gs: killing it", cell.describe(),
                           self._s.config.stop_timeout)
            self.kill(cell)

    def kill(self, cell: ActorCell) -> None:
        """SIGKILL *cell*'s process tree (if it has a process)."""
        proc = cell.proc
        if proc is None:
            return
        try:
            pid = proc.pid
        except ValueError:
            # closed: the loop thread reaped it and is about to clear ``cell.proc``
            # (``Deaths``), while this thread (closing the system) found it late
            return
        if pid is not None:
            kill_tree(pid)

    def stop_kids(self, cell: ActorCell, why: str) -> None:
        """Stop for good the children *cell* spawned itself (they die with it)."""
        kids = cell.kids
        if kids is None:
            return
        cells = kids.cells()
        kids.children.clear()
        self.finish_group(cells, why)

    def finish(self, cell: ActorCell, state: CellState, why: str, cause: str = "stopped",
                error: BaseException | None = None) -> None:
        """The actor is gone for good: fail what waits on it, tell its callers."""
        if cell.state in DEAD_STATES:
            return
        hub = self._s.hub
        hub.gone[cell.id] = why
        self.release_name(cell)
        cell.state = state
        if cell.supervisor is not None:
            cell.supervisor.remove(cell)
        if cell.kids is not None:
            self.stop_kids(cell, f"their parent {cell.describe()} stopped")

        about = why if cell.describe() in why else f"{cell.describe()} {why}"

        def failure(reply: Reply[Any]) -> BaseException:
            if state == "failed":
                exc: BaseException = ActorCrashed(f"{reply.describe}: {about}", "start")
                exc.__cause__ = error
                return exc
            if cause not in ("stopped",):
                return ActorCrashed(f"{reply.describe}: {about}", cause)
            return ActorStopped(f"{reply.describe}: {about}")

        with hub.drain_lock:
            chan = hub.outbound.pop(cell.id, None)
            inchan = hub.inbound.pop(cell.id, None)
        unsent: list[tuple[Any, ...]] = []
        if chan is not None:
            unsent = hub.close_channel(chan, about, fail_replies=False)
            chan.close()
        if inchan is not None:
            inchan.close()
        # dead letters first, callers second: a caller whose call just failed finds its
        # message among the dead letters
        dead_letter_queued(cell, why, self._s.dead, unsent)
        hub.fail_pending(cell.id, failure)
        for other in self._s.cells.values():
            if other.ctrl is not None and cell.id in other.outbound:
                try:
                    control.send(other.ctrl, (Ctl.GONE, cell.id, why))
                except OSError:
                    pass
        cell.exited.set()
        cell.ready.set()
        self._s.publish(EventKind.STOPPED, cell, None if cause == "stopped" else cause, about)
        self._s.finished.append(cell.id)
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Past ``stopped_kept`` actors gone for good, forget the oldest: its record (no
        longer in ``metrics()``), and its shared memory and doorbell (loop thread)."""
        while len(self._s.finished) > self._s.config.stopped_kept and not self._s.closing:
            cell = self._s.cells.get(self._s.finished[0])
            if cell is not None and cell.proc is not None:
                return  # its process is still on its way out: next time
            self._s.finished.popleft()
            if cell is None:
                continue
            with self._s.lock:
                del self._s.cells[cell.id]
                self._s.monitored.pop(cell.id, None)
            for seg in cell.inbound.values():
                seg.close()
                seg.unlink()
            cell.inbound.clear()
            cell.ctl.close()
            cell.ctl.seg.unlink()
            cell.spec.close()
            cell.spec.unlink()
            os.close(cell.efd)

    def release_name(self, cell: ActorCell) -> None:
        """Free *cell*'s name (if it still holds it): a successor may take it."""
        with self._s.lock:
            if self._s.names.get(cell.name) == cell.id:
                del self._s.names[cell.name]

    def stop_cell(self, cell: ActorCell, timeout: float | None) -> None:
        """User thread: stop *cell* for good; block until its process is gone and the loop
        has handled its exit (kill it past *timeout*, default ``stop_timeout``)."""
        if cell.state in DEAD_STATES:
            return
        deadline = Deadline.after(timeout if timeout is not None else self._s.config.stop_timeout)
        cell.ready.wait(deadline.remaining())  # let a starting process come up first
        done = threading.Event()

        def request() -> None:
            self.finish_group([cell], "it was stopped")
            done.set()

        self._s.on_loop(request)
        done.wait(5.0)
        if not cell.exited.wait(deadline.remaining() + 0.5):
            self.kill_late(cell, deadline.timeout)
        cell.exited.wait(self._s.config.stop_timeout)
        settled = threading.Event()
        self._s.on_loop(settled.set)  # the loop has handled the exit
        settled.wait(2.0)

    def kill_late(self, cell: ActorCell, seconds: float) -> None:
        """Kill *cell*'s process, which did not stop within *seconds*; say so."""
        if cell.proc is not None:
            logger.warning("%s did not stop within %gs: killing it", cell.describe(), seconds)
            self.kill(cell)

    def wait_stopped(self, cells: list[ActorCell]) -> None:
        """Wait up to ``stop_timeout`` for every actor to stop; kill those that do not."""
        deadline = Deadline.after(self._s.config.stop_timeout)
        told = False
        for cell in cells:
            if cell.proc is None:
                continue
            if not told and not cell.exited.wait(min(NOTICE_AFTER, deadline.remaining())):
                told = True
                live = sum(1 for c in cells if c.proc is not None and not c.exited.is_set())
                notice(f"waiting up to {deadline.remaining():.1f}s for {live} actor(s) to "
                       "finish their current message and stop (Ctrl-C kills them now)")
            if cell.proc is not None and not wait_in_slices(cell.exited, deadline):
                self.kill_late(cell, self._s.config.stop_timeout)
        for cell in cells:
            if cell.proc is not None:
                cell.exited.wait(5.0)

    def reap(self, cell: ActorCell) -> None:
        """At close: join *cell*'s process (kill its tree past ``stop_timeout``)."""
        proc = cell.proc
        if proc is None:
            return
        proc.join(self._s.config.stop_timeout)
        if proc.exitcode is None:
            kill_tree(proc.pid)
            proc.join(5)
        if cell.ctrl is not None:
            cell.ctrl.close()
        cell.proc = cell.ctrl = None

    def release_all(self, cells: list[ActorCell]) -> None:
        """At close, last: close every channel, segment and doorbell; unlink the run's."""
        hub = self._s.hub
        for chan in list(hub.outbound.values()):
            chan.close()
        for inchan in list(hub.inbound.values()):
            inchan.close()
        hub.outbound.clear()
        hub.inbound.clear()
        for cell in cells:
            for seg in cell.inbound.values():
                seg.close()
            cell.ctl.close()
            cell.spec.close()
            os.close(cell.efd)
        hub.pool.close()
        forget_mapped(self._s.run_id)
        hub.ctl.close()
        os.close(hub.efd)
        unlink_prefix(self._s.run_id)



def wait_in_slices(event: threading.Event, deadline: Deadline) -> bool:
    """``event.wait(deadline.remaining())`` that a Ctrl-C cannot slip past.

    A signal that lands after Python last checked for one and before the wait's system
    call starts is only handled when that call returns (CPython's own race: ``time.sleep``
    and ``Event.wait`` have it too). Waiting in short slices bounds that delay, so a second
    Ctrl-C while close() waits is seen within ``INTERRUPT_SLICE`` seconds, never minutes.
    """
    while not event.is_set():
        left = deadline.remaining()
        if left <= 0:
            return False
        event.wait(min(left, INTERRUPT_SLICE))
    return True


def notice(text: str) -> None:
    """Tell the user something they are waiting on: a warning of the ``actorq`` logger.

    Without any logging configured (only the library's NullHandler), the warning would be
    swallowed, so the line goes to stderr instead, prefixed with ``actorq:``.
    """
    configured = logging.getLogger().handlers or any(
        not isinstance(h, logging.NullHandler) for h in logger.handlers)
    if configured:
        logger.warning("%s", text)
    else:
        sys.stderr.write(f"actorq: {text}\n")
        sys.stderr.flush()
