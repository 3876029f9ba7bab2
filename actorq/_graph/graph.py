"""Graph and Node: a DAG of Python functions and actor calls, validated before it runs.

A node's arguments are stored as a *template*: every ``Node`` found in them (also
nested in lists, tuples, dicts and sets) is replaced by a :class:`Dep` placeholder that
holds its position in ``node.deps``. The template pickles without the graph, and the
worker puts the dependencies' values in place (``fill``)::

    g.task(merge, a, [b, {"x": c}])   →   args (Dep(0), [Dep(1), {"x": Dep(2)}]),
                                          deps (a, b, c)

:func:`validate` runs before anything is sent: cycles (named), functions and arguments
that cannot be pickled (named), and it pickles each distinct function once with
cloudpickle (workers cache it by digest).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from actorq._errors import GraphError
from actorq._graph.keys import Encoder, function_ident
from actorq._resilience.retry import Retry
from actorq._serialization import SAFE_TYPES, dumps_code, quick_safe


class Dep:
    """Placeholder for the value of ``node.deps[index]`` inside an argument template."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Dep, (self.index,))

    def __repr__(self) -> str:
        return f"Dep({self.index})"


_CONTAINERS = (list, tuple, dict, set, frozenset)
FLAT = 2  # Node.nested of a flat template: scalars and top-level Deps, no keywords


def _template(obj: Any, deps: list[Node], seen: dict[int, int], graph: Graph,
              owner: Node) -> tuple[Any, bool]:
    """Return (template, changed): *obj* with every Node replaced by a Dep (*owner*: the
    node whose arguments these are, named in the error)."""
    kind = type(obj)
    if kind in SAFE_TYPES:
        return obj, False
    if isinstance(obj, Node):
        if obj.graph is not graph:
            msg = (f"node {owner.name!r}: argument {obj.name!r} is a node of another graph; "
                   "a graph can only use its own nodes (build the whole computation in one "
                   "Graph)")
            raise GraphError(msg)
        index = seen.get(obj.index)
        if index is None:
            index = seen[obj.index] = len(deps)
            deps.append(obj)
        return Dep(index), True
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        items = [_template(x, deps, seen, graph, owner) for x in obj]
        if not any(c for _x, c in items):
            return obj, False
        return kind(x for x, _c in items), True
    if kind is dict:
        pairs = [(k, _template(v, deps, seen, graph, owner)) for k, v in obj.items()]
        if not any(c for _k, (_v, c) in pairs):
            return obj, False
        return {k: v for k, (v, _c) in pairs}, True
    return obj, False


def fill(obj: Any, values: list[Any]) -> Any:
    """The inverse of the template: every Dep replaced by its value."""
    kind = type(obj)
    if kind is Dep:
        return values[obj.index]
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return kind(fill(x, values) for x in obj)
    if kind is dict:
        return {k: fill(v, values) for k, v in obj.items()}
    return obj


class Node:
    """One task (a function call) or actor call of a :class:`Graph`.

    Pass a node as an argument of another task to make an edge: the task then receives
    the node's value. ``node.after(*others)`` adds ordering-only edges. Nodes compare by
    identity and are hashable; ``result[node]`` reads a finished run's value.
    """

    __slots__ = ("_key", "_name", "after_deps", "args", "deps", "fn", "graph", "index",
                 "kwargs", "method", "nested", "packed", "priority", "retries", "retry",
                 "target", "timeout", "user_key")

    def __init__(self, graph: Graph, index: int, fn: Callable[..., Any] | None,
                 target: Any, method: str | None, name: str | None) -> None:
        self.graph = graph
        self.index = index
        self.fn = fn
        self.target = target
        self.method = method
        self._name = name  # None: "<function>#<index>", made when first asked for
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.deps: tuple[Node, ...] = ()
        self.after_deps: tuple[Node, ...] = ()
        # its arguments hold Deps: 0 no, 1 a template (filled by ``fill``), FLAT one of
        # scalars and top-level Deps only, no keywords (``worker.fill_flat`` too)
        self.nested = 0
        self.packed: bytes | None = None  # (args, kwargs) by cloudpickle, when pickle fails
        self.retries = 0
        self.retry: Retry | None = None
        self.timeout: float | None = None
        self.priority = 0
        self.user_key: str | None = None
        self._key: str | None = None

    @property
    def name(self) -> str:
        """Its ``key=``, or ``"<function>#<index>"`` (``"<actor>.<method>#<index>"``)."""
        if self._name is None:
            self._name = f"{_describe_callable(self.fn)}#{self.index}"
        return self._name

    def after(self, *nodes: Node) -> Node:
        """Run this node only after *nodes* have finished (without passing their values).

        Returns this node. A node of another graph raises ``GraphError``.
        """
        for other in nodes:
            if not isinstance(other, Node) or other.graph is not self.graph:
                msg = f"node {self.name!r}.after({other!r}): not a node of the same graph"
                raise GraphError(msg)
            if other.index >= self.index:  # an edge to a later node: a cycle is possible
                self.graph._forward = True
        self.after_deps = self.after_deps + tuple(nodes)
        return self

    @property
    def key(self) -> str:
        """A key stable across runs: the user's ``key=``, or a digest of what it computes."""
        if self._key is None:
            self.graph._compute_keys()
        assert self._key is not None
        return self._key

    def __repr__(self) -> str:
        return f"<Node {self.name!r}>"


def _describe_callable(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


class Graph:
    """A directed acyclic graph of tasks; run it with ``system.run(graph)``.

    ``g.task(fn, *args, **kwargs)`` adds a function call, ``g.call(ref, "method", *args)``
    an actor call. Both return a :class:`Node`; nodes given as arguments (anywhere in
    lists, tuples, dicts and sets) become edges.

    *salt* (a str, optional) goes into every derived task key (not into ``key=``s given
    by hand, nor into the graph's shape): change it, e.g. to a library's version, to make
    every task of a journaled graph run again; the journal is still this graph's.
    """

    def __init__(self, *, salt: str | None = None) -> None:
        if salt is not None and not isinstance(salt, str):
            msg = f"salt must be a str or None, not {salt!r}"
            raise GraphError(msg)
        self.salt = salt
        self.nodes: list[Node] = []
        self._forward = False  # an after() edge to a later node (else acyclic by order)
        self._plain = bytearray()  # per node: 1 if its arguments are plain scalars
        self._keys_done = 0
        self._key_counts: dict[str, int] = {}
        self._shapes: list[str] = []
        self._encoder: Encoder | None = None

    def task(self, fn: Callable[..., Any], *args: Any, retries: int = 0,
             timeout: float | None = None, priority: int = 0, key: str | None = None,
             retry: Retry | None = None, **kwargs: Any) -> Node:
        """Add a call of ``fn(*args, **kwargs)`` to the graph and return its node.

        Args:
            fn: the function (any callable that pickles: by reference, or by value with
                cloudpickle for lambdas, closures and ``__main__`` functions).
            retries: extra attempts after the task raised or timed out (a task whose
                worker died is tried again regardless, up to ``CRASH_ATTEMPTS`` times);
                the same as ``retry=Retry(max_attempts=retries + 1,
                retry_on=(Exception,), budget=None)`` with the graph's backoff.
            retry: an ``actorq.Retry``: which failures are retried (crashes, timeouts
                and its ``retry_on`` types), how often and after which backoff;
                instead of ``retries`` (default: the run's ``retry=``, else none).
            timeout: seconds one attempt may run; past it the worker is killed and
                replaced, and the attempt fails with ``CallTimeout``.
            priority: higher runs first among ready tasks.
            key: a stable name for the journal (default: a digest of the function's
                module, name and code, the helpers and classes it uses from the user's
                modules, the arguments and the dependencies' keys; see
                ``actorq._graph.keys``).

        Raises ``GraphError`` at once for a non-callable *fn*, a node of another graph
        among the arguments, or a bad option.
        """
        if not callable(fn):
            msg = (f"task {len(self.nodes)}: {fn!r} is not callable; g.task(fn, *args) "
                   "needs a function first")
            raise GraphError(msg)
        node = Node(self, len(self.nodes), fn, None, None, key)
        self._fill(node, args, kwargs, retries, timeout, priority, key, retry)
        return node

    def call(self, target: Any, method: str, *args: Any, retries: int = 0,
             timeout: float | None = None, priority: int = 0, key: str | None = None,
             retry: Retry | None = None, **kwargs: Any) -> Node:
        """Add ``target.call(method, *args, **kwargs)`` (an actor ref or a pool) as a node.

        The call is made from the scheduler; the actor runs it in its own process. Same
        options as :meth:`task`. Raises ``GraphError`` if *target* has no ``call``.
        """
        if not callable(getattr(target, "call", None)) or not isinstance(method, str):
            msg = (f"g.call({target!r}, {method!r}): needs an actor ref (or pool) and a "
                   "method name")
            raise GraphError(msg)
        name = key or f"{getattr(target, 'name', type(target).__name__)}.{method}#{len(self.nodes)}"
        node = Node(self, len(self.nodes), None, target, method, name)
        self._fill(node, args, kwargs, retries, timeout, priority, key, retry)
        return node

    def _fill(self, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], retries: int,
              timeout: float | None, priority: int, key: str | None,
              retry: Retry | None) -> None:
        if not kwargs and retry is None and timeout is None and type(retries) is int \
                and retries >= 0 and type(priority) is int:
            for arg in args:  # the common case, scalars only: no template, no checks
                if type(arg) not in SAFE_TYPES:
                    break
            else:
                node.args = args
                node.retries, node.priority, node.user_key = retries, priority, key
                self.nodes.append(node)
                self._plain.append(1)  # validation need not look at its arguments
                return
        if not isinstance(retries, int) or retries < 0:
            msg = f"node {node.name!r}: retries must be an int >= 0, not {retries!r}"
            raise GraphError(msg)
        if retry is not None:
            if not isinstance(retry, Retry):
                msg = f"node {node.name!r}: retry must be an actorq.Retry, not {retry!r}"
                raise GraphError(msg)
            if retries:
                msg = (f"node {node.name!r}: give retries= or retry=, not both (retries=N "
                       "is Retry(max_attempts=N + 1, retry_on=(Exception,)))")
                raise GraphError(msg)
            node.retry = retry
        if timeout is not None and not timeout > 0:
            msg = f"node {node.name!r}: timeout must be positive seconds, not {timeout!r}"
            raise GraphError(msg)
        for arg in args:  # the common case, scalars only: no template to build
            if type(arg) not in SAFE_TYPES:
                break
        else:
            if not kwargs:
                node.args = args
                node.retries, node.timeout, node.priority = retries, timeout, int(priority)
                node.user_key = key
                self.nodes.append(node)
                self._plain.append(1)  # validation need not look at its arguments
                return
        deps: list[Node] = []
        seen: dict[int, int] = {}
        if not kwargs:  # the common case, flat: scalars and this graph's nodes
            flat: list[Any] = []
            for arg in args:
                kind = type(arg)
                if kind is Node and arg.graph is self:
                    index = seen.get(arg.index)
                    if index is None:
                        index = seen[arg.index] = len(deps)
                        deps.append(arg)
                    flat.append(Dep(index))
                elif kind in SAFE_TYPES:
                    flat.append(arg)
                else:
                    break
            else:  # every one a scalar or a node (at least one: scalars alone returned above)
                node.args, node.kwargs = tuple(flat), {}
                node.deps = tuple(deps)
                node.nested = FLAT
                node.retries, node.timeout, node.priority = retries, timeout, int(priority)
                node.user_key = key
                self.nodes.append(node)
                self._plain.append(0)
                return
            deps.clear()
            seen.clear()
        targs, changed = _template(args, deps, seen, self, node)
        tkwargs, changed_kw = _template(kwargs, deps, seen, self, node) if kwargs else ({},
                                                                                      False)
        node.args, node.kwargs = targs, tkwargs
        node.deps = tuple(deps)
        node.nested = int(changed or changed_kw)
        node.retries, node.timeout, node.priority = retries, timeout, int(priority)
        node.user_key = key
        self.nodes.append(node)
        self._plain.append(0)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, Node) and node.graph is self

    def _compute_keys(self) -> None:
        """Give every node its stable key and shape (see ``actorq._graph.keys``)."""
        enc = self._encoder
        if enc is None:
            enc = self._encoder = Encoder()
        counts = self._key_counts
        shapes = self._shapes
        for node in self.nodes[self._keys_done:]:
            if node.user_key is not None:
                node._key = node.user_key
                shapes.append(f"user:{node.user_key}")
                continue
            if node.fn is not None:
                ident, code = function_ident(node.fn), enc.function(node.fn)
            else:
                ident, code = f"call:{getattr(node.target, 'name', '?')}.{node.method}", b""
            args = enc.encode((node.args, node.kwargs))
            shape = hashlib.blake2b(ident.encode(), digest_size=12)
            shape.update(args)
            key = shape.copy()
            key.update(code)
            if self.salt is not None:
                key.update(b"salt:" + self.salt.encode())
            for dep in node.deps + node.after_deps:
                shape.update(shapes[dep.index].encode())
                key.update(dep.key.encode())
            for h, kind in ((key, "k"), (shape, "s")):
                base = h.hexdigest()
                n = counts.get(kind + base, 0)
                counts[kind + base] = n + 1
                if kind == "k":
                    node._key = f"{base}.{n}" if n else base
                else:
                    shapes.append(f"{base}.{n}" if n else base)
        self._keys_done = len(self.nodes)
        users = [n.user_key for n in self.nodes if n.user_key is not None]
        if len(users) != len(set(users)):
            dup = next(k for k in users if users.count(k) > 1)
            msg = f"two nodes have the same key={dup!r}; keys must be unique in a graph"
            raise GraphError(msg)

    def digest(self) -> str:
        """A digest of the graph's shape: its nodes' functions (by name), arguments, keys
        given by the user and edges, not the functions' code. The journal's check that it
        belongs to this graph (an edited function keeps it; its tasks' keys change)."""
        self._compute_keys()
        h = hashlib.blake2b(digest_size=16)
        for shape in self._shapes:
            h.update(shape.encode())
            h.update(b"|")
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Code:
    """A function pickled once (cloudpickle) and the digest workers cache it by."""

    digest: bytes
    blob: bytes


def find_cycle(nodes: list[Node]) -> list[Node] | None:
    """Return the nodes of a cycle (first repeated at the end), or None (iterative DFS)."""
    state = bytearray(len(nodes))  # 0 new, 1 on the stack, 2 done
    for root in nodes:
        if state[root.index]:
            continue
        stack: list[tuple[Node, Iterator[Node]]] = [(root, iter(root.deps + root.after_deps))]
        state[root.index] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node.index] = 2
                stack.pop()
            elif state[nxt.index] == 1:
                path = [n for n, _ in stack]
                cycle = path[path.index(nxt):]
                return [*cycle, nxt]
            elif state[nxt.index] == 0:
                state[nxt.index] = 1
                stack.append((nxt, iter(nxt.deps + nxt.after_deps)))
    return None


def validate(graph: Graph) -> dict[int, Code]:
    """Check *graph* before anything runs; return each distinct function's ``Code``.

    Raises ``GraphError`` naming the node: a cycle (every node on it, in order), a
    function or an argument that cannot be pickled.
    """
    # Arguments can only name nodes that exist already (lower indexes): only an after()
    # edge to a later node can close a cycle.
    cycle = find_cycle(graph.nodes) if graph._forward else None
    if cycle is not None:
        path = " -> ".join(n.name for n in reversed(cycle))
        msg = f"graph has a cycle: {path}; a node cannot depend on itself, even indirectly"
        raise GraphError(msg)
    codes: dict[int, Code] = {}
    plain = graph._plain
    last: Any = None
    for node in graph.nodes:
        fn = node.fn
        if fn is not last and fn is not None and id(fn) not in codes:
            codes[id(fn)] = _pickle_code(node)
        last = fn
        if not plain[node.index]:
            _check_args(node)
    return codes


def _pickle_code(node: Node) -> Code:
    try:
        blob = dumps_code(node.fn)
    except Exception as exc:
        msg = (f"node {node.name!r}: its function {node.fn!r} cannot be sent to a worker "
               f"process ({type(exc).__name__}: {exc}); use a module-level function, or "
               "one whose closure pickles")
        raise GraphError(msg) from exc
    return Code(hashlib.blake2b(blob, digest_size=16).digest(), blob)


def _check_args(node: Node) -> None:
    args, kwargs = node.args, node.kwargs
    if not kwargs:  # the common case: scalars and dependencies (Dep) only
        for value in args:
            kind = type(value)
            if kind not in SAFE_TYPES and kind is not Dep:
                break
        else:
            return
    if quick_safe(args) and (not kwargs or quick_safe(kwargs.values())):
        return
    items: Iterable[tuple[str, Any]] = [
        *((f"argument {i}", v) for i, v in enumerate(args)),
        *((f"keyword argument {k!r}", v) for k, v in kwargs.items())]
    for label, value in items:
        if type(value) in SAFE_TYPES or type(value) is Dep:
            continue
        try:
            pickle.dumps(value, protocol=5, buffer_callback=lambda _b: False)
        except Exception as exc:
            if node.fn is not None:  # a lambda or local function as an argument
                try:
                    node.packed = dumps_code((node.args, node.kwargs))
                except Exception:  # reported below, with the first error
                    pass
                else:
                    return
            msg = (f"node {node.name!r}: {label} ({type(value).__name__}) cannot be sent to "
                   f"another process: {exc}; pass plain data, or give the type "
                   "__reduce__/__getstate__")
            raise GraphError(msg) from exc
