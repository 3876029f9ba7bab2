"""Job graphs: DAGs of Python functions and actor calls, run across every core.

``graph`` (Graph, Node, validation), ``scheduler`` (ready queue, dispatch, failures),
``worker`` (the task-worker actor), ``pool`` (its supervised set), ``journal`` (SQLite),
``result`` (GraphResult and stats), ``progress`` (the live line on stderr), ``keys``
(stable keys), ``memory`` (the max_memory cap), ``blobs`` (the journal's blob store).
"""

from __future__ import annotations

from actorq._graph.graph import Graph, Node
from actorq._graph.result import GraphResult, GraphStats, TaskStats

__all__ = ["Graph", "GraphResult", "GraphStats", "Node", "TaskStats"]

for _cls in (Graph, Node):
    _cls.__module__ = "actorq"
