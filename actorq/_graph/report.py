"""The result of a run: values (large ones mapped here, zero-copy) and its figures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from actorq._graph.graph import Node
from actorq._graph.result import GraphResult, GraphStats, TaskStats
from actorq._graph.state import DONE, RunState
from actorq._graph.worker import SHARED, VALUE
from actorq._shared import SharedObject


def build_result(run: RunState, wall: float, cpu: float, *, workers: int,
                 counts: dict[str, int]) -> GraphResult:
    """*run*'s ``GraphResult``: every large value is mapped here and its name dropped."""
    values: dict[int, tuple[int, Any]] = {}
    for i, value in enumerate(run.values):
        if value is None or run.state[i] != DONE:
            continue
        if value[0] == SHARED:  # map it here (zero-copy) and drop the name
            obj: SharedObject = value[1]
            loaded = obj.load()
            obj.unlink()
            run.gate.sub(obj.nbytes)
            values[i] = (VALUE, loaded)
        else:
            values[i] = value
    durations = [b - a if b > a else 0.0 for a, b in zip(run.t0, run.t1, strict=True)]
    path, seconds = critical_path(run, durations)
    busy = sum(d for d, w in zip(durations, run.where, strict=True) if w >= 0)
    stats = GraphStats(
        wall=wall, workers=workers,
        tasks=_TaskTable(run), critical_path=[run.nodes[i] for i in path],
        critical_path_seconds=seconds,
        utilisation=min(1.0, busy / (max(1, workers) * wall)) if wall > 0 else 0.0,
        attempts=sum(run.attempts) + sum(run.prior.values()), retries=counts["retries"],
        crashes=counts["crashes"], timeouts=counts["timeouts"],
        from_journal=len(run.from_journal), batches=counts["batches"],
        shared_bytes_peak=run.gate.peak, inband_bytes=run.inband,
        scheduler_seconds=cpu,
        extra={**{k: counts[k] for k in ("code_shipments", "workers_retired", "fused")},
               "held_back": run.gate.held_back, "run_alone": run.gate.forced,
               "journal_blobs_rerun": run.blobs_rerun, "interrupted": len(run.prior),
               "journal_rows": run.journal.committed if run.journal is not None else 0,
               "journal_unclean": bool(run.journal is not None and run.journal.unclean)},
        max_memory=run.gate.cap)
    return GraphResult(run.graph, values, run.errors, run.released, stats)


def critical_path(run: RunState, durations: list[float]) -> tuple[list[int], float]:
    """The chain of nodes with the longest summed duration, and that sum."""
    if not run.order:
        return [], 0.0
    total = [0.0] * len(run.nodes)
    prev = [-1] * len(run.nodes)
    nodes = run.nodes
    for i in run.order:
        node = nodes[i]
        if not node.deps and not node.after_deps:  # a root
            total[i] = durations[i]
            continue
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

    def __init__(self, sched: RunState) -> None:
        self._nodes = sched.nodes
        self._t0, self._t1, self._where = sched.t0, sched.t1, sched.where
        self._attempts = sched.attempts
        self._journal = sched.from_journal
        self._prior = sched.prior
        self._started = [i for i in range(len(sched.nodes))
                         if sched.attempts[i] or i in sched.from_journal or i in sched.prior]

    def __getitem__(self, node: Node) -> TaskStats:
        i = node.index
        prior = self._prior.get(i, 0)
        if node.graph is not self._nodes[0].graph or not (
                self._attempts[i] or prior or i in self._journal):
            raise KeyError(node)
        return TaskStats(self._t0[i], self._t1[i], self._where[i], self._attempts[i] + prior,
                         i in self._journal, prior)

    def __iter__(self) -> Iterator[Node]:
        return (self._nodes[i] for i in self._started)

    def __len__(self) -> int:
        return len(self._started)
