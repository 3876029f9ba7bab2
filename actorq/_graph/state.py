"""RunState: one run's per-node state machine, without workers or a loop.

What every node is (waiting, ready, running, done, failed, delayed for a retry), what it
waits for and who waits for it, its value (small: pickled bytes; large: a handle to a
shared-memory segment) and when that value can be freed, its attempts and times, and
what a finished or failed node does to its dependents (counted down, or failed with a
``GraphError`` naming the root cause) and to the journal. Arrays, not objects, per node:
a 100k-node graph costs a few hundred bytes per node. The scheduler (``scheduler.py``)
is a ``RunState`` that also decides when and where tasks run.
"""

from __future__ import annotations

import heapq
import logging
import pickle
from array import array
from typing import Any

from actorq._errors import GraphError
from actorq._graph.blobs import load as load_blob
from actorq._graph.blobs import reference
from actorq._graph.graph import Code, Graph, Node, validate
from actorq._graph.journal import BLOB, Journal
from actorq._graph.memory import MemoryGate, check_max_memory
from actorq._graph.worker import PICKLED, SHARED, VALUE
from actorq._shared import SharedObject, share_pickled

WAITING, READY, RUNNING, DONE, FAILED, DELAYED = range(6)
EWMA = 0.3  # weight of a new duration measurement
# Batches are sized by a task's CPU time, which a loaded machine does not stretch (its
# wall time may be several times longer while the worker waits for a core); a task that
# mostly waits (sleeps, I/O) counts at least this fraction of its wall time less its
# wait for a core, so that a batch of them stays within a few TARGET_BATCH_SECONDS of
# wall time (and a CPU-bound task on a loaded machine counts its CPU time only).
STRETCH = 4.0
_FINISHED = (DONE, FAILED)
logger = logging.getLogger(__name__)


class RunState:
    """The nodes of one run and their outcomes (see the module docstring)."""

    def __init__(self, graph: Graph, *, keep: Any, journal: Any, fail_fast: bool,
                 threshold: int, prefix: str, max_memory: int | None = None) -> None:
        if not isinstance(graph, Graph):
            msg = f"system.run() needs an actorq.Graph, not {graph!r}"
            raise GraphError(msg)
        self.graph = graph
        self.nodes = graph.nodes
        self.fail_fast = fail_fast
        keep = list(keep or ())
        self.keep = {n.index for n in keep if n in graph}
        if len(self.keep) != len(keep):
            msg = "keep= must list nodes of this graph"
            raise GraphError(msg)
        self.gate = MemoryGate(check_max_memory(max_memory))  # see memory.py
        self.codes: dict[int, Code] = validate(graph)  # before anything runs
        self.threshold = threshold
        self.prefix = prefix
        self.journal = Journal(journal, graph.digest(), len(graph)) if journal else None
        self.store = self.journal.store if self.journal is not None else None
        self.blobs_rerun = 0

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
        # task -> attempts that earlier runs started and did not finish (killed): counted
        # in its stats and journal row, not against this run's retry budget
        self.prior: dict[int, int] = {}
        self.ready: list[tuple[int, float, int]] = []
        self.est: dict[bytes, float] = {}  # function digest -> seconds (EWMA)
        # function digest -> seconds of work per task (EWMA): what batches are sized by;
        # its CPU time, or a STRETCH-th of its wall time if more (a task that sleeps)
        self.est_cpu: dict[bytes, float] = {}
        consumers, waiting, dependents = self.consumers, self.waiting, self.dependents
        self.edges = False  # any dependency at all (else nothing to fuse: fusion.py)
        for node in self.nodes:  # per node: plain loops, the attributes looked up once
            deps, after = node.deps, node.after_deps
            if not deps and not after:
                continue  # a root: nothing to count
            self.edges = True
            parents = {d.index for d in deps}
            for d in parents:
                consumers[d] += 1
            if after:
                parents.update(a.index for a in after)
            index = node.index
            waiting[index] = len(parents)
            for p in parents:
                lst = dependents[p]
                if lst is None:
                    dependents[p] = [index]
                else:
                    lst.append(index)
        self.order = self._topological()
        self.rank = self._ranks()
        self.done = self.failed_count = self.running = self.delayed = 0
        self.unfinished = n
        self.stopping = False
        self.inband = 0

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
        dependents, at = self.dependents, rank.__getitem__
        for i in reversed(self.order):
            below = dependents[i]
            if below:
                rank[i] = 1.0 + max(map(at, below))
        return rank


    def _resume_from_journal(self) -> None:
        """Finish the tasks the journal has as done, before anything is dispatched.

        A large result is in the blob store; it is copied back into shared memory only if
        something still needs it (the user, or a dependent that is not done), so sinks
        first (reverse topological order). A blob that is missing or fails its check is
        logged and its task runs again (``stats.extra["journal_blobs_rerun"]``).
        """
        if self.journal is None:
            return
        rows = self.journal.finished()
        nodes = self.nodes
        starts = self.journal.prior
        if starts:
            self.prior = {i: starts[node.key] for i, node in enumerate(nodes)
                          if node.key in starts and node.key not in rows}
        if not rows:
            return
        found: dict[int, tuple[int, Any]] = {}
        for i in reversed(self.order):
            row = rows.get(nodes[i].key)
            if row is None:
                continue
            attempts, kind, payload = row
            value: tuple[int, Any]
            if kind == BLOB:
                if self._kept(i) or any(c not in found for c in self.dependents[i] or ()):
                    obj = load_blob(self.journal.store, payload, self.prefix)
                    if isinstance(obj, str):
                        logger.warning("node %r runs again although the journal has it as "
                                       "done: %s", nodes[i].name, obj)
                        self.blobs_rerun += 1
                        continue
                    value = (SHARED, obj)
                else:  # every dependent is done too: not loaded
                    value = (VALUE, None)
                    self.released.add(i)
            elif len(payload) >= self.threshold:
                value = (SHARED, share_pickled(payload, self.prefix))
            else:
                value = (PICKLED, payload)
            self.attempts[i] = attempts
            found[i] = value
        for i in self.order:
            if i in found:
                self.from_journal.add(i)
                self._finish(i, found[i], journal=False)

    # -- durations ----------------------------------------------------------------------

    def _estimate(self, i: int) -> float | None:
        fn = self.nodes[i].fn
        return self.est.get(self.codes[id(fn)].digest) if fn is not None else None


    def _measure(self, digest: bytes, seconds: float, cpu: float | None = None,
                 active: float | None = None) -> None:
        """Fold a task's measured *seconds* (wall), *cpu* and *active* time (wall less
        its wait for a core; default: all of it) into its function's estimates."""
        old = self.est.get(digest)
        self.est[digest] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds
        if cpu is not None:
            floor = (seconds if active is None else active) / STRETCH
            if cpu < floor:  # max(), without the builtin's call (once per batch)
                cpu = floor
            old = self.est_cpu.get(digest)
            self.est_cpu[digest] = cpu if old is None else (1 - EWMA) * old + EWMA * cpu


    # -- the ready queue ----------------------------------------------------------------

    def _make_ready_many(self, ids: list[int]) -> None:
        """``_make_ready`` for many at once: one heapify, not a push each."""
        nodes, rank, state, ready = self.nodes, self.rank, self.state, self.ready
        for i in ids:
            state[i] = READY
            ready.append((-nodes[i].priority, -rank[i], i))
        heapq.heapify(ready)

    def _make_ready(self, i: int) -> None:
        node = self.nodes[i]
        self.state[i] = READY
        heapq.heappush(self.ready, (-node.priority, -self.rank[i], i))


    # -- outcomes -----------------------------------------------------------------------

    def _finish(self, i: int, value: tuple[int, Any], *, journal: bool = True) -> None:
        self.state[i] = DONE
        self.done += 1
        self.unfinished -= 1
        self.values[i] = value
        # a small value, no journal, no large result yet: nothing but the count-down
        # (the common case, once per task: the checks below only when one may apply)
        if value[0] == SHARED or self.gate.on or (journal and self.journal is not None):
            self._keep_track(i, value, journal=journal)
        dependents = self.dependents[i]
        if dependents:  # counted down; those with nothing left to wait for are ready
            waiting, state, nodes, rank = self.waiting, self.state, self.nodes, self.rank
            for c in dependents:
                left = waiting[c] - 1
                waiting[c] = left
                if not left and state[c] == WAITING:
                    state[c] = READY  # _make_ready, inlined (once per task)
                    heapq.heappush(self.ready, (-nodes[c].priority, -rank[c], c))

    def _keep_track(self, i: int, value: tuple[int, Any], *, journal: bool) -> None:
        """``_finish``'s bookkeeping of large values and the journal."""
        kind, payload = value
        if kind == SHARED:
            if not self.gate.on:
                self.gate.start(self._in_flight())
            self.gate.add(payload.nbytes)
        if journal and self.journal is not None:
            attempts = self.attempts[i] + self.prior.get(i, 0) if self.prior else \
                self.attempts[i]
            if kind == SHARED:  # the worker put it in the blob store: journal a reference
                self.journal.done(self.nodes[i].key, attempts, BLOB, reference(payload))
            else:
                self.journal.done(self.nodes[i].key, attempts, PICKLED,
                                  self._journal_blob(kind, payload))
        if self.gate.on and self.nodes[i].deps:
            # Consumers are counted down only while large results (shared memory, freed
            # when their last consumer is done) may exist: before the run's first one
            # (the gate turns on with it) no value is large, and every consumer of a
            # later one is done after it, so the counts of small values are never read.
            self._release_inputs(i)
        if kind == SHARED and not self.consumers[i] and not self._kept(i):
            self._release(i)

    def _journal_blob(self, kind: int, payload: Any) -> bytes:  # a small value
        if kind == PICKLED:
            return bytes(payload)
        return pickle.dumps(payload, protocol=5)

    def _in_flight(self) -> list[int]:
        """The tasks sent and not back yet (the scheduler knows)."""
        return []

    def _kept(self, i: int) -> bool:
        return i in self.keep or not self.dependents[i]

    def _release_inputs(self, i: int) -> None:
        consumers, values = self.consumers, self.values
        for dep in self.nodes[i].deps:
            d = dep.index
            left = consumers[d] - 1
            consumers[d] = left
            if not left:
                value = values[d]
                if value is not None and value[0] == SHARED and not self._kept(d):
                    self._release(d)

    def _release(self, d: int) -> None:
        value = self.values[d]
        if value is None or value[0] != SHARED:
            return
        obj: SharedObject = value[1]
        obj.unlink()
        self.gate.sub(obj.nbytes)
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
            self.journal.failed(self.nodes[i].key, self.attempts[i] + self.prior.get(i, 0),
                                blob)
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

    def _release_all(self) -> None:
        """Free every large value nobody will read (the run ended, maybe early). Every
        large value turned the memory gate on (``_keep_track``): without one, nothing
        to free, and no pass over the nodes at the end of every run."""
        if not self.gate.on:
            return
        for i in range(len(self.nodes)):
            value = self.values[i]
            if value is not None and value[0] == SHARED and not self._kept(i):
                self._release(i)
