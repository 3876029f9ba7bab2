"""Processes for actors: warm spares, launches ahead for a burst, the boot message.

A start, on the starter thread (or inline on the loop thread for a restart whose spare
was prepared for the actor)::

    submit(cell) ──▶ starter thread: start_process
       ├─ a spare prepared for this actor: one short GO message (it has mapped all)
       ├─ a spare: the full boot message (Boot: rings, control block, spec, fds)
       ├─ a burst of starts queued: a process launched ahead (launcher threads)
       └─ none: a process started now (forkserver ≈ 26 ms)
    then the loop watches it (the runtime's ``watch``), and the spares are refilled
    later (``refill_later``): a process started at once would compete for the CPU with
    the one booting. Once it is up (``on_ready``) a spare is prepared for the actor that
    restarted last (``likely``): its next restart is then one message.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import sys
from collections.abc import Callable
from typing import Any, cast

from actorq._actorproc import host as _host
from actorq._core.protocol import C_BUSY, C_STOP, SYSTEM_ID, Boot, Ctl
from actorq._process.spares import QUIT, WarmPool
from actorq._process.spawn import fork_server_unguarded
from actorq._runtime.cells import DEAD_STATES, ActorCell, CellState
from actorq._runtime.state import RuntimeState
from actorq._runtime.stopping import Stopper
from actorq._transport import control

logger = logging.getLogger("actorq")

SPARE_REFILL_DELAY = 0.05
# After a restart, the next spare is started once the new instance has answered what was
# waiting for it (looked at every REFILL_AFTER_READY from its "ready", and the spare
# started one look after the first that found it settled), or SPARE_REFILL_DELAY after
# its "ready" at the latest; not only SPARE_REFILL_DELAY after its start: on a loaded
# machine a start takes 100 ms or more, and the actor's next crash found no spare. Not
# sooner: the fork server's fork and the new spare's boot take a CPU for 3-10 ms, and a
# refill started while the first call was still unanswered made the slowest restarts
# 2-3 times slower (docs/benchmark-history.md, "Restarts, fifth step").
REFILL_AFTER_READY = 0.005
LAUNCH_AHEAD = 4  # processes launched at once for a burst of starts (forkserver)


class Launcher:
    """Starts actors' processes: owns the warm spares, the starter and launcher threads.

    *watch(cell, proc, sock)* is called (on the loop thread) for each process started:
    the runtime then reads its control socket and its sentinel.
    """

    def __init__(self, state: RuntimeState, ctx: Any, stopper: Stopper,
                 watch: Callable[[ActorCell, Any, Any], None]) -> None:
        self._s = state
        self._stop = stopper
        self._watch = watch
        config = state.config
        self.spares = WarmPool(ctx, _host.main, config.warm_spares)
        self.likely: ActorCell | None = None  # the actor that restarted last
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "actorq-starter")
        # Starts queued behind each other (a burst of spawns) launch their processes in
        # parallel, ahead of the starter thread, which boots them in order (a process is
        # anyone's until its boot message). Forkserver only: under fork a process must be
        # forked from a thread that lives as long as the system (deathsig.py).
        self._launcher = (concurrent.futures.ThreadPoolExecutor(LAUNCH_AHEAD, "actorq-launch")
                          if config.start_method == "forkserver" else None)
        self._launched: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._launching = 0  # launches in flight or not yet taken (starter thread only)
        self.submitted = 0  # starts submitted (under the state's lock) ...
        self._begun = 0  # ... and begun by the starter thread
        self._starter.submit(self.refill)

    def submit(self, cell: ActorCell) -> None:
        """Start *cell*'s process on the starter thread (its current generation)."""
        with self._s.lock:
            self.submitted += 1
        self._starter.submit(self.start_process, cell, cell.generation)

    def on_ready(self, cell: ActorCell) -> None:
        """Loop thread: *cell*'s new process is up; prepare and refill spares for it."""
        s = self._s
        assert s.hub.loop is not None
        # running: prepare a spare for it now, if one is free (after a restart with
        # one spare there is none: the refill prepares the next; waking the starter
        # thread for nothing would take the GIL just as the first answers arrive)
        if cell is self.likely and not s.closing and self.spares.unprepared():
            try:
                self._starter.submit(self.prepare_spare)
            except RuntimeError:  # the starter is shut down: closing
                pass
        if cell.restarts and not s.closing and self.spares.missing():
            until = s.hub.loop.time() + SPARE_REFILL_DELAY
            s.hub.loop.call_later(REFILL_AFTER_READY, self._refill_once_settled, cell,
                                  until, False)

    def _refill_once_settled(self, cell: ActorCell, until: float, settled: bool) -> None:
        """Loop thread: refill the spares once *cell*'s new instance has settled (found so
        by this look and the one before: its answers have had a look's time to reach
        their callers), or at *until* (the loop's clock) at the latest."""
        s = self._s
        loop = s.hub.loop
        if loop is None or s.closing or not self.spares.missing():
            return  # (refilled meanwhile: a start on the starter thread refills after it)
        now_settled = self._settled(cell)
        if (settled and now_settled) or loop.time() >= until:
            self.submit_refill()
        else:
            loop.call_later(REFILL_AFTER_READY, self._refill_once_settled, cell, until,
                            now_settled)

    def _settled(self, cell: ActorCell) -> bool:
        """Loop thread: nothing in flight between this process and *cell* either way (each
        call it was sent handled, each reply it sent read) and no handler running; or
        *cell* not running any more (its restart is over either way)."""
        if cell.state != "running":
            return True
        hub = self._s.hub
        out, back = hub.outbound.get(cell.id), hub.inbound.get(cell.id)
        try:
            return not (cell.ctl.slots[C_BUSY]
                        or (out is not None and out.ring.in_flight())
                        or (back is not None and back.ring.in_flight()))
        except ValueError:  # a ring or its control block was released: it is gone
            return True

    def close(self) -> None:
        """At close, once every actor is reaped: the starter thread (the parent thread of
        every process under fork and spawn: it goes last), then what was launched ahead."""
        self._starter.shutdown(wait=True)
        self.stop_launched()

    def start_process(self, cell: ActorCell, generation: int, *, inline: bool = False) -> bool:
        """Start *cell*'s process (a warm spare if there is one) and send its boot message.

        On the starter thread; or *inline*, on the loop thread, only with a spare prepared
        for this very actor (``prepare_spare``: then the start is one short message, sent
        without a hop to another thread); False if there was none.
        """
        if not inline:
            self._begun += 1
        if self._s.closing or cell.state != "starting" or cell.generation != generation:
            return True
        try:
            got = self.spares.take(cell.id, only_prepared=inline)
            if got is None:
                if inline:
                    return False
                launched = self._launch_for_burst()
                proc, sock = launched if launched is not None else self.spares.start_one()
                tag = None
            else:
                proc, sock, tag = got
        except Exception:
            if self._s.config.start_method == "forkserver" and fork_server_unguarded():
                self._s.on_loop(self.main_unguarded, cell)  # the fork server said why
                return True
            logger.exception("could not start a process for %s", cell.describe())
            why = "its process could not be started" + self.main_module_hint()
            self._s.on_loop(self._stop.finish, cell, CellState.FAILED, why)
            return True
        if cell.restarts:
            self.likely = cell  # it restarted: the next spare is prepared for it
        cell.ctl.slots[C_STOP] = 0
        info, fds = self.boot_for(cell)
        msg: tuple[Any, ...] = (Ctl.BOOT, info)
        if (tag is not None and tag[0] == cell.id and tag[2] == fds
                and tag[1] == dataclasses.replace(info, restarts=tag[1].restarts)):
            msg, fds = (Ctl.GO, cell.restarts), []  # it has mapped all that, as it is now
        cell.proc, cell.ctrl = proc, sock
        cell.pid = proc.pid  # known now (before it can answer); confirmed by "ready"
        try:
            control.send(sock, msg, fds)
        except OSError:
            pass  # it died already: its sentinel tells the loop
        if inline:
            self._watch(cell, proc, sock)
            self.refill_later()
        else:
            self._s.on_loop(self._watch, cell, proc, sock)
            # Refill later: a process started now competes for the CPU with the actor
            # that is booting (a restart measured 9.9 ms p50 with an immediate refill,
            # 8.3 ms with this delay; benchmarks/bench_restart.py).
            self._s.on_loop(self.refill_later)
        return True

    def boot_for(self, cell: ActorCell) -> tuple[Boot, list[int]]:
        """*cell*'s boot message as of now, and the fds that go with it."""
        fds = [cell.efd, self._s.hub.efd]
        outbound = {}
        for target, ring_name in cell.outbound.items():
            if target == SYSTEM_ID:
                outbound[target] = (ring_name, self._s.hub.ctl.seg.name, 1)
            elif ((peer := self._s.cells.get(target)) is not None
                  and peer.state not in DEAD_STATES):
                outbound[target] = (ring_name, peer.ctl.seg.name, len(fds))
                fds.append(peer.efd)
        inbound = {}
        for sender, seg in cell.inbound.items():
            if sender == SYSTEM_ID:
                inbound[sender] = (seg.name, 1)
            elif (peer := self._s.cells.get(sender)) is not None:
                inbound[sender] = (seg.name, len(fds))
                fds.append(peer.efd)
        opts = cell.options
        info = Boot(cell.id, cell.name, self._s.run_id, self._s.config, cell.ctl.seg.name,
                    cell.spec.name, cell.spec_size, inbound, outbound, cell.restarts,
                    opts.hang_timeout, opts.window_target, opts.window_min, opts.window_max,
                    opts.window_step)
        return info, fds

    def refill(self) -> None:
        """Starter thread: start spares up to their number, then prepare one of them for
        the actor that restarted last (its next restart is then one message: GO)."""
        self.spares.refill()
        self.prepare_spare()

    def prepare_spare(self) -> None:
        """Starter thread: tell a free spare, ahead, what the actor that restarted last
        would be told at boot (``likely``; not for an actor whose window is adaptive)."""
        cell = self.likely
        if (cell is None or self._s.closing or cell.state != "running"
                or cell.options.window_target is not None  # its window is the live one's
                or any(tag[0] == cell.id for tag in self.spares.tags())):
            return

        def prepare(_proc: Any, sock: Any) -> Any:
            info, fds = self.boot_for(cell)
            try:
                control.send(sock, (Ctl.PREPARE, info), fds)
            except OSError:
                return None
            return (cell.id, info, fds)

        self.spares.prepare(prepare)

    def _launch_for_burst(self) -> tuple[Any, Any] | None:
        """Starter thread: a process launched ahead for this start, or None (no burst).

        With starts queued behind this one, up to ``LAUNCH_AHEAD`` processes are being
        launched at once: each start then waits on the fork server in parallel with the
        others rather than one after the other (the waits, not the CPU, made 1000 starts
        slow on a loaded machine).
        """
        if self._launcher is None:
            return None
        backlog = self.submitted - self._begun  # starts queued behind this one
        want = min(backlog + 1, LAUNCH_AHEAD) if backlog > 0 else 0
        while self._launching < want:
            self._launching += 1
            self._launcher.submit(self._launch_one)
        if not self._launching:
            return None
        got = self._launched.get()  # every launch puts exactly one item
        self._launching -= 1
        if isinstance(got, BaseException):
            raise got
        return cast(tuple[Any, Any], got)

    def _launch_one(self) -> None:
        """Launcher thread: start a process; hand it (or why not) to the starter."""
        try:
            self._launched.put(self.spares.start_one())
        except BaseException as exc:
            self._launched.put(exc)

    def stop_launched(self) -> None:
        """At close: stop the processes launched ahead and never booted."""
        if self._launcher is not None:
            self._launcher.shutdown(wait=True)
        while True:
            try:
                got = self._launched.get_nowait()
            except queue.Empty:
                return
            if isinstance(got, BaseException):
                continue
            proc, sock = got
            try:
                sock.send(QUIT)
            except OSError:
                pass
            sock.close()
            proc.join(5.0)
            if proc.exitcode is None:
                proc.kill()
                proc.join(5.0)
            proc.close()

    def refill_later(self) -> None:
        """Loop thread: refill the spares ``SPARE_REFILL_DELAY`` from now."""
        if self._s.hub.loop is not None and not self._s.closing:
            self._s.hub.loop.call_later(SPARE_REFILL_DELAY, self.submit_refill)

    def submit_refill(self) -> None:
        """Refill the spares on the starter thread (not once closing or unguarded)."""
        if not self._s.closing and self._s.unguarded is None:
            try:
                self._starter.submit(self.refill)
            except RuntimeError:  # the starter is shut down: closing
                pass

    def main_module_hint(self) -> str:
        """Why a new process may die before it boots: the user's script re-imported."""
        if self._s.config.start_method == "fork":
            return ""
        return (" (if your main script starts the actor system at import time, put that "
                "under `if __name__ == \"__main__\":` — with forkserver and spawn every "
                "new process imports the main module again)")

    def main_unguarded(self, cell: ActorCell) -> None:
        """An actor process found the main script creating a system at import time."""
        if self._s.unguarded is None:
            main = sys.modules.get("__main__")
            script = getattr(main, "__file__", None) or "your main script"
            self._s.unguarded = (
                f"{script} creates an ActorSystem when it is imported, and every actor "
                f"process imports it again (start method {self._s.config.start_method!r}): "
                "put the code that creates the system under "
                "`if __name__ == \"__main__\":`")
            logger.error("no actor can start: %s", self._s.unguarded)
        self._stop.finish(cell, CellState.FAILED, f"could not start: {self._s.unguarded}",
                          cause="start")

