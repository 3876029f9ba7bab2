"""Deaths of actors' processes, and restarts.

A crash, from the process's death to the next instance::

    early notice (lifelock watcher thread: on_life_lost) or sentinel (on_exit)
    ─▶ loop thread: _died ── classify (signal / exit / exception / hang / oom / start / lost)
       ├─ attribute_crash (crashes.py): the slot names the message being handled → its
       │    caller gets ActorCrashed (or it is redelivered, until poison_after) → dead letters
       ├─ its own children (context.spawn) are stopped: they die with their supervisor
       └─ restart type + restart_on say restart? → supervisor.child_failed (strategy,
          intensity, backoff) → restart_group; else → Stopper.finish (gone for good)

    restart_group ── the live cells of the group are asked to stop (reverse start order);
       once all are gone (_plan_exited), _plan_go starts them all in start order, after the
       supervisor's backoff: inline with a spare prepared for the actor, else on the
       starter thread (launch.py).

Everything here runs on the loop thread, except ``on_life_lost`` (the watcher thread).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, cast

from actorq._actorproc import host as _host
from actorq._core.events import EventKind
from actorq._core.protocol import SYSTEM_ID
from actorq._errors import ActorCrashed
from actorq._process import lifelock
from actorq._process.reap import kill_if_child
from actorq._runtime.cells import DEAD_STATES, ActorCell, CellState, RestartPlan
from actorq._runtime.crashes import attribute_crash, crash_words
from actorq._runtime.launch import Launcher
from actorq._runtime.state import RuntimeState
from actorq._runtime.stopping import Stopper
from actorq._supervision.policy import classify_exit, should_restart
from actorq._transport.oob import Orphans
from actorq._transport.shm import SHM_DIR

logger = logging.getLogger("actorq")

ORPHAN_SWEEP_INTERVAL = 0.05  # seconds between looks at blocks of dead processes
WATCH_AFTER = 0.02  # seconds after READY its early death notice is armed (lifelock)


class Deaths:
    """Handles the deaths of actors' processes and carries out restarts.

    *on_ctrl(cell, sock)* reads what a process said last on its control socket (a
    "failed" or "crashing" message may be waiting when it dies).
    """

    def __init__(self, state: RuntimeState, launcher: Launcher, stopper: Stopper,
                 on_ctrl: Callable[[ActorCell, Any], None]) -> None:
        self._s = state
        self._launch = launcher
        self._stop = stopper
        self._on_ctrl = on_ctrl
        # the early death notice (lifelock.py); the sentinel stays the authority
        self.life = lifelock.Watcher(self.on_life_lost)
        self.dying: list[Any] = []  # processes handled as dead, not reaped yet
        self._orphans = Orphans(state.run_id)  # out-of-band blocks of processes gone
        self._orphans_due = False  # a sweep of the blocks that must wait is scheduled

    def stop_watching(self) -> None:
        """At close: stop the watcher thread of the early death notices."""
        self.life.close()

    def reap_all(self) -> None:
        """At close: reap the processes handled as dead (still torn down by the kernel)."""
        for proc in list(self.dying):
            self.reap_dying(proc, self._s.config.stop_timeout)

    def watch_life(self, cell: ActorCell, pid: int) -> None:
        """Loop thread: arm the early death notice of *cell*'s process *pid*."""
        if cell.proc is not None and cell.pid == pid and not self._s.closing:
            self.life.watch(cell.id, os.path.join(SHM_DIR, cell.ctl.seg.name), pid)

    def on_life_lost(self, key: object, pid: int, status: int) -> None:
        """Watcher thread: the process *pid* of actor *key* is exiting (lifelock.py)."""
        loop = self._s.hub.loop
        if loop is None or self._s.closed:
            return
        cell = self._s.cells.get(cast(int, key))
        if cell is not None:
            try:
                loop.call_soon_threadsafe(self._on_early_exit, cell, pid, status)
            except RuntimeError:  # the loop is closed: closing
                pass

    def _on_early_exit(self, cell: ActorCell, pid: int, status: int) -> None:
        """The process is exiting (it runs no code any more) but is not torn down and
        reported yet: handle its death now, reap it when its sentinel fires."""
        proc = cell.proc
        if proc is None or proc.pid != pid or cell.ctrl is None:
            return
        if cell.state != "running" or self._s.closing:
            # a stop (or a group restart) it was asked for: stop() and close() return once
            # the process is gone, files and sockets closed, so wait for the sentinel
            return
        self._died(cell, proc, cell.ctrl, lifelock.exitcode_of(status))

    def on_exit(self, cell: ActorCell, proc: Any, sock: Any) -> None:
        """Loop thread: *proc*'s sentinel fired: handle its death, or reap it if that was
        done already (on its early death notice)."""
        loop = self._s.hub.loop
        assert loop is not None
        loop.remove_reader(proc.sentinel)
        if cell.proc is not proc:  # handled already, on its early death notice
            self.reap_dying(proc)
            return
        self._died(cell, proc, sock, None)

    def reap_dying(self, proc: Any, timeout: float = 1.0) -> None:
        """Join *proc* (handled as dead already) and close it; kill it if it lives on."""
        if proc in self.dying:
            self.dying.remove(proc)
        proc.join(timeout)
        if proc.exitcode is None:
            kill_if_child(proc.pid)
        else:
            proc.close()

    def _died(self, cell: ActorCell, proc: Any, sock: Any, code: int | None) -> None:
        """*cell*'s process *proc* died: with *code* None, its sentinel fired (reap it
        now); else it is exiting with that exit code, and is reaped later."""
        loop = self._s.hub.loop
        assert loop is not None
        if code is None:  # on an early notice the watcher has let it go already
            self.life.forget(cell.id)
        self._on_ctrl(cell, sock)  # a last "failed"/"crashing" message may be waiting
        loop.remove_reader(sock)
        if code is not None:
            self.dying.append(proc)  # its sentinel reader stays: on_exit reaps it
            server_death = _fork_server_death(proc, code)
        else:
            proc.join(1.0)
            code = proc.exitcode
            server_death = _fork_server_death(proc, code)
            if code is None:
                # No exit status: another part of this process reaped it (os.wait(), a
                # SIGCHLD handler), or it closed its end of the sentinel and lives on.
                # Kill it if it is still our child; the Process object cannot be closed.
                kill_if_child(proc.pid)
            else:
                proc.close()
        # (closed once it is dead or ended: a process its dead fork server left running
        # would read end-of-file here and exit on its own, "exit code 4", lean.py)
        sock.close()
        cell.proc = cell.ctrl = None
        self._s.hub.drain_from(cell.id)  # replies it published before dying
        if cell.pid and not self._s.closing:  # after the restart: not on its path
            loop.call_soon(self._process_gone, cell.pid)
        cell.exited.set()
        if cell.kids is not None:  # its children die with it (it supervised them)
            self._stop.stop_kids(cell, f"their parent {cell.describe()} stopped")
        if cell.state == "restarting":
            self._plan_exited(cell)
            return
        if cell.state == "stopping" or self._s.closing:
            self._stop.finish(cell, CellState.STOPPED, cell.finish_why)
            return
        if code == _host.EXIT_MAIN_UNGUARDED:  # deterministic: every start would end so
            self._launch.main_unguarded(cell)
            return
        cause = classify_exit(code, cell.killed_for, cell.reported)
        cell.killed_for = cell.reported = None
        cell.crashes[cause] += 1
        words = crash_words(cell, cause, code)
        if server_death is not None:
            words += f": {server_death}"
        text = f"{cell.describe()} (pid {cell.pid}) {words}"
        self._s.publish(EventKind.CRASHED, cell, cause, text)
        if cell.state == "starting" and cell.failed_start is None and code == 1:
            text += self._launch.main_module_hint()  # died before it could even boot
        if cause == "start" and cell.failed_start is not None:
            exc, tb = cell.failed_start
            text = f"{cell.describe()} failed to start: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", text, tb)
            if not should_restart(cell.restart, cause, code, cell.options):
                self._stop.finish(cell, CellState.FAILED, text, cause="start", error=exc)
                cell.supervisor.remove(cell)
                return
        else:
            attribute_crash(cell, text, cause, self._s.dead, self._fail_caller)
        if should_restart(cell.restart, cause, code, cell.options):
            # the supervisor's line (a restart, or why not) says it, with the crash: one
            # line, written after the restart is under way (issue 15)
            if cell.supervisor.state != "running":
                logger.warning("%s", text)  # it decides nothing: say it here
            cell.state = CellState.RESTARTING
            cell.supervisor.child_failed(cell, text)
        else:
            logger.warning("%s", text)
            why = f"{words} and was not restarted (restart={cell.restart!r})"
            self._stop.finish(cell, CellState.STOPPED, why, cause=cause)
            cell.supervisor.remove(cell)

    def _process_gone(self, pid: int) -> None:
        """Loop thread: free the out-of-band blocks of the dead process *pid*."""
        if not self._s.closing and self._orphans.process_gone(pid):
            self._sweep_orphans_later()

    def _sweep_orphans_later(self) -> None:
        """Loop thread: blocks of a process gone wait for their record's commit; look
        again in a while (only while some wait: an idle system wakes no more often)."""
        if self._orphans_due or self._s.hub.loop is None:
            return
        self._orphans_due = True

        def again() -> None:
            self._orphans_due = False
            if not self._s.closing and self._orphans.sweep():
                self._sweep_orphans_later()

        self._s.hub.loop.call_later(ORPHAN_SWEEP_INTERVAL, again)

    def _fail_caller(self, caller: int, token: int, text: str, cause: str) -> None:
        if caller == SYSTEM_ID:
            reply = self._s.hub.pending.pop(token, None)
            if reply is not None:
                reply.set_exception(ActorCrashed(f"{reply.describe}: {text}", cause))
        else:
            self._s.hub.reply_to_actor(caller, token, ActorCrashed(text, cause))

    def restart_group(self, cells: list[ActorCell], delay: float) -> None:
        """Stop the live *cells* (reverse start order), then start them all (start order)."""
        plan = RestartPlan(cells, delay)
        for cell in reversed(cells):
            if cell.state in DEAD_STATES:
                continue
            if cell.alive() and cell.state in ("running", "starting"):
                plan.waiting.add(cell.id)
                self._stop.ask_to_stop(cell)
            cell.state = CellState.RESTARTING
            cell.plan = plan
        if not plan.waiting:
            self._plan_go(plan)

    def _plan_exited(self, cell: ActorCell) -> None:
        plan = cell.plan
        if plan is None:
            return
        plan.waiting.discard(cell.id)
        if not plan.waiting:
            self._plan_go(plan)

    def _plan_go(self, plan: RestartPlan) -> None:
        def start_all() -> None:
            for cell in plan.cells:
                if self._s.closing or cell.state != "restarting" or cell.plan is not plan:
                    continue
                cell.plan = None
                cell.restarts += 1
                cell.generation += 1
                cell.state = CellState.STARTING
                cell.ready.clear()
                cell.exited.clear()
                if self._launch.start_process(cell, cell.generation, inline=True):
                    continue  # a spare prepared for it took over, from this thread
                self._launch.submit(cell)

        assert self._s.hub.loop is not None
        if plan.delay > 0:
            self._s.hub.loop.call_later(plan.delay, start_all)
        else:
            start_all()


def _fork_server_death(proc: Any, code: int | None) -> str | None:
    """What ended *proc*, exited with *code*, if it died with its fork server
    ("its fork server (pid N) was killed by SIGKILL"), whichever notice came first; else
    None (``lean.LeanProcess.fork_server_death``; other processes have no fork server)."""
    died_with_server = getattr(proc, "fork_server_death", None)
    return None if died_with_server is None or code is None else died_with_server(code)
