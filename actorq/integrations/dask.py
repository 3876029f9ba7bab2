"""A Dask scheduler that runs Dask task graphs as actorq job graphs.

    import dask
    from actorq.integrations import dask as aq_dask

    dask.compute(x, scheduler=aq_dask.get)                  # a shared default system
    x.compute(scheduler=aq_dask.get, system=system)         # or one of yours

Every key of the (optimised) Dask graph becomes one task of an actorq graph; its
dependencies' values reach it the way any task's do (large arrays by shared-memory
handle). Results are those of Dask's own schedulers; a task's exception is re-raised
as Dask does (its own type, with the remote traceback as ``__cause__``). Needs the
``dask`` extra (``pip install actorq[dask]``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from dask._task_spec import GraphNode, convert_legacy_graph

import actorq

_default: actorq.ActorSystem | None = None
_default_lock = threading.Lock()


def default_system() -> actorq.ActorSystem:
    """The system ``get`` uses without ``system=`` (started once, closed at exit)."""
    global _default
    with _default_lock:
        if _default is None or _default.metrics()["system"]["closed"]:
            _default = actorq.ActorSystem()
        return _default


def _run_node(node: GraphNode, data: dict[Any, Any]) -> Any:
    """In a worker: run one Dask graph node with its dependencies' values."""
    return node(data)


def to_graph(dsk: Mapping[Any, Any]) -> tuple[actorq.Graph, dict[Any, actorq.Node]]:
    """Translate a Dask graph (legacy tuples or task-spec nodes) into an actorq graph.

    Raises ``actorq.GraphError`` for a cycle (naming its keys).
    """
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    spec: dict[Any, GraphNode] = convert_legacy_graph(dict(dsk))
    waiting = {key: {d for d in node.dependencies if d in spec} for key, node in spec.items()}
    users: dict[Any, list[Any]] = {key: [] for key in spec}
    for key, deps in waiting.items():
        for dep in deps:
            users[dep].append(key)
    ready = [key for key, deps in waiting.items() if not deps]
    g = actorq.Graph()
    nodes: dict[Any, actorq.Node] = {}
    while ready:
        key = ready.pop()
        values = {d: nodes[d] for d in spec[key].dependencies if d in nodes}
        nodes[key] = g.task(_run_node, spec[key], values, key=str(key))
        for user in users[key]:
            waiting[user].discard(key)
            if not waiting[user]:
                ready.append(user)
    if len(nodes) != len(spec):
        stuck = sorted(str(k) for k in spec if k not in nodes)[:5]
        msg = f"the Dask graph has a cycle among the keys {', '.join(stuck)}"
        raise actorq.GraphError(msg)
    return g, nodes


def get(dsk: Mapping[Any, Any], keys: Any, *, system: actorq.ActorSystem | None = None,
        num_workers: int | None = None, workers: int | None = None,
        progress: bool | None = None, **_ignored: Any) -> Any:
    """Compute *keys* (a key, or nested lists of keys) of the Dask graph *dsk*.

    Args:
        dsk: the task graph (as Dask schedulers get it).
        keys: what to return, in the same nesting.
        system: the actor system to run on (default: :func:`default_system`).
        num_workers: task workers (Dask's name; ``workers`` is actorq's), default: cores.
        progress: actorq's progress line on stderr (default: when stderr is a terminal).

    Raises the first failed task's own exception, as Dask's schedulers do.
    """
    g, nodes = to_graph(dsk)
    system = system or default_system()
    result = system.run(g, workers=workers or num_workers, progress=progress)

    def pick(k: Any) -> Any:
        if isinstance(k, list):
            return [pick(x) for x in k]
        try:
            return result[nodes[k]]
        except actorq.GraphError as exc:
            cause = exc.__cause__
            if cause is not None and not isinstance(cause, actorq.RemoteTraceback):
                raise cause from cause.__cause__  # the root failure, as Dask raises it
            raise

    return pick(keys)
