"""Task fusion: a batch also carries the dependents its own tasks will make ready.

A layered graph's tasks become ready a batch at a time: the dependents of a batch's
tasks wait for its reply to reach the scheduler, and go out in another batch, one
round trip (a reply, a wake-up of the scheduler, a dispatch: ≈ 0.4 ms of the user
process's CPU and ≈ 0.3 ms of the worker's) per layer. A dependent whose every input is
either finished already or produced by a task of the batch can go in the same batch,
after those tasks: the worker hands it their values itself (``worker.LOCAL``), and all
the results still come back to the scheduler, which records them in order (a task's
result before its dependents'), so completion, the journal and the attempts counted
are the same as if each had been sent alone. If a task of the batch fails, the fused
tasks that depend on it are not run (``worker.SKIPPED``): no attempt of theirs is
counted, and they wait for it as before; if the whole batch is lost (its worker
killed), the fused tasks wait for their inputs again, the attempt counted
(``failures.Recovery._fused_lost``).

Not fused: a task with a timeout (it runs alone, on an idle worker), an actor call, a
task of lower priority than the best one waiting in the ready queue (it would jump the
queue), and any task once the run holds large results (the memory gate decides which
task may start: ``memory.py``). The fused work is bounded (``FUSE_SECONDS``) so that a
batch stays short enough that a crash re-runs little and the other workers get a share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actorq._graph.graph import Dep, Node
from actorq._graph.state import DONE, WAITING
from actorq._graph.worker import VALUE

# Fused tasks add at most this much estimated CPU to a batch (the batch itself is about
# scheduler.TARGET_BATCH_SECONDS): a layered graph's triangle of dependents above a batch
# of four 5 ms tasks (3 + 2 + 1) is 30 ms; longer batches delay the dependents of the
# tasks that could not be fused (those with an input in another batch).
FUSE_SECONDS = 0.02


def fuse(tids: list[int], total: float, *, nodes: list[Node], state: Sequence[int],
         dependents: list[list[int] | None], estimate: Callable[[Node], float | None],
         top_priority: float) -> set[int]:
    """Append to *tids* (a batch of *total* estimated seconds) the dependents it can carry
    (module docstring), each after the tasks it depends on; return the set of those.

    *estimate* maps a node to its estimated CPU seconds or None (unknown: not fused);
    *top_priority* is the priority of the best task left in the ready queue."""
    fused: set[int] = set()
    inbatch = set(tids)
    last_fn: Any = None
    e: float | None = None
    budget = total + FUSE_SECONDS
    k = 0
    while k < len(tids):
        for c in dependents[tids[k]] or ():
            if c in inbatch or state[c] != WAITING:
                continue
            node = nodes[c]
            if node.fn is None or node.timeout is not None or node.priority < top_priority:
                continue
            if not _inputs_known(node, state, inbatch):
                continue
            if node.fn is not last_fn:  # the estimate, once per run of equal functions
                last_fn = node.fn
                e = estimate(node)
            if e is None or total + e > budget:
                continue
            tids.append(c)
            inbatch.add(c)
            fused.add(c)
            total += e
        k += 1
    return fused


def _inputs_known(node: Node, state: Sequence[int], inbatch: set[int]) -> bool:
    """Whether each of *node*'s inputs is finished or computed in the batch, and each
    task it must only follow (``after``) finished: a failure in the batch would not stop
    it in the worker, which knows only the values it is handed."""
    for d in node.deps:  # plain loops (per candidate: all() of a generator costs more)
        if state[d.index] != DONE and d.index not in inbatch:
            return False
    for a in node.after_deps:  # noqa: SIM110 (as above)
        if state[a.index] != DONE:
            return False
    return True


def patch_args(node: Node, values: list[Any], state: Sequence[int]
               ) -> tuple[tuple[Any, ...], list[tuple[int, int]]] | None:
    """A fused flat task's (``Node.nested == FLAT``) arguments for ``worker.PATCH``:
    its finished inputs' values filled in (plain scalars sent as they are: else None,
    and it is pickled with its values), None where a value of the batch goes, and the
    (tid, position) of each of those; the batch then marshals as a plain one does."""
    out: list[Any] = []
    pairs: list[tuple[int, int]] = []
    deps = node.deps
    for position, arg in enumerate(node.args):
        if type(arg) is Dep:
            d = deps[arg.index].index
            if state[d] != DONE:
                pairs.append((d, position))
                arg = None
            else:
                value = values[d]
                if value[0] != VALUE:
                    return None
                arg = value[1]
        out.append(arg)
    return tuple(out), pairs
