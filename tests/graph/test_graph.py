"""Graph building and validation: pure, no processes (actorq/_graph/graph.py)."""

from __future__ import annotations

import threading

import pytest

import actorq
from actorq._graph.graph import Dep, fill, find_cycle, validate


def inc(x):
    return x + 1


def test_node_arguments_become_edges_also_nested():
    g = actorq.Graph()
    a = g.task(inc, 1)
    b = g.task(inc, 2)
    c = g.task(sorted, [a, (b, {"k": a})])
    assert c.deps == (a, b)
    assert c.nested
    assert fill(c.args, [10, 20]) == ([10, (20, {"k": 10})],)
    assert len(g) == 3
    assert c in g


def test_node_of_another_graph_is_refused_at_once():
    g1, g2 = actorq.Graph(), actorq.Graph()
    a = g1.task(inc, 1)
    with pytest.raises(actorq.GraphError, match=r"inc#0.*another graph"):
        g2.task(inc, a)
    with pytest.raises(actorq.GraphError, match="same graph"):
        g2.task(inc, 1).after(a)


def test_non_callable_and_bad_options_are_refused():
    g = actorq.Graph()
    with pytest.raises(actorq.GraphError, match="not callable"):
        g.task(42, 1)
    with pytest.raises(actorq.GraphError, match="retries"):
        g.task(inc, 1, retries=-1)
    with pytest.raises(actorq.GraphError, match="timeout"):
        g.task(inc, 1, timeout=0)
    with pytest.raises(actorq.GraphError, match="actor ref"):
        g.call(object(), "m")
    assert len(g) == 0


def test_cycle_is_named_node_by_node():
    g = actorq.Graph()
    a = g.task(inc, 1, key="a")
    b = g.task(inc, a, key="b")
    c = g.task(inc, b, key="c")
    a.after(c)
    assert find_cycle(g.nodes) is not None
    with pytest.raises(actorq.GraphError, match=r"cycle: .*(a -> b -> c -> a|b -> c -> a -> b)"):
        validate(g)


def test_unpicklable_argument_is_named():
    g = actorq.Graph()
    g.task(inc, 1)
    g.task(inc, threading.Lock(), key="locked")
    with pytest.raises(actorq.GraphError, match=r"'locked': argument 0 \(lock\)"):
        validate(g)


def test_unpicklable_function_is_named():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    g = actorq.Graph()
    g.task(uses_lock, 1, key="closure")
    with pytest.raises(actorq.GraphError, match=r"'closure': its function .*cannot be sent"):
        validate(g)


def test_lambda_argument_is_shipped_by_value():
    g = actorq.Graph()
    n = g.task(map, lambda x: x, [1])
    validate(g)
    assert n.packed is not None


def test_keys_are_stable_and_distinct():
    def build():
        g = actorq.Graph()
        a = g.task(inc, 1)
        b = g.task(inc, 1)  # same function and arguments: still two tasks
        c = g.task(sorted, [a, b])
        return g, (a, b, c)

    g1, n1 = build()
    g2, n2 = build()
    assert [n.key for n in n1] == [n.key for n in n2]
    assert len({n.key for n in n1}) == 3
    assert g1.digest() == g2.digest()
    g3 = actorq.Graph()
    g3.task(inc, 2)
    assert g3.digest() != g1.digest()


def test_duplicate_user_keys_are_refused():
    g = actorq.Graph()
    g.task(inc, 1, key="x")
    g.task(inc, 2, key="x")
    with pytest.raises(actorq.GraphError, match="same key='x'"):
        g.digest()


def test_dep_placeholder_pickles():
    import pickle

    assert pickle.loads(pickle.dumps(Dep(3))).index == 3
