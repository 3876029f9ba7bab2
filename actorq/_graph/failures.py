"""Recovery: what the scheduler does when an attempt fails, and its timers.

An attempt fails in one of three ways, and each is counted (``stats.retries``,
``crashes``, ``timeouts``) so that nothing runs twice unseen:

- the task raised (or an actor call failed): its ``Retry`` decides (``_policy``: the
  node's ``retry=``, else ``retries=N`` as ``Retry(max_attempts=N + 1,
  retry_on=(Exception,), budget=None)``, else the run's ``retry=``): again after the
  policy's backoff, or the task fails for good (``RunState._fail``);
- its worker was lost (SIGKILL, segfault): not the task's fault, since the whole batch
  shared the worker's fate: it is made ready again at once (the worker itself is
  restarted at once, see pool.py), at least ``CRASH_ATTEMPTS`` times whatever its
  policy; a task that loses its worker again waits its policy's backoff first (it may
  be what kills them), counted as a crash all the same;
- it ran past its ``timeout=``: the worker is killed (the pool's supervisor restarts it)
  and the ``CallTimeout`` is a transient failure for the policy.

Timers (retries after their backoff, timeouts) are a heap looked at in every round; each
also wakes the loop when it is due.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import TYPE_CHECKING, Any

from actorq._errors import ActorCrashed, ActorStopped, CallTimeout
from actorq._graph.graph import Node
from actorq._graph.state import DELAYED, RUNNING, WAITING, RunState
from actorq._resilience.backoff import Backoff
from actorq._resilience.retry import Retry, RetryBudget

if TYPE_CHECKING:
    import asyncio

    from actorq._graph.pool import Batch, WorkerPool

CRASH_ATTEMPTS = 3  # a task whose worker died is tried again this many times at least
RETRY_BACKOFF = Backoff(initial=0.01, maximum=1.0)  # the backoff of retries=N


class Recovery(RunState):
    """Failed attempts, retry policies and timers (see the module docstring)."""

    # the scheduler's, used here
    pool: WorkerPool
    counts: dict[str, int]
    max_workers: int
    loop: asyncio.AbstractEventLoop
    handles: list[asyncio.TimerHandle]

    def _schedule_tick(self) -> None:
        """Ask for a scheduling round soon (the scheduler's)."""
        raise NotImplementedError

    def _init_recovery(self, retry: Retry | None, backoff: Backoff | None) -> None:
        # the backoff of retries=N: the run's Retry's if it has one
        self.backoff = backoff or (retry.backoff if retry is not None else RETRY_BACKOFF)
        self.losses: dict[int, int] = {}  # task -> workers it lost (only tasks that did)
        self.retry = retry  # for nodes with neither retries= nor retry=
        self._retries_policies: dict[int, Retry] = {}
        self.timers: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    def _prepare(self) -> None:
        super()._prepare()
        self.budgets: dict[int, RetryBudget] = {}  # id(policy) -> this run's copy
        if self.retry is not None and self.retry.budget is not None:
            self.budgets[id(self.retry)] = self.retry.budget.fresh()
        for node in self.nodes:
            if node.retry is not None and node.retry.budget is not None \
                    and id(node.retry) not in self.budgets:
                self.budgets[id(node.retry)] = node.retry.budget.fresh()

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


    def _batch_lost(self, batch: Batch, exc: BaseException) -> None:
        """The batch's reply failed as a whole: worker lost, timed out, or stopped."""
        self.gate.release(batch.tids)
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
        # counted first: failing a task here fails its fused dependents with it
        lost = [tid for tid in batch.tids if self.state[tid] == RUNNING]
        self.running -= len(lost)
        for tid in lost:
            if self.state[tid] != RUNNING:
                continue
            name = self.nodes[tid].name
            if tid in batch.fused:  # never a task with a timeout
                self._fused_lost(tid, exc)
            elif batch.timed_out:
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
            self.pool.grow_to(1, time.monotonic())


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

    def _crash_limit(self, node: Node) -> int:
        """Attempts a task whose worker was lost may use: a lost worker is not the task's
        fault (a batch shares its worker's fate), so at least CRASH_ATTEMPTS + 1,
        whatever its policy says."""
        policy = self._policy(node)
        return max(policy.max_attempts if policy is not None else 1, CRASH_ATTEMPTS + 1)

    def _worker_lost(self, tid: int, exc: BaseException) -> None:
        node = self.nodes[tid]
        policy = self._policy(node)
        if self.attempts[tid] < self._crash_limit(node):
            self.counts["crashes"] += 1
            losses = self.losses[tid] = self.losses.get(tid, 0) + 1
            if losses == 1:
                self._make_ready(tid)  # at once, on whichever worker is best now
                return
            backoff = policy.backoff if policy is not None else self.backoff
            self.state[tid] = DELAYED  # again: it may be the task that kills them
            self.delayed += 1
            self._later(backoff.delay(losses - 2), "retry", tid)
            return
        err = ActorCrashed(f"task {node.name!r} lost its worker {self.attempts[tid]} times "
                           f"(last: {exc}); it is not tried again", "lost")
        err.__cause__ = exc
        self._fail(tid, err)

    def _fused_lost(self, tid: int, exc: BaseException) -> None:
        """A fused task (fusion.py) lost with its batch: its inputs from that batch are
        lost too (their own failure or retry is decided by their outcome), so it waits
        for them again, with no retry of its own to schedule; the attempt counts, as for
        any task whose worker was lost (``_worker_lost``)."""
        if self.attempts[tid] >= self._crash_limit(self.nodes[tid]):
            self._worker_lost(tid, exc)  # out of attempts: fails it
            return
        if isinstance(exc, ActorCrashed | ActorStopped):
            self.counts["crashes"] += 1
            self.losses[tid] = self.losses.get(tid, 0) + 1
        self.state[tid] = WAITING  # its count-down is untouched: none of them finished

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

