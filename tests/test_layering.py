"""Layers import downward only (STYLE.md rule 1)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "actorq"
BASE = {"_errors", "_config", "_clock", "_ids", "_serialization", "_metrics"}
LAYERS = [
    {"_transport", "_process"},
    {"_loop", "_actor", "_ref", "_reply", "_host", "_hub"},
    {"_supervision", "_resilience", "_routing", "_graph"},
    {"_system", "_runtime", "_systemhub", "_backends"},
    {"testing", "bench", "cli", "__main__", "__init__"},
]


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


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # imports needed only for types (under `if TYPE_CHECKING:`) make no runtime edge
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("actorq"):
            rest = node.module.split(".", 1)[1] if "." in node.module else None
            if rest:
                found.add(rest)
            else:  # from actorq import x: only submodules count
                found.update(a.name for a in node.names if _is_module(a.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("actorq."):
                    found.add(alias.name.split(".", 1)[1])
    return found


def test_no_upward_imports():
    problems = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__") and module != "__init__":
            module = module.rsplit(".", 1)[0]
        mine = layer_of(module)
        if mine is None:
            continue
        for dep in imports_of(path):
            theirs = layer_of(dep)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} imports {dep}")
    assert not problems, problems


def test_transport_and_process_do_not_import_each_other():
    for sub, other in (("_transport", "_process"), ("_process", "_transport")):
        for path in (PKG / sub).glob("*.py"):
            assert not any(d.startswith(other) for d in imports_of(path)), path
