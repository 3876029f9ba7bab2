"""The graph scheduler: ready queue, dispatch, completion, retries, failure propagation.

It runs on the system's event loop (the hub loop thread of the user's process), beside
the replies it waits for. ``system.run`` validates and sets up on the caller's thread
(``begin``: arrays, the pool, the journal's finished tasks), hands the run to the loop
(``start``) and waits for it to end; ``system.run_async`` awaits the same without a
thread. On the loop, a worker's reply callback appends to ``events`` and schedules one
``_tick`` for the loop's next turn, so every completion that one read of the rings
brought is handled in one round, and the batches it sends go out in one flush::

    ready heap (-priority, -rank, node)  ──dispatch──▶ worker with credit and the lowest
          ▲                                            expected finish (load x speed)
          │                                                   │ pool.call_member(run_plain)
          │ a node's last dependency finished                 ▼
    completion ◀── _tick ◀── events ◀── reply callback ◀── TaskWorker (own process)
          │
          ├─ ok: value kept (small: here; large: a shared-memory handle), dependents
          │      counted down, large inputs freed once no pending dependent needs them
          ├─ error: its Retry decides: again after a backoff, or fail it and its dependents
          ├─ worker lost: the batch is tried again elsewhere (one attempt counted)
          └─ timeout: the worker is killed (and restarted); retry or fail

Nothing here blocks the loop: resizing the pool (which joins processes) is done by the
pool's own thread, closing a private pool and building the result by the caller.

Credit: at most ``CREDIT`` batches in flight per worker (one running, one queued in its
mailbox, so that it does not wait for the scheduler even when a reply takes a few
milliseconds to reach the loop of a loaded machine), never an unbounded queue. Short tasks
share a batch (tiny ones by the thousand, ones of 5 ms in threes and fours), sized from their
measured CPU time (the worker reports the batch's; a loaded machine stretches wall
time, not the work) to about ``TARGET_BATCH_SECONDS``, as long as the ready queue is
deep enough to give every free credit slot a batch: a short queue is shared among the
slots free now (a worker that still has a batch queued needs no share yet, so the tasks a
returning batch made ready go out together, not halved; near the end of the run, every
slot, so that the workers end together), and the durations measured in earlier runs on
the same pool size the first batches of the next. A batch also carries the dependents
that its own tasks will make ready (``fusion.py``): no round trip per layer.
Each batch costs this process a wake-up, a reply and a dispatch (≈ 0.3-0.4 ms of CPU,
and about as much in the worker), and on a machine with as many cores as workers that
CPU is taken from the workers: fewer, fuller batches are what keeps a graph of 5 ms
tasks near the speed of bare processes (docs/benchmark-history.md, the layered DAG). A third
batch in flight (as before) drained the ready queue into the mailboxes as soon as it
filled, so batches stayed small (2 tasks of 5 ms: 190-400 batches per 400 tasks,
against 140 with the queue split per worker and ~100 shared among free slots).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import math
import pickle
import threading
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from actorq._errors import GraphError, rebuild
from actorq._graph.blobs import save
from actorq._graph.failures import Recovery
from actorq._graph.fusion import fuse, patch_args
from actorq._graph.graph import FLAT, Graph, fill
from actorq._graph.pool import Batch, acquire_pool
from actorq._graph.progress import Progress, want_progress
from actorq._graph.report import build_result
from actorq._graph.result import GraphResult
from actorq._graph.state import DONE, EWMA, READY, RUNNING, WAITING
from actorq._graph.worker import (
    ERR,
    LOCAL,
    NEED_CODE,
    PATCH,
    PICKLED,
    SHARED,
    SKIPPED,
    fill_flat,
    pack_plain,
    pack_value,
    unpack_outcome,
    unpack_value,
)
from actorq._resilience.backoff import Backoff
from actorq._resilience.retry import Retry

if TYPE_CHECKING:
    from actorq._core.reply import Reply
    from actorq._graph.pool import SystemOps, Worker

logger = logging.getLogger(__name__)

CREDIT = 2  # batches in flight per worker: one running, one waiting in its mailbox
# Tasks share a batch up to about this much work (CPU seconds), while the ready queue
# is deep enough to give every free credit slot a batch (_slots): tiny tasks by
# the thousand, tasks of 5 ms in fours (one message, one reply and one wake-up of this
# process per batch, not per task: on a 2-core machine this process's CPU is taken from
# the workers).
# Longer: fewer batches, but a crash re-runs more and dependents wait longer for the
# results of a batch (all come back at its end); the queued batch also covers the
# scheduler's reply latency on a loaded machine (up to ~10 ms measured at load 40).
TARGET_BATCH_SECONDS = 0.02
MAX_BATCH = 2048  # tasks per batch at most (a crash re-runs at most this many, <= 20 ms)
# The scheduler looks at its timers, scaling and progress line at least this often
# (WAIT_SLICE with a progress line, LOOK_SLICE without): a round runs if none ran since
# the last look (while replies come in, a round runs for each, and a look costs only
# the timer's wake-up of the loop thread, ≈ 0.1 ms of CPU on a loaded 2-core machine,
# taken from the workers). Timers (retries, timeouts) wake the loop on their own, and a
# worker coming up or the pool's membership changing asks for a round (pool.py): the
# look is for retiring idle workers (a round whenever one has nothing to do) and a
# safety net.
WAIT_SLICE = 0.05
LOOK_SLICE = 0.25
IDLE_RETIRE = 1.0  # a worker idle this long while nothing is ready is stopped (> 1 left)


def batch_fits(total: float, est: float) -> bool:
    """Whether a task of *est* seconds joins a batch of *total* seconds so far: rounded,
    not cut at ``TARGET_BATCH_SECONDS`` (a batch may pass it by up to half a task), so
    that tasks a little over a fraction of it still share (5.1 ms ones go in fours, not
    threes; 10.5 ms ones in twos, not alone) and a loaded machine's slight stretch of
    the measured CPU time does not halve the batches."""
    return total + est / 2 <= TARGET_BATCH_SECONDS


class Scheduler(Recovery):
    """Runs one graph to completion (see the module docstring)."""

    def __init__(self, system: SystemOps, graph: Graph, *, workers: int | None = None,
                 journal: Any = None, progress: bool | None = None, fail_fast: bool = False,
                 keep: Any = None, backoff: Backoff | None = None,
                 retry: Retry | None = None, max_memory: int | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            msg = f"workers must be a positive int (or None: every core), not {workers!r}"
            raise GraphError(msg)
        if retry is not None and not isinstance(retry, Retry):
            msg = f"retry must be an actorq.Retry or None, not {retry!r}"
            raise GraphError(msg)
        self.system = system
        self.max_workers = workers or getattr(system, "workers", None) or 1
        self._init_recovery(retry, backoff)
        super().__init__(graph, keep=keep, journal=journal, fail_fast=fail_fast,
                         threshold=system.config.oob_threshold, prefix=system.run_id,
                         max_memory=max_memory)
        self.show_progress = want_progress(progress)
        self.events: deque[tuple[Any, ...]] = deque()
        self._bids = itertools.count(1)

    def _prepare(self) -> None:
        super()._prepare()
        self.timed_aside: list[tuple[int, float, int]] = []
        self.counts = {"retries": 0, "crashes": 0, "timeouts": 0, "batches": 0,
                       "code_shipments": 0, "workers_lost": 0, "workers_retired": 0,
                       "fused": 0}
        self.peak_workers = 0
        self.worker_ids: dict[int, Worker] = {}
        self.fused: set[int] = set()  # the last batch taken: its fused tasks (fusion.py)

    # -- the run: set up on the caller's thread, run on the system's loop ----------------

    def begin(self) -> None:
        """The caller's thread: arrays, the pool, the journal's finished tasks (all that
        may block or fail before anything runs), so that the loop only schedules."""
        self.started_at = time.monotonic()
        cpu = time.thread_time()
        self._prepare()
        self.pool, self.private = acquire_pool(self.system)
        self.est, self.est_cpu = self.pool.est, self.pool.est_cpu  # earlier runs' durations
        try:
            self.bar = Progress(len(self.nodes)) if self.show_progress else None
            self._resume_from_journal()
        except BaseException:
            self._release_pool()
            if self.journal is not None:
                self.journal.close()
            raise
        self.cpu = time.thread_time() - cpu

    def start(self, loop: asyncio.AbstractEventLoop,
              ended: concurrent.futures.Future[None]) -> None:
        """On the system's loop: start dispatching; *ended* is set when the run is over."""
        self.loop = loop
        self.loop_tid = threading.get_ident()
        self.ended = ended
        self.tick_scheduled = False
        self.ticked = False  # a round ran since the last periodic look (_periodic)
        self.over = False
        self.handles: list[asyncio.TimerHandle] = []
        self.periodic_handle: asyncio.TimerHandle | None = None
        self.pool.on_change = self._members_changed
        try:
            self._sync_workers()
            state, waiting = self.state, self.waiting
            self._make_ready_many([i for i in self.order
                                   if state[i] == WAITING and waiting[i] == 0])
        except BaseException as exc:
            self._end(exc)
            return
        self._tick()
        self._periodic()

    def interrupt(self, exc: BaseException) -> None:
        """On the loop: stop now (the caller was interrupted or cancelled)."""
        self.stopping = True
        self._end(exc)

    def _schedule_tick(self) -> None:
        if not self.tick_scheduled and not self.over:
            self.tick_scheduled = True
            self.loop.call_soon(self._tick)

    def _periodic(self) -> None:
        """Timers, scaling and the progress line are looked at at least this often: a
        round, unless one ran since the last look and no worker may retire (with a
        progress line: always)."""
        if self.over:
            return
        if not self.ticked or self.bar is not None or self._may_retire():
            self._schedule_tick()
        self.ticked = False
        self.periodic_handle = self.loop.call_later(
            LOOK_SLICE if self.bar is None else WAIT_SLICE, self._periodic)

    def _may_retire(self) -> bool:
        """Whether a round may retire a worker (one of several has nothing to do)."""
        workers = self.pool.workers
        return len(workers) > 1 and any(not w.batches for w in workers)

    def _tick(self) -> None:
        """One round: completions, timers, scaling, dispatch, the journal's commit."""
        self.tick_scheduled = False
        if self.over:
            return
        self.ticked = True
        cpu = time.thread_time()
        try:
            self._drain_events()
            self._fire_timers()
            if self.unfinished:
                self._scale()
                self._dispatch()
            if self.journal is not None:
                self.journal.commit()
            if self.bar is not None:
                self.bar.update(self.done, self.running, self.failed_count, self.delayed)
            if not self.unfinished:
                self._end(None)
        except BaseException as exc:  # a bug, or workers that cannot start: end the run
            self._end(exc)
        self.cpu += time.thread_time() - cpu

    def _end(self, exc: BaseException | None) -> None:
        """On the loop: the run is over (or failed): let go of workers and timers."""
        if self.over:
            return
        self.over = True
        if self.periodic_handle is not None:
            self.periodic_handle.cancel()
        for handle in self.handles:
            handle.cancel()
        self.handles.clear()
        self.pool.on_change = None
        try:
            self._abandon()
            if self.journal is not None:
                self.journal.commit()
        except BaseException as err:
            exc = exc or err
        if self.ended.done():  # cancelled by its waiter
            return
        if exc is not None:
            self.ended.set_exception(exc)
        else:
            self.ended.set_result(None)

    def finish(self, *, close_in_background: bool = False) -> GraphResult:
        """The caller's thread, after the loop's part: clean up, build the result."""
        cpu = time.thread_time()
        try:
            if self.journal is not None:
                self.journal.close(complete=not self.unfinished)
        finally:
            self._release_pool(background=close_in_background)
            if self.bar is not None:
                self.bar.close(self.done, self.failed_count)
        wall = time.monotonic() - self.started_at
        return build_result(self, wall, self.cpu + time.thread_time() - cpu,
                            workers=self.peak_workers, counts=self.counts)

    def _release_pool(self, *, background: bool = False) -> None:
        pool = self.pool
        pool.lock.release()
        if self.private:
            if background:
                threading.Thread(target=pool.close, name="actorq-graph-close",
                                 daemon=True).start()
            else:
                pool.close()

    def _notify(self, item: tuple[Any, ...]) -> None:
        """Any thread: hand *item* to the scheduler (on the loop, in its next tick)."""
        if threading.get_ident() == self.loop_tid:
            self.events.append(item)
            self._schedule_tick()
        else:  # a reply completed by another thread's synchronous wait, or the resizer
            try:
                self.loop.call_soon_threadsafe(self._notify, item)
            except RuntimeError:  # the loop is closed: the system is closing
                pass

    def _members_changed(self) -> None:
        self._notify(("members",))

    def _sync_workers(self) -> None:
        """Take up the pool's members as they are now (new ones, retired ones)."""
        now = time.monotonic()
        self.pool.sync(now)
        for w in self.pool.workers:
            if self.worker_ids.setdefault(w.actor_id, w) is w and not w.batches:
                w.load = 0.0

    def _drain_events(self) -> None:
        events = self.events
        while events:
            item = events.popleft()
            kind = item[0]
            if kind == "batch":
                self._batch_done(item[1], item[2], item[3])
            elif kind == "call":
                self._call_done(item[1], item[2], item[3])
            else:
                self._sync_workers()

    # -- ready queue and dispatch -------------------------------------------------------

    def _scale(self) -> None:
        """Grow the pool up to ``max_workers`` while tasks wait; retire long-idle workers."""
        now = time.monotonic()
        pool = self.pool
        workers = pool.workers
        active = workers[: self.max_workers]
        waiting_tasks = len(self.ready) + len(self.timed_aside)
        if not waiting_tasks:
            for w in reversed(list(workers)):  # drained: fewer workers, idle ones (one stays)
                if len(workers) <= 1:
                    break
                if w.batches or now - w.idle_since <= IDLE_RETIRE:
                    continue
                pool.retire(w)
                self.counts["workers_retired"] += 1
            return
        if not workers and pool.error is not None:
            raise pool.error  # e.g. an unguarded main module: no worker can start
        if len(active) < self.max_workers:
            free = sum(CREDIT - len(w.batches) for w in active)
            if free * MAX_BATCH < waiting_tasks or free < min(waiting_tasks, CREDIT):
                pool.grow_to(min(self.max_workers, len(active) + max(1, waiting_tasks)), now)
                self._sync_workers()
        peak = len(workers) if len(workers) < self.max_workers else self.max_workers
        if peak > self.peak_workers:
            self.peak_workers = peak

    def _pick(self, *, idle: bool) -> Worker | None:
        now = time.monotonic()
        best = None
        best_finish = math.inf
        for w in self.pool.workers[: self.max_workers]:
            n = len(w.batches)
            if n >= CREDIT or (idle and (n or not w.up)):
                continue
            wait = w.penalty_until - now  # max(0.0, wait): a builtin call costs ~1k
            finish = w.load * w.speed + wait if wait > 0.0 else w.load * w.speed
            if finish < best_finish:
                best, best_finish = w, finish
        return best

    def _dispatch(self) -> None:
        if self.stopping:
            return
        ready = self.ready
        for entry in self.timed_aside:  # tasks with a timeout wait for an idle worker
            heapq.heappush(ready, entry)
        self.timed_aside.clear()
        gate = self.gate
        if gate.parked:
            gate.unpark(ready, self._digest)
        while ready:
            i = ready[0][2]
            if self.state[i] != READY:  # finished meanwhile (from the journal): stale
                heapq.heappop(ready)
                continue
            node = self.nodes[i]
            if node.fn is None:
                heapq.heappop(ready)
                self._start_call(i)
                continue
            if gate.on and not gate.admit(i, self.codes[id(node.fn)].digest):
                gate.park(heapq.heappop(ready))  # at the memory cap: wait for room
                continue
            timed = node.timeout is not None
            worker = self._pick(idle=timed)
            if worker is None:
                if gate.reserved:
                    gate.release([i])  # not sent after all
                if timed and self._pick(idle=False) is not None:
                    self.timed_aside.append(heapq.heappop(ready))
                    continue
                break
            if not self._send(worker, self._take_batch(worker)):
                break  # the pool's membership changed: look again in the next round
        if gate.parked and not self.running and not ready:
            gate.pick_alone(ready, self._frees)  # nothing fits and nothing runs
            self._dispatch()

    def _digest(self, i: int) -> bytes:
        return self.codes[id(self.nodes[i].fn)].digest

    def _frees(self, i: int) -> int:
        """Bytes of large results that task *i* is the last pending consumer of."""
        values, freed = self.values, 0
        for dep in self.nodes[i].deps:
            value = values[dep.index]
            if (value is not None and value[0] == SHARED and self.consumers[dep.index] == 1
                    and not self._kept(dep.index)):
                freed += value[1].nbytes
        return freed

    def _in_flight(self) -> list[int]:
        return [t for w in self.pool.workers for b in w.batches.values() for t in b.tids]

    def _slots(self, ready: int, est: float) -> int:
        """What a short ready queue of *ready* tasks (of about *est* seconds each) is
        shared among: the batches the workers could take now (this one's included, and
        those of workers the pool has yet to start), while more tasks are to come; near
        the end (no task waits for a dependency any more, or what is left to send would
        fill only the batches in flight) every slot, busy or not, so that the last
        tasks go in small batches to whichever worker is free first, and the workers
        end together."""
        active = self.pool.workers[: self.max_workers]
        slots = CREDIT * (len(active) or 1)
        left = self.unfinished - self.running  # not sent yet (ready, waiting, delayed)
        if left <= ready or left * est <= slots * TARGET_BATCH_SECONDS:
            return slots
        free = CREDIT * self.max_workers
        for w in active:  # a plain loop: no generator, no sum() (once per batch)
            free -= len(w.batches)
        return free if free > 1 else 1

    def _take_batch(self, worker: Worker) -> list[int]:
        ready = self.ready
        first = heapq.heappop(ready)[2]
        tids = [first]
        fn = self.nodes[first].fn
        est = self.est_cpu.get(self.codes[id(fn)].digest) if fn is not None else None
        if est is None or self.nodes[first].timeout is not None:
            return tids
        waiting = len(ready) + 1
        cap = math.ceil(waiting / self._slots(waiting, est))  # >= 1: waiting >= 1
        if cap > MAX_BATCH:
            cap = MAX_BATCH
        total = est
        state, nodes, codes, ests, gate = (self.state, self.nodes, self.codes, self.est_cpu,
                                           self.gate)
        heappop, append = heapq.heappop, tids.append
        last_fn: Any = None
        e: float | None = None
        limit = TARGET_BATCH_SECONDS
        while len(tids) < cap and ready:
            j = ready[0][2]
            if state[j] != READY:
                heappop(ready)
                continue
            node = nodes[j]
            fn = node.fn
            if fn is None or node.timeout is not None:
                break
            if fn is not last_fn:  # the estimate, once per run of equal functions
                last_fn = fn
                e = ests.get(codes[id(fn)].digest)
            if e is None or total + e / 2 > limit:  # not batch_fits(total, e), inlined
                break
            if gate.on and not gate.admit(j, codes[id(fn)].digest):
                break
            heappop(ready)
            append(j)
            total += e
        if self.edges and not gate.on and self.unfinished - self.running > len(tids):
            self.fused = fuse(tids, total, nodes=nodes, state=state,
                              dependents=self.dependents, estimate=self._estimate_cpu,
                              top_priority=-ready[0][0] if ready else -math.inf)
        return tids

    def _estimate_cpu(self, node: Any) -> float | None:
        return self.est_cpu.get(self.codes[id(node.fn)].digest)

    def _send(self, worker: Worker, tids: list[int]) -> bool:
        """Send *tids* to *worker* as one batch; False if it could not take it."""
        nodes, values, codes = self.nodes, self.values, self.codes
        state, attempts, budgets, ests = self.state, self.attempts, self.budgets, self.est
        code_map: dict[bytes, bytes] = {}
        wire: list[tuple[Any, ...]] = []
        append = wire.append
        est = 0.0
        last_fn: Any = None
        digest, e = b"", 0.0
        scalars = self.graph._plain  # per node: 1 if its arguments are plain scalars
        plain = True  # every task's arguments plain scalars so far: the batch marshals
        fused, self.fused = self.fused, set()
        self.counts["fused"] += len(fused)
        for i in tids:
            node = nodes[i]
            if node.fn is not last_fn:  # looked up once per run of equal functions
                last_fn = node.fn
                code = codes[id(last_fn)]
                digest = code.digest
                if digest not in worker.known:
                    code_map[digest] = code.blob
                e = ests.get(digest, 0.001)
            deps = node.deps
            if deps:
                vals = None  # the inputs' values, for the worker to fill in
                if fused and i in fused:  # inputs from this batch: the worker has them
                    patch = patch_args(node, values, state) if node.nested == FLAT else None
                    if patch is not None:  # plain scalars and the batch's values: marshals
                        append((i, digest, patch[0], {}, patch[1], PATCH, None))
                    else:
                        vals = [values[d.index] if state[d.index] == DONE else (LOCAL, d.index)
                                for d in deps]
                else:
                    flat = fill_flat(node.args, deps, values) if node.nested == FLAT else None
                    if flat is not None:  # plain args: no placeholder to pickle, none to fill
                        append((i, digest, flat, node.kwargs, None, False, None))
                    else:
                        vals = [values[d.index] for d in deps]
                if vals is not None:
                    plain = False
                    if node.packed is not None:
                        append((i, digest, (), {}, vals, node.nested, node.packed))
                    else:
                        append((i, digest, node.args, node.kwargs, vals, node.nested, None))
            elif node.packed is not None:
                plain = False
                append((i, digest, (), {}, None, node.nested, node.packed))
            else:
                if not scalars[i]:
                    plain = False
                append((i, digest, node.args, node.kwargs, None, False, None))
            state[i] = RUNNING
            attempts[i] += 1
            if budgets and attempts[i] == 1:
                self._record_call(node)
            est += e
        if self.journal is not None:  # before it can run (see journal.py); raises GraphError
            self.journal.started([nodes[i].key for i in tids])
        now = time.monotonic()
        batch = Batch(next(self._bids), worker, tids, est, now, fused)
        worker.batches[batch.id] = batch
        worker.load += est
        worker.known.update(code_map)
        self.counts["code_shipments"] += len(code_map)
        self.running += len(tids)
        self.counts["batches"] += 1
        try:
            batch.reply = self._call_worker(worker, code_map or None, wire,
                                            partial(self._batch_outcome, batch), plain)
        except Exception as exc:  # not sendable (validated: should not happen), or stopped
            worker.batches.pop(batch.id, None)
            worker.load = max(0.0, worker.load - est) if worker.batches else 0.0
            if isinstance(exc, ValueError):  # call_member: not a member (any more)
                self._not_sent(batch)  # the pool let it go meanwhile: not an attempt
                return False
            self._batch_lost(batch, exc)
            return True
        if len(tids) == 1 and nodes[tids[0]].timeout is not None:
            self._later(nodes[tids[0]].timeout or 0.0, "timeout", batch)
        return True

    def _not_sent(self, batch: Batch) -> None:
        """*batch* never left (its worker had just left the pool): ready again, uncounted."""
        self.gate.release(batch.tids)
        self.counts["batches"] -= 1
        batch.worker.known.clear()
        for i in batch.tids:
            self.attempts[i] -= 1
            self.running -= 1
            if i in batch.fused:  # its inputs from that batch are not done: wait for them
                self.state[i] = WAITING
            else:
                self._make_ready(i)
        self._sync_workers()

    def _batch_outcome(self, batch: Batch, value: Any, exc: BaseException | None) -> None:
        """The batch's outcome, counted by the pool (``call_member``'s *then*: no
        done-callback on its reply, and the reply is not read back). A marshalled one
        (``pack_outcome``) is read here, as part of receiving the reply, where a
        pickled one was read before: ``stats.scheduler_seconds`` stays comparable."""
        self._notify(("batch", batch, unpack_outcome(value), exc))

    def _call_worker(self, worker: Worker, code: dict[bytes, bytes] | None,
                     wire: list[Any], then: Any, plain: bool = False) -> Reply[Any]:
        """Send the batch *wire* (and the *code* the worker lacks): marshalled if *plain*
        (every task's arguments, filled in, are plain scalars: ``pack_plain``), else
        pickled here once, or left to the transport if it has large buffers."""
        store = self.store
        if plain:
            return self.pool.call(worker, "run_plain", pack_plain(code, wire, store),
                                  then=then)
        bufs: list[pickle.PickleBuffer] = []
        blob = pickle.dumps((code, wire, store), protocol=5, buffer_callback=bufs.append)
        if bufs:  # large arguments: let the transport carry them out of band
            return self.pool.call(worker, "run", code, wire, store, then=then)
        return self.pool.call(worker, "run_packed", blob, then=then)

    # -- completion ---------------------------------------------------------------------

    def _batch_done(self, batch: Batch, result: Any, exc: BaseException | None) -> None:
        worker = batch.worker
        if worker.batches.pop(batch.id, None) is None:
            return
        gate = self.gate
        if gate.reserved:
            gate.release(batch.tids)
        # exactly 0 when idle (no float residue): idle workers tie, and the first wins,
        # so that the last ones drain and can be given back to the pool
        load = worker.load - batch.est if worker.batches else 0.0
        worker.load = load if load > 0.0 else 0.0
        worker.idle_since = time.monotonic()
        if exc is not None:
            self._batch_lost(batch, exc)
            return
        # Per outcome, only what must be per task (the hot loop of a run of tiny tasks):
        # lookups hoisted, the function's digest looked up once per run of equal
        # functions, durations measured once per function and batch (their mean).
        measured = 0.0
        state, nodes, codes, t0s, t1s, where = (self.state, self.nodes, self.codes,
                                                self.t0, self.t1, self.where)
        wid = worker.actor_id
        last_fn: Any = None
        digest = b""
        run_sum, run_n = 0.0, 0
        means: list[tuple[bytes, float]] = []  # per run of equal functions: mean seconds
        inband = 0
        finish = self._finish
        cpu, queued, outcomes = result
        self.running -= len(outcomes)
        for tid, status, kind, payload, t0, t1 in outcomes:
            if status == SKIPPED:  # fused, and an input of the batch failed: not run
                self.attempts[tid] -= 1
                if state[tid] == RUNNING:  # (failed with its input for good: stays so)
                    state[tid] = WAITING  # for its input, retried
                continue
            if state[tid] != RUNNING:
                continue
            fn = nodes[tid].fn
            if fn is not last_fn:
                if run_n:
                    means.append((digest, run_sum / run_n))
                    run_sum, run_n = 0.0, 0
                last_fn = fn
                digest = codes[id(fn)].digest
            if status == NEED_CODE:
                worker.known.discard(digest)
                self.attempts[tid] -= 1
                self._make_ready(tid)
                continue

            took = t1 - t0
            run_sum += took
            run_n += 1
            measured += took
            t0s[tid] = t0
            t1s[tid] = t1
            where[tid] = wid
            if status == ERR:
                err, tb = pickle.loads(payload)
                self._failed_attempt(tid, rebuild(err, tb))
            elif kind != SHARED:
                inband += len(payload) if kind == PICKLED else 8
                if gate.on:
                    gate.measure(digest, 0)
                finish(tid, (kind, payload))
            else:
                gate.measure(digest, payload.nbytes)
                finish(tid, (kind, payload))
        if run_n:
            means.append((digest, run_sum / run_n))
        self.inband += inband
        # the shares of the batch's wall time that were CPU in the worker, and that it
        # was not waiting for a core (< 1 on a loaded machine): batches are sized by
        # the work (worker.py), not by the wall time that the machine's load stretches
        # (conditionals, not min()/max(): each builtin call costs ~1k instructions)
        share = active = 1.0
        if measured > 0:
            share = cpu / measured
            if share > 1.0:
                share = 1.0
            active = 1.0 - queued / measured
            if active < share:
                active = share
        for d, mean in means:
            self._measure(d, mean, mean * share, mean * active)
        worker.busy += measured
        if batch.est > 0 and measured > 0:
            worker.speed = (1 - EWMA) * worker.speed + EWMA * (measured / batch.est)

    # -- actor-call nodes ---------------------------------------------------------------

    def _start_call(self, i: int) -> None:
        node = self.nodes[i]
        self.state[i] = RUNNING
        self.running += 1
        self.attempts[i] += 1
        attempt = self.attempts[i]
        if self.budgets and attempt == 1:
            self._record_call(node)
        if self.journal is not None:
            self.journal.started([node.key])
        self.t0[i] = time.monotonic()
        try:
            vals = [unpack_value(*self.values[d.index]) for d in node.deps]  # type: ignore[misc]
            args, kwargs = fill(node.args, vals), fill(node.kwargs, vals)
            reply = node.target.call(node.method, *args, **kwargs)
        except Exception as exc:
            self.running -= 1
            self._failed_attempt(i, exc)
            return
        reply.add_done_callback(lambda r: self._notify(("call", i, attempt, r)))
        if node.timeout is not None:
            self._later(node.timeout, "call_timeout", (i, attempt))

    def _call_done(self, i: int, attempt: int, reply: Reply[Any]) -> None:
        if self.state[i] != RUNNING or self.attempts[i] != attempt:
            return  # a late reply of an attempt that timed out
        self.running -= 1
        self.t1[i] = time.monotonic()
        exc = reply.exception(0)
        if exc is not None:
            self._failed_attempt(i, exc)
            return
        try:
            value = pack_value(reply.result(0), self.prefix, self.threshold)
        except Exception as err:
            self._failed_attempt(i, err)
            return
        if value[0] == SHARED and self.store is not None:
            save(self.store, value[1])
        self._finish(i, value)

    # -- outcomes -----------------------------------------------------------------------

    def _abandon(self) -> None:
        """Leaving with batches in flight (fail_fast, an interrupt): replace their workers."""
        for w in list(self.pool.workers):
            if w.batches:  # its restarted process starts with an empty mailbox
                w.batches.clear()
                w.load = 0.0
                self.pool.kill(w)
        self._release_all()

    # -- the result ---------------------------------------------------------------------
