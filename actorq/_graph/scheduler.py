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
          │                                                   │ pool.call_member(run_packed)
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
mailbox so that it never waits for the scheduler), never an unbounded queue. Tiny tasks
share a batch, sized from their measured durations to about ``TARGET_BATCH_SECONDS``.
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
from array import array
from collections import deque
from collections.abc import Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from actorq._errors import ActorCrashed, ActorStopped, CallTimeout, GraphError, rebuild
from actorq._graph.graph import Code, Graph, Node, fill, validate
from actorq._graph.journal import Journal
from actorq._graph.pool import WorkerPool, acquire_pool
from actorq._graph.progress import Progress, want_progress
from actorq._graph.result import GraphResult, GraphStats, TaskStats
from actorq._graph.worker import ERR, NEED_CODE, PICKLED, SHARED, VALUE, pack_value, unpack_value
from actorq._resilience.backoff import Backoff
from actorq._resilience.retry import Retry, RetryBudget
from actorq._shared import SharedObject, share_pickled

if TYPE_CHECKING:
    from actorq._core.reply import Reply
    from actorq._graph.pool import SystemOps, Worker

logger = logging.getLogger(__name__)

CREDIT = 2  # batches in flight per worker: one running, one waiting in its mailbox
TARGET_BATCH_SECONDS = 0.004  # tiny tasks are batched up to about this much work
MAX_BATCH = 2048  # tasks per batch at most (a crash re-runs at most this many, <= 4 ms)
CRASH_ATTEMPTS = 3  # a task whose worker died is tried again this many times at least
EWMA = 0.3  # weight of a new duration measurement
WAIT_SLICE = 0.05  # the scheduler wakes at least this often (timers, progress, scaling)
STOP_WAIT = 10.0  # seconds an interrupted run may take to let go of its workers
IDLE_RETIRE = 1.0  # a worker idle this long while nothing is ready is stopped (> 1 left)
RETRY_BACKOFF = Backoff(initial=0.01, maximum=1.0)

WAITING, READY, RUNNING, DONE, FAILED, DELAYED = range(6)
_FINISHED = (DONE, FAILED)


class Batch:
    """Tasks sent to one worker in one message."""

    __slots__ = ("est", "id", "reply", "sent", "tids", "timed_out", "worker")

    def __init__(self, bid: int, worker: Worker, tids: list[int], est: float,
                 sent: float) -> None:
        self.id = bid
        self.worker = worker
        self.tids = tids
        self.est = est
        self.sent = sent
        self.reply: Reply[Any] | None = None
        self.timed_out = False


class Scheduler:
    """Runs one graph to completion (see the module docstring)."""

    def __init__(self, system: SystemOps, graph: Graph, *, workers: int | None = None,
                 journal: Any = None, progress: bool | None = None, fail_fast: bool = False,
                 keep: Any = None, backoff: Backoff | None = None,
                 retry: Retry | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            msg = f"workers must be a positive int (or None: every core), not {workers!r}"
            raise GraphError(msg)
        if not isinstance(graph, Graph):
            msg = f"system.run() needs an actorq.Graph, not {graph!r}"
            raise GraphError(msg)
        self.system = system
        self.graph = graph
        self.nodes = graph.nodes
        self.max_workers = workers or getattr(system, "workers", None) or 1
        self.fail_fast = fail_fast
        self.backoff = backoff or RETRY_BACKOFF
        if retry is not None and not isinstance(retry, Retry):
            msg = f"retry must be an actorq.Retry or None, not {retry!r}"
            raise GraphError(msg)
        self.retry = retry  # for nodes with neither retries= nor retry=
        self._retries_policies: dict[int, Retry] = {}
        keep = list(keep or ())
        self.keep = {n.index for n in keep if n in graph}
        if len(self.keep) != len(keep):
            msg = "keep= must list nodes of this graph"
            raise GraphError(msg)
        self.codes: dict[int, Code] = validate(graph)  # before anything runs
        self.threshold = system.config.oob_threshold
        self.prefix = system.run_id
        self.journal = Journal(journal, graph.digest(), len(graph)) if journal else None
        self.show_progress = want_progress(progress)
        self.events: deque[tuple[Any, ...]] = deque()
        self.timers: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._bids = itertools.count(1)

    # -- set-up -------------------------------------------------------------------------

    def _prepare(self) -> None:
        n = len(self.nodes)
        self.state = bytearray(n)
        self.waiting = array("i", bytes(4 * n))
        self.dependents: list[list[int] | None] = [None] * n
        self.consumers = array("i", bytes(4 * n))  # dependents that take the value
        self.values: list[tuple[int, Any] | None] = [None] * n
        self.attempts = array("i", bytes(4 * n))
        self.t0 = array("d", bytes(8 * n))
        self.t1 = array("d", bytes(8 * n))
        self.where = array("i", [-1]) * n
        self.errors: dict[int, BaseException] = {}
        self.released: set[int] = set()
        self.from_journal: set[int] = set()
        self.est: dict[bytes, float] = {}  # function digest -> seconds (EWMA)
        self.ready: list[tuple[int, float, int]] = []
        self.timed_aside: list[tuple[int, float, int]] = []
        self.budgets: dict[int, RetryBudget] = {}  # id(policy) -> this run's copy
        if self.retry is not None and self.retry.budget is not None:
            self.budgets[id(self.retry)] = self.retry.budget.fresh()
        for node in self.nodes:
            if node.retry is not None and node.retry.budget is not None \
                    and id(node.retry) not in self.budgets:
                self.budgets[id(node.retry)] = node.retry.budget.fresh()
            parents = {d.index for d in node.deps}
            for d in parents:
                self.consumers[d] += 1
            parents.update(a.index for a in node.after_deps)
            self.waiting[node.index] = len(parents)
            for p in parents:
                lst = self.dependents[p]
                if lst is None:
                    lst = self.dependents[p] = []
                lst.append(node.index)
        self.order = self._topological()
        self.rank = self._ranks()
        self.done = self.failed_count = self.running = self.delayed = 0
        self.unfinished = n
        self.stopping = False
        self.shared_live = self.shared_peak = self.inband = 0
        self.counts = {"retries": 0, "crashes": 0, "timeouts": 0, "batches": 0,
                       "code_shipments": 0, "workers_lost": 0, "workers_retired": 0}
        self.peak_workers = 0
        self.worker_ids: dict[int, Worker] = {}

    def _topological(self) -> list[int]:
        waiting = array("i", self.waiting)
        order = [i for i in range(len(self.nodes)) if waiting[i] == 0]
        for i in order:  # grows while we walk it (Kahn)
            for c in self.dependents[i] or ():
                waiting[c] -= 1
                if waiting[c] == 0:
                    order.append(c)
        return order

    def _ranks(self) -> list[float]:
        """Upward rank: the node's estimated duration plus the longest path below it."""
        rank = [1.0] * len(self.nodes)
        for i in reversed(self.order):
            below = self.dependents[i]
            if below:
                rank[i] = 1.0 + max(rank[c] for c in below)
        return rank

    def _resume_from_journal(self) -> None:
        if self.journal is None:
            return
        finished = self.journal.finished()
        if not finished:
            return
        for node in self.nodes:
            row = finished.get(node.key)
            if row is None:
                continue
            attempts, _kind, payload = row
            i = node.index
            if len(payload) >= self.threshold:
                value: tuple[int, Any] = (SHARED, share_pickled(payload, self.prefix))
            else:
                value = (PICKLED, payload)
            self.attempts[i] = attempts
            self.from_journal.add(i)
            self._finish(i, value, journal=False)

    # -- the run: set up on the caller's thread, run on the system's loop ----------------

    def begin(self) -> None:
        """The caller's thread: arrays, the pool, the journal's finished tasks (all that
        may block or fail before anything runs), so that the loop only schedules."""
        self.started_at = time.monotonic()
        cpu = time.thread_time()
        self._prepare()
        self.pool, self.private = acquire_pool(self.system)
        try:
            self.bar = Progress(len(self.nodes)) if self.show_progress else None
            self._resume_from_journal()
        except BaseException:
            self._release_pool()
            raise
        self.cpu = time.thread_time() - cpu

    def start(self, loop: asyncio.AbstractEventLoop,
              ended: concurrent.futures.Future[None]) -> None:
        """On the system's loop: start dispatching; *ended* is set when the run is over."""
        self.loop = loop
        self.loop_tid = threading.get_ident()
        self.ended = ended
        self.tick_scheduled = False
        self.over = False
        self.handles: list[asyncio.TimerHandle] = []
        self.periodic_handle: asyncio.TimerHandle | None = None
        self.pool.on_change = self._members_changed
        try:
            self._sync_workers()
            for i in self.order:
                if self.state[i] == WAITING and self.waiting[i] == 0:
                    self._make_ready(i)
        except BaseException as exc:
            self._end(exc)
            return
        self._periodic()
        self._tick()

    def interrupt(self, exc: BaseException) -> None:
        """On the loop: stop now (the caller was interrupted or cancelled)."""
        self.stopping = True
        self._end(exc)

    def _schedule_tick(self) -> None:
        if not self.tick_scheduled and not self.over:
            self.tick_scheduled = True
            self.loop.call_soon(self._tick)

    def _periodic(self) -> None:
        """Timers, scaling and the progress line are looked at at least this often."""
        if self.over:
            return
        self._schedule_tick()
        self.periodic_handle = self.loop.call_later(WAIT_SLICE, self._periodic)

    def _tick(self) -> None:
        """One round: completions, timers, scaling, dispatch, the journal's commit."""
        self.tick_scheduled = False
        if self.over:
            return
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
                self.journal.close()
        finally:
            self._release_pool(background=close_in_background)
            if self.bar is not None:
                self.bar.close(self.done, self.failed_count)
        wall = time.monotonic() - self.started_at
        return self._result(wall, self.cpu + time.thread_time() - cpu)

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
                self._batch_done(item[1])
            elif kind == "call":
                self._call_done(item[1], item[2], item[3])
            else:
                self._sync_workers()

    # -- timers -------------------------------------------------------------------------

    def _later(self, delay: float, kind: str, data: Any) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), kind, data))
        self.handles.append(self.loop.call_later(delay, self._schedule_tick))
        if len(self.handles) > 64:
            self.handles = [h for h in self.handles if not h.cancelled()]

    def _fire_timers(self) -> None:
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _at, _seq, kind, data = heapq.heappop(timers)
            if kind == "retry":
                if self.state[data] == DELAYED:
                    self.delayed -= 1
                    self._make_ready(data)
            elif kind == "timeout":
                self._timeout_batch(data)
            elif kind == "call_timeout":
                i, attempt = data
                if self.state[i] == RUNNING and self.attempts[i] == attempt:
                    exc = CallTimeout(f"node {self.nodes[i].name!r} got no reply within "
                                      f"its timeout of {self.nodes[i].timeout:g}s")
                    self.running -= 1
                    self._failed_attempt(i, exc, timeout=True)

    def _timeout_batch(self, batch: Batch) -> None:
        worker = batch.worker
        if batch.id not in worker.batches or batch.reply is None or batch.reply.done():
            return
        batch.timed_out = True
        self.pool.kill(worker)  # its reply fails with ActorCrashed: see _batch_done
        # Had the worker not read the task yet, the task goes to its restarted process:
        # look again after another timeout (tasks with a timeout go to live workers only,
        # so this is a rare race, not a loop).
        self._later(self.nodes[batch.tids[0]].timeout or 0.0, "timeout", batch)

    # -- ready queue and dispatch -------------------------------------------------------

    def _make_ready(self, i: int) -> None:
        node = self.nodes[i]
        self.state[i] = READY
        heapq.heappush(self.ready, (-node.priority, -self.rank[i], i))

    def _scale(self) -> None:
        """Grow the pool up to ``max_workers`` while tasks wait; retire long-idle workers."""
        now = time.monotonic()
        pool = self.pool
        workers = pool.workers
        active = workers[: self.max_workers]
        waiting_tasks = len(self.ready) + len(self.timed_aside)
        if not waiting_tasks:
            while len(workers) > 1:  # drained: fewer workers, from the last (one stays)
                w = workers[-1]
                if w.batches or now - w.idle_since <= IDLE_RETIRE:
                    break
                pool.retire_last()
                self.counts["workers_retired"] += 1
            return
        if not workers and pool.failed:
            msg = "the graph's workers could not be started (is the system closing?)"
            raise ActorStopped(msg)
        if len(active) < self.max_workers:
            free = sum(CREDIT - len(w.batches) for w in active)
            if free * MAX_BATCH < waiting_tasks or free < min(waiting_tasks, CREDIT):
                pool.grow_to(min(self.max_workers, len(active) + max(1, waiting_tasks)))
        self.peak_workers = max(self.peak_workers, min(len(workers), self.max_workers))

    def _pick(self, *, idle: bool) -> Worker | None:
        now = time.monotonic()
        best = None
        best_finish = math.inf
        for w in self.pool.workers[: self.max_workers]:
            n = len(w.batches)
            if n >= CREDIT or (idle and (n or not w.up)):
                continue
            finish = w.load * w.speed + max(0.0, w.penalty_until - now)
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
            timed = node.timeout is not None
            worker = self._pick(idle=timed)
            if worker is None:
                if timed and self._pick(idle=False) is not None:
                    self.timed_aside.append(heapq.heappop(ready))
                    continue
                break
            self._send(worker, self._take_batch(worker))

    def _estimate(self, i: int) -> float | None:
        fn = self.nodes[i].fn
        return self.est.get(self.codes[id(fn)].digest) if fn is not None else None

    def _take_batch(self, worker: Worker) -> list[int]:
        ready = self.ready
        first = heapq.heappop(ready)[2]
        tids = [first]
        est = self._estimate(first)
        if est is None or self.nodes[first].timeout is not None:
            return tids
        n_workers = max(1, min(len(self.pool.workers), self.max_workers))
        cap = min(MAX_BATCH, max(1, math.ceil((len(ready) + 1) / (CREDIT * n_workers))))
        total = est
        while len(tids) < cap and ready:
            j = ready[0][2]
            if self.state[j] != READY:
                heapq.heappop(ready)
                continue
            node = self.nodes[j]
            if node.fn is None or node.timeout is not None:
                break
            e = self._estimate(j)
            if e is None or total + e > TARGET_BATCH_SECONDS:
                break
            heapq.heappop(ready)
            tids.append(j)
            total += e
        return tids

    def _send(self, worker: Worker, tids: list[int]) -> None:
        nodes, values, codes = self.nodes, self.values, self.codes
        code_map: dict[bytes, bytes] = {}
        wire: list[tuple[Any, ...]] = []
        est = 0.0
        for i in tids:
            node = nodes[i]
            code = codes[id(node.fn)]
            if code.digest not in worker.known:
                code_map[code.digest] = code.blob
            vals = [values[d.index] for d in node.deps] if node.deps else None
            if node.packed is not None:
                wire.append((i, code.digest, (), {}, vals, node.nested, node.packed))
            else:
                wire.append((i, code.digest, node.args, node.kwargs, vals, node.nested, None))
            self.state[i] = RUNNING
            self.attempts[i] += 1
            if self.budgets and self.attempts[i] == 1:
                self._record_call(node)
            est += self.est.get(code.digest, 0.001)
        now = time.monotonic()
        batch = Batch(next(self._bids), worker, tids, est, now)
        worker.batches[batch.id] = batch
        worker.load += est
        worker.known.update(code_map)
        self.counts["code_shipments"] += len(code_map)
        self.running += len(tids)
        self.counts["batches"] += 1
        try:
            batch.reply = self._call_worker(worker, code_map or None, wire)
        except Exception as exc:  # not sendable (validated: should not happen), or stopped
            worker.batches.pop(batch.id, None)
            worker.load -= est
            self._batch_lost(batch, exc)
            return
        if len(tids) == 1 and nodes[tids[0]].timeout is not None:
            self._later(nodes[tids[0]].timeout or 0.0, "timeout", batch)
        batch.reply.add_done_callback(partial(self._batch_callback, batch))

    def _batch_callback(self, batch: Batch, _reply: Reply[Any]) -> None:
        self._notify(("batch", batch))

    def _call_worker(self, worker: Worker, code: dict[bytes, bytes] | None,
                     wire: list[Any]) -> Reply[Any]:
        bufs: list[pickle.PickleBuffer] = []
        blob = pickle.dumps((code, wire), protocol=5, buffer_callback=bufs.append)
        if bufs:  # large arguments: let the transport carry them out of band
            return self.pool.call(worker, "run", code, wire)
        return self.pool.call(worker, "run_packed", blob)

    # -- completion ---------------------------------------------------------------------

    def _batch_done(self, batch: Batch) -> None:
        worker = batch.worker
        if worker.batches.pop(batch.id, None) is None:
            return
        worker.load = max(0.0, worker.load - batch.est)
        worker.idle_since = time.monotonic()
        reply = batch.reply
        assert reply is not None
        exc = reply.exception(0)
        if exc is not None:
            self._batch_lost(batch, exc)
            return
        measured = 0.0
        for tid, status, kind, payload, t0, t1 in reply.result(0):
            self.running -= 1
            if self.state[tid] != RUNNING:
                continue
            node = self.nodes[tid]
            digest = self.codes[id(node.fn)].digest
            if status == NEED_CODE:
                worker.known.discard(digest)
                self.attempts[tid] -= 1
                self._make_ready(tid)
                continue
            self._measure(digest, t1 - t0)
            measured += t1 - t0
            self.t0[tid], self.t1[tid] = t0, t1
            self.where[tid] = worker.actor_id
            worker.busy += t1 - t0
            if status == ERR:
                err, tb = pickle.loads(payload)
                self._failed_attempt(tid, rebuild(err, tb))
            else:
                if kind != SHARED:
                    self.inband += len(payload) if kind == PICKLED else 8
                self._finish(tid, (kind, payload))
        if batch.est > 0 and measured > 0:
            worker.speed = (1 - EWMA) * worker.speed + EWMA * (measured / batch.est)

    def _measure(self, digest: bytes, seconds: float) -> None:
        old = self.est.get(digest)
        self.est[digest] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds

    def _batch_lost(self, batch: Batch, exc: BaseException) -> None:
        """The batch's reply failed as a whole: worker lost, timed out, or stopped."""
        worker = batch.worker
        worker.idle_since = time.monotonic()
        if isinstance(exc, ActorStopped) and worker in self.pool.workers:
            self.pool.lost(worker)  # gone for good (could not start? closing?)
            self.counts["workers_lost"] += 1
            if self.counts["workers_lost"] > 2 * self.max_workers + 2:
                raise exc  # workers keep failing to start: stop trying
        elif isinstance(exc, ActorCrashed):
            worker.known.clear()
            worker.penalty_until = time.monotonic() + 0.05
        for tid in batch.tids:
            if self.state[tid] != RUNNING:
                continue
            self.running -= 1
            name = self.nodes[tid].name
            if batch.timed_out:
                timeout = self.nodes[tid].timeout
                err: BaseException = CallTimeout(
                    f"task {name!r} ran past its timeout of {timeout:g}s (attempt "
                    f"{self.attempts[tid]}); its worker was killed and replaced")
                self._failed_attempt(tid, err, timeout=True)
            elif isinstance(exc, ActorCrashed | ActorStopped):
                self._worker_lost(tid, exc)
            else:
                self._failed_attempt(tid, exc)
        if not self.pool.workers and self.unfinished and not self.stopping:
            self.pool.grow_to(1)

    # -- retry policies -----------------------------------------------------------------

    def _policy(self, node: Node) -> Retry | None:
        """The node's ``retry=``; else ``retries=N`` as a Retry; else the run's ``retry=``."""
        if node.retry is not None:
            return node.retry
        if node.retries:
            policy = self._retries_policies.get(node.retries)
            if policy is None:
                policy = self._retries_policies[node.retries] = Retry(
                    max_attempts=node.retries + 1, backoff=self.backoff,
                    retry_on=(Exception,), budget=None)
            return policy
        return self.retry

    def _record_call(self, node: Node) -> None:
        policy = self._policy(node)
        if policy is not None and policy.budget is not None:
            self.budgets[id(policy)].record_call()

    def _worker_lost(self, tid: int, exc: BaseException) -> None:
        node = self.nodes[tid]
        policy = self._policy(node)
        # Not the task's fault (a batch shares its worker's fate): retried at once, on the
        # best worker now, at least CRASH_ATTEMPTS times whatever the policy says.
        limit = max(policy.max_attempts if policy is not None else 1, CRASH_ATTEMPTS + 1)
        if self.attempts[tid] < limit:
            self.counts["crashes"] += 1
            self._make_ready(tid)  # at once, on whichever worker is best now
            return
        err = ActorCrashed(f"task {node.name!r} lost its worker {self.attempts[tid]} times "
                           f"(last: {exc}); it is not tried again", "lost")
        err.__cause__ = exc
        self._fail(tid, err)

    def _failed_attempt(self, tid: int, exc: BaseException, *, timeout: bool = False) -> None:
        node = self.nodes[tid]
        policy = self._policy(node)
        if policy is not None and not self.stopping:
            budget = self.budgets.get(id(policy)) if policy.budget is not None else None
            delay = policy.decide(exc, self.attempts[tid], now=time.monotonic(),
                                  deadline=None, expected=self._estimate(tid) or 0.0,
                                  budget=budget)
            if delay is not None:
                self.counts["timeouts" if timeout else "retries"] += 1
                self.state[tid] = DELAYED
                self.delayed += 1
                self._later(delay, "retry", tid)
                return
        self._fail(tid, exc)

    # -- actor-call nodes ---------------------------------------------------------------

    def _start_call(self, i: int) -> None:
        node = self.nodes[i]
        self.state[i] = RUNNING
        self.running += 1
        self.attempts[i] += 1
        attempt = self.attempts[i]
        if self.budgets and attempt == 1:
            self._record_call(node)
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
        self._finish(i, value)

    # -- outcomes -----------------------------------------------------------------------

    def _finish(self, i: int, value: tuple[int, Any], *, journal: bool = True) -> None:
        self.state[i] = DONE
        self.done += 1
        self.unfinished -= 1
        self.values[i] = value
        kind, payload = value
        if kind == SHARED:
            self.shared_live += payload.nbytes
            self.shared_peak = max(self.shared_peak, self.shared_live)
        if journal and self.journal is not None:
            self.journal.done(self.nodes[i].key, self.attempts[i], PICKLED,
                              self._journal_blob(kind, payload))
        self._release_inputs(i)
        if kind == SHARED and not self.consumers[i] and not self._kept(i):
            self._release(i)
        for c in self.dependents[i] or ():
            self.waiting[c] -= 1
            if self.waiting[c] == 0 and self.state[c] == WAITING:
                self._make_ready(c)

    def _journal_blob(self, kind: int, payload: Any) -> bytes:
        if kind == PICKLED:
            return bytes(payload)
        if kind == VALUE:
            return pickle.dumps(payload, protocol=5)
        return pickle.dumps(unpack_value(kind, payload), protocol=5)  # a copy, journal only

    def _kept(self, i: int) -> bool:
        return i in self.keep or not self.dependents[i]

    def _release_inputs(self, i: int) -> None:
        for dep in self.nodes[i].deps:
            d = dep.index
            self.consumers[d] -= 1
            if self.consumers[d] == 0 and not self._kept(d):
                self._release(d)

    def _release(self, d: int) -> None:
        value = self.values[d]
        if value is None or value[0] != SHARED:
            return
        obj: SharedObject = value[1]
        obj.unlink()
        self.shared_live -= obj.nbytes
        self.values[d] = None
        self.released.add(d)

    def _fail(self, i: int, exc: BaseException) -> None:
        """Task *i* failed for good: its dependents cannot run (or, fail_fast: stop)."""
        self._mark_failed(i, exc)
        if self.journal is not None:
            try:
                blob = pickle.dumps((exc, ""), protocol=5)
            except Exception:
                blob = pickle.dumps((GraphError(repr(exc)), ""), protocol=5)
            self.journal.failed(self.nodes[i].key, self.attempts[i], blob)
        root = self.nodes[i]
        if self.fail_fast:
            self._stop_all(root, exc)
            return
        stack = list(self.dependents[i] or ())
        while stack:
            c = stack.pop()
            if self.state[c] in _FINISHED:
                continue
            node = self.nodes[c]
            err = GraphError(f"node {node.name!r} did not run: it depends on {root.name!r}, "
                             f"which failed ({type(exc).__name__}: {exc})")
            err.__cause__ = exc
            self._mark_failed(c, err)
            stack.extend(self.dependents[c] or ())

    def _mark_failed(self, i: int, exc: BaseException) -> None:
        if self.state[i] == DELAYED:
            self.delayed -= 1
        self.state[i] = FAILED
        self.errors[i] = exc
        self.failed_count += 1
        self.unfinished -= 1
        self._release_inputs(i)

    def _stop_all(self, root: Node, exc: BaseException) -> None:
        self.stopping = True
        for i in range(len(self.nodes)):
            if self.state[i] not in _FINISHED:
                if self.state[i] == RUNNING:
                    self.running -= 1
                err = GraphError(f"node {self.nodes[i].name!r} did not run: the run stopped "
                                 f"at the first failure (fail_fast), of {root.name!r} "
                                 f"({type(exc).__name__}: {exc})")
                err.__cause__ = exc
                self._mark_failed(i, err)

    def _abandon(self) -> None:
        """Leaving with batches in flight (fail_fast, an interrupt): replace their workers."""
        for w in list(self.pool.workers):
            if w.batches:  # its restarted process starts with an empty mailbox
                w.batches.clear()
                w.load = 0.0
                self.pool.kill(w)
        for i in range(len(self.nodes)):
            value = self.values[i]
            if value is not None and value[0] == SHARED and not self._kept(i):
                self._release(i)

    # -- the result ---------------------------------------------------------------------

    def _result(self, wall: float, cpu: float) -> GraphResult:
        values: dict[int, tuple[int, Any]] = {}
        for i, value in enumerate(self.values):
            if value is None or self.state[i] != DONE:
                continue
            if value[0] == SHARED:  # map it here (zero-copy) and drop the name
                obj: SharedObject = value[1]
                loaded = obj.load()
                obj.unlink()
                self.shared_live -= obj.nbytes
                values[i] = (VALUE, loaded)
            else:
                values[i] = value
        durations = [max(0.0, self.t1[i] - self.t0[i]) for i in range(len(self.nodes))]
        path, seconds = self._critical_path(durations)
        busy = sum(durations[i] for i in range(len(self.nodes)) if self.where[i] >= 0)
        workers = max(1, self.peak_workers)
        stats = GraphStats(
            wall=wall, workers=self.peak_workers,
            tasks=_TaskTable(self), critical_path=[self.nodes[i] for i in path],
            critical_path_seconds=seconds, utilisation=min(1.0, busy / (workers * wall)),
            attempts=sum(self.attempts), retries=self.counts["retries"],
            crashes=self.counts["crashes"], timeouts=self.counts["timeouts"],
            from_journal=len(self.from_journal), batches=self.counts["batches"],
            shared_bytes_peak=self.shared_peak, inband_bytes=self.inband,
            scheduler_seconds=cpu,
            extra={k: self.counts[k] for k in ("code_shipments", "workers_retired")})
        return GraphResult(self.graph, values, self.errors, self.released, stats)

    def _critical_path(self, durations: list[float]) -> tuple[list[int], float]:
        if not self.order:
            return [], 0.0
        total = [0.0] * len(self.nodes)
        prev = [-1] * len(self.nodes)
        for i in self.order:
            node = self.nodes[i]
            best, arg = 0.0, -1
            for p in node.deps + node.after_deps:
                if total[p.index] > best:
                    best, arg = total[p.index], p.index
            total[i] = best + durations[i]
            prev[i] = arg
        end = max(range(len(total)), key=total.__getitem__)
        path = []
        while end >= 0:
            path.append(end)
            end = prev[end]
        path.reverse()
        return path, max(total)


class _TaskTable(Mapping[Node, TaskStats]):
    """``stats.tasks``: built from the scheduler's arrays on access (no object per task)."""

    def __init__(self, sched: Scheduler) -> None:
        self._nodes = sched.nodes
        self._t0, self._t1, self._where = sched.t0, sched.t1, sched.where
        self._attempts = sched.attempts
        self._journal = sched.from_journal
        self._started = [i for i in range(len(sched.nodes))
                         if sched.attempts[i] or i in sched.from_journal]

    def __getitem__(self, node: Node) -> TaskStats:
        i = node.index
        if node.graph is not self._nodes[0].graph or not (self._attempts[i] or i in self._journal):
            raise KeyError(node)
        return TaskStats(self._t0[i], self._t1[i], self._where[i], self._attempts[i],
                         i in self._journal)

    def __iter__(self) -> Iterator[Node]:
        return (self._nodes[i] for i in self._started)

    def __len__(self) -> int:
        return len(self._started)


def _submit(sched: Scheduler, loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[None]:
    """Start *sched* on the system's *loop*; return the future set when the run is over."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        msg = "system.run() was called on the actor system's own loop thread"
        raise RuntimeError(msg)
    sched.begin()
    ended: concurrent.futures.Future[None] = concurrent.futures.Future()
    try:
        loop.call_soon_threadsafe(sched.start, loop, ended)
    except RuntimeError:  # the loop is closed
        sched.finish()
        msg = "the actor system is closed"
        raise ActorStopped(msg) from None
    return ended


def _stop(sched: Scheduler, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
    try:
        loop.call_soon_threadsafe(sched.interrupt, exc)
    except RuntimeError:  # the loop is closed: nothing runs any more
        pass


def run_graph(system: SystemOps, graph: Graph, *, loop: asyncio.AbstractEventLoop,
              **options: Any) -> GraphResult:
    """``system.run(graph, ...)``: validate here, schedule on the system's *loop*, wait."""
    sched = Scheduler(system, graph, **options)  # validates: nothing has run yet
    ended = _submit(sched, loop)
    try:
        ended.result()
    except BaseException as exc:
        if not ended.done():  # interrupted here (Ctrl-C): stop the run, then clean up
            _stop(sched, loop, exc)
            concurrent.futures.wait([ended], timeout=STOP_WAIT)
        sched.finish()
        raise
    return sched.finish()


async def run_graph_async(system: SystemOps, graph: Graph, *,
                          loop: asyncio.AbstractEventLoop, **options: Any) -> GraphResult:
    """``await system.run_async(graph, ...)``: as :func:`run_graph`, awaiting the end."""
    sched = Scheduler(system, graph, **options)
    ended = _submit(sched, loop)
    waiter = asyncio.wrap_future(ended)
    try:
        await asyncio.shield(waiter)
    except BaseException as exc:
        if not ended.done():  # cancelled: stop the run, then clean up
            _stop(sched, loop, exc)
            await asyncio.wait([waiter], timeout=STOP_WAIT)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved: it is the cancellation we raise below
        sched.finish(close_in_background=True)
        raise
    return sched.finish(close_in_background=True)


__all__ = ["Scheduler", "WorkerPool", "run_graph", "run_graph_async"]
