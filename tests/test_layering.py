"""Layers import downward only, no import cycles, and the kernel's internals stay inside.

STYLE.md rule 1, docs/internals.md. Imports needed only for types (under
``if TYPE_CHECKING:``) count for the cycle check: a type-only cycle is still a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "actorq"
BASE = {"_errors", "_config", "_clock", "_ids", "_serialization", "_metrics", "_shared",
        "_native"}  # _native: compiled helpers with pure-Python fallbacks
LAYERS = [
    {"_transport", "_process", "_resilience"},  # bytes, OS processes, pure retry policies
    {"_core"},  # the actor kernel: protocol, hub, reply, ref, actor, events
    {"_supervision"},  # the supervision tree and restart policy: pure, ops injected
    {"_actorproc"},  # the actor process side
    {"_runtime"},  # the system side: cells, processes, crashes, restarts
    {"_routing", "_graph", "_executor"},  # built on the kernel's public names
    {"_system", "_backends"},  # the facade
    {"testing", "bench", "cli", "integrations", "__main__", "__init__"},
]
# What layers above the kernel may use of it; the rest (the hub, the wire protocol, the
# transport, the process side, the runtime) are its internals.
KERNEL_PUBLIC = {"_core.actor", "_core.ref", "_core.reply", "_core.events"}
KERNEL_INTERNAL = ("_core", "_transport", "_actorproc", "_runtime")
BUILT_ON_KERNEL = {"_routing", "_graph", "_resilience", "_executor"}


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    if top in BASE:
        return None
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")


def _is_module(name: str) -> bool:
    return (PKG / f"{name}.py").exists() or (PKG / name).is_dir()


def _typing_only_nodes(tree: ast.AST) -> set[int]:
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return typing_only


def imports_of(path: Path, *, with_typing: bool = False) -> set[str]:
    """The actorq modules *path* imports (dotted, without ``actorq.``)."""
    tree = ast.parse(path.read_text())
    typing_only = set() if with_typing else _typing_only_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("actorq"):
            rest = node.module.split(".", 1)[1] if "." in node.module else None
            if rest:
                found.add(rest)
                found.update(f"{rest}.{a.name}" for a in node.names
                             if _is_module(f"{rest.replace('.', '/')}/{a.name}"))
            else:  # from actorq import x: only submodules count
                found.update(a.name for a in node.names if _is_module(a.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("actorq."):
                    found.add(alias.name.split(".", 1)[1])
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__") and module != "__init__":
            module = module.rsplit(".", 1)[0]
        out[module] = path
    return out


def test_no_upward_imports():
    problems = []
    for module, path in modules().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for dep in imports_of(path, with_typing=True):
            theirs = layer_of(dep)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} imports {dep}")
    assert not problems, problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in *graph* (module -> modules it imports), as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_counting_type_only_imports():
    mods = modules()
    graph = {m: {d for d in imports_of(p, with_typing=True) if d in mods and d != m}
             for m, p in mods.items() if m != "__init__"}
    # a package's __init__ re-exporting its own modules is not a cycle of theirs
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_built_on_the_kernel_use_only_its_public_names():
    problems = []
    for module, path in modules().items():
        if module.split(".")[0] not in BUILT_ON_KERNEL:
            continue
        problems.extend(f"{module} imports the kernel's internal {dep}"
                        for dep in imports_of(path, with_typing=True)
                        if dep.startswith(KERNEL_INTERNAL) and dep not in KERNEL_PUBLIC)
    assert not problems, problems


def test_transport_and_process_do_not_import_each_other():
    for sub, other in (("_transport", "_process"), ("_process", "_transport")):
        for path in (PKG / sub).glob("*.py"):
            assert not any(d.startswith(other) for d in imports_of(path)), path


# Reply's private fields: outside the kernel, replies are read through their public seam
# (done(), outcome(), waiter, sleep_until_done()). An object's own attributes
# (``self._hub`` of the runtime) are not a reply's.
REPLY_PRIVATE = {"_exc", "_value", "_done", "_hub", "_wait_event"}


def reply_private_reads(source: str, where: str) -> list[str]:
    """``obj._exc`` and the like in *source*, where ``obj`` is not ``self``."""
    return [f"{where}:{node.lineno} {ast.unparse(node)}"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr in REPLY_PRIVATE
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")]


def test_the_scan_finds_a_private_read_of_a_reply():
    source = "def f(reply, other):\n    return reply._exc, self._hub, other.inner._done\n"
    assert reply_private_reads(source, "m.py") == ["m.py:2 reply._exc", "m.py:2 other.inner._done"]


def test_no_module_outside_the_kernel_reads_a_replys_private_fields():
    problems = []
    for module, path in modules().items():
        if module.startswith("_core"):
            continue
        problems.extend(reply_private_reads(path.read_text(), module))
    assert not problems, problems

