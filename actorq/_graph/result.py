"""GraphResult: what a run computed (``result[node]``, ``ok``, ``failed``) and its stats."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actorq._errors import GraphError
from actorq._graph.worker import PICKLED, VALUE
from actorq._serialization import loads

if TYPE_CHECKING:
    from actorq._graph.graph import Graph, Node


@dataclass(frozen=True, slots=True)
class TaskStats:
    """One task's run: when it started and ended (``time.monotonic()`` of this host),
    on which worker (-1: not run by a worker: an actor call, or from the journal),
    how many attempts it took, whether its result came from the journal, and how many
    of those attempts were started by earlier runs with the same journal that ended
    before the task was done (``interrupted``: the program was killed or stopped; the
    task ran again in this run). ``attempts`` includes them."""

    start: float
    end: float
    worker: int
    attempts: int
    from_journal: bool = False
    interrupted: int = 0

    @property
    def duration(self) -> float:
        """Seconds the last attempt ran (0 if it did not run)."""
        return max(0.0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class GraphStats:
    """Figures of one run (``result.stats``).

    Attributes:
        wall: seconds from the start of the run to its end.
        workers: the most task workers used at once.
        tasks: per node, its :class:`TaskStats` (nodes that never started are absent).
        critical_path: the chain of nodes with the longest summed measured duration.
        critical_path_seconds: that sum.
        utilisation: busy task time over ``workers * wall`` (0..1).
        attempts: attempts of all tasks; ``retries``, ``crashes`` and ``timeouts`` count
            the extra attempts after exceptions, after lost workers and after timeouts.
        from_journal: tasks whose result came from the journal (not run again).
        batches: messages sent to workers (tiny tasks share one).
        shared_bytes_peak: the most bytes held at once by large results in shared
            memory (each is freed once no pending dependent needs it; see max_memory).
        inband_bytes: bytes of small results that came back through the scheduler.
        scheduler_seconds: CPU time the scheduler took (its set-up on the caller's thread,
            its rounds on the system's loop, the result): its overhead, per run.
        extra: ``code_shipments`` (functions sent to workers: once per function and
            worker), ``workers_retired`` (idle workers stopped as the queue drained),
            ``fused`` (tasks sent in the batch of a task they depend on, whose value
            the worker handed them itself),
            ``held_back`` (times a task waited for room under max_memory) and
            ``run_alone`` (tasks run alone over max_memory because nothing else could),
            ``interrupted`` (tasks run again because an earlier run with this journal
            started them and ended before they were done: killed or stopped; their
            earlier attempts are in ``attempts``, per task in ``TaskStats.interrupted``).
        max_memory: the cap on bytes held by large results that this run kept to.
    """

    wall: float
    workers: int
    tasks: Mapping[Node, TaskStats]
    critical_path: list[Node]
    critical_path_seconds: float
    utilisation: float
    attempts: int
    retries: int
    crashes: int
    timeouts: int
    from_journal: int
    batches: int
    shared_bytes_peak: int
    inband_bytes: int
    scheduler_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    max_memory: int = 0


_MISSING = object()


class GraphResult:
    """The outcome of ``system.run(graph)``.

    ``result[node]`` returns the node's value or raises its error (the task's own
    exception, with the remote traceback as ``__cause__``; a ``GraphError`` naming the
    failed node for a dependent that could not run). ``ok`` is True when every node
    succeeded; ``failed`` maps each node that did not to its exception.
    """

    def __init__(self, graph: Graph, values: dict[int, tuple[int, Any]],
                 errors: dict[int, BaseException], released: set[int],
                 stats: GraphStats) -> None:
        self._graph = graph
        self._values = values
        self._errors = errors
        self._released = released
        self._cache: dict[int, Any] = {}
        self.stats = stats

    @property
    def ok(self) -> bool:
        """True if every node succeeded."""
        return not self._errors

    @property
    def failed(self) -> dict[Node, BaseException]:
        """Each node that did not succeed, with its exception."""
        nodes = self._graph.nodes
        return {nodes[i]: exc for i, exc in sorted(self._errors.items())}

    def __getitem__(self, node: Node) -> Any:
        if node not in self._graph:
            msg = f"{node!r} is not a node of this run's graph"
            raise GraphError(msg)
        i = node.index
        exc = self._errors.get(i)
        if exc is not None:
            raise exc
        value = self._cache.get(i, _MISSING)
        if value is not _MISSING:
            return value
        if i in self._released:
            msg = (f"the value of node {node.name!r} was large and was freed once its "
                   f"dependents had it; pass keep=[node] to system.run() to keep it")
            raise GraphError(msg)
        kind, payload = self._values[i]
        value = loads(payload) if kind == PICKLED else payload
        if kind != VALUE:
            self._cache[i] = value
        return value

    def get(self, node: Node, default: Any = None) -> Any:
        """``result[node]``, or *default* if the node failed."""
        try:
            return self[node]
        except Exception:
            return default

    def __iter__(self) -> Iterator[Node]:
        return iter(self._graph.nodes)

    def __len__(self) -> int:
        return len(self._graph.nodes)

    def __repr__(self) -> str:
        return (f"<GraphResult {len(self)} nodes, {len(self._errors)} failed, "
                f"{self.stats.wall:.3f}s>")


GraphResult.__module__ = "actorq"
GraphStats.__module__ = "actorq"
TaskStats.__module__ = "actorq"
