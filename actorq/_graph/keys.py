"""Stable keys: what a node computes, as a digest that is the same in every interpreter.

A node's journal key (``Node.key``) is, unless the user gave ``key=``, a digest of

* its function: module and qualified name, and the **code**: bytecode, constants
  (nested code objects too), names, argument layout, defaults, the values in its
  closure, and the global functions and constants of its own module that it names
  (so editing a task's function, or a helper it calls, changes the key);
* its arguments, encoded canonically (below);
* its dependencies' keys (Merkle style: a changed node changes everything downstream).

Line numbers are not part of it: moving a function in its file keeps its keys.

The graph's *shape* digest (``Graph.digest()``, the journal's "is this the same graph?"
check) is the same without the code: editing a function keeps the shape, so a journal
is reused and only the tasks whose key changed run again.

Canonical encoding: ``pickle`` is not stable across interpreters for sets (their order
follows string hashing, randomised per process by PYTHONHASHSEED), nor for dicts built
from sets. So plain data is encoded here, tagged: numbers, strings, bytes, None, tuples
and lists in order, sets and frozensets with their elements' encodings sorted, dicts
with their items sorted by key encoding. Anything else is pickled (numpy arrays pickle
stably); what does not pickle is keyed by its type's name.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import types
from collections.abc import Callable
from typing import Any

_MAX_DEPTH = 64


def _scalar(obj: Any) -> bytes | None:
    kind = type(obj)
    if kind is str:
        data: bytes = obj.encode("utf-8", "surrogatepass")
        return b"s%d:" % len(data) + data
    if kind is int:
        return b"i%d;" % obj
    if kind is float or kind is complex:
        return b"f" + repr(obj).encode() + b";"
    if kind is bool:
        return b"T" if obj else b"F"
    if obj is None:
        return b"N"
    if kind is bytes:
        raw: bytes = obj
        return b"b%d:" % len(raw) + raw
    return None


class Encoder:
    """Canonical bytes of values and digests of functions (memoised per function)."""

    def __init__(self) -> None:
        self._fns: dict[int, bytes] = {}
        self._busy: set[int] = set()

    def encode(self, obj: Any, depth: int = 0) -> bytes:
        """*obj* as canonical bytes (see the module docstring)."""
        out = _scalar(obj)
        if out is not None:
            return out
        kind = type(obj)
        if depth > _MAX_DEPTH:
            return self._opaque(obj)
        if kind is tuple or kind is list:
            parts = [self.encode(x, depth + 1) for x in obj]
            return (b"(" if kind is tuple else b"[") + b"%d:" % len(parts) + b"".join(parts)
        if kind is set or kind is frozenset:
            parts = sorted(self.encode(x, depth + 1) for x in obj)
            return (b"{" if kind is set else b"}") + b"%d:" % len(parts) + b"".join(parts)
        if kind is dict:
            items = sorted(self.encode(k, depth + 1) + self.encode(v, depth + 1)
                           for k, v in obj.items())
            return b"d%d:" % len(items) + b"".join(items)
        if kind is types.CodeType:
            return b"c" + self._code(obj, depth + 1)
        if callable(obj) and (kind is types.FunctionType or kind is functools.partial
                              or kind is types.MethodType):
            return b"F" + self.function(obj)
        return self._opaque(obj)  # a Dep placeholder pickles as its index: stable

    def _opaque(self, obj: Any) -> bytes:
        try:
            data = pickle.dumps(obj, protocol=5)
        except Exception:  # not picklable (validation reports it): its type stands for it
            kind = type(obj)
            data = f"{kind.__module__}.{kind.__qualname__}".encode()
        return b"p%d:" % len(data) + data

    def _code(self, code: types.CodeType, depth: int) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for part in (code.co_code, *(self.encode(c, depth) for c in code.co_consts)):
            h.update(b"%d:" % len(part))
            h.update(part)
        layout = (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                  code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
                  code.co_flags)
        h.update(self.encode(layout, depth))
        return h.digest()

    def function(self, fn: Callable[..., Any]) -> bytes:
        """A digest of what *fn* computes (see the module docstring)."""
        key = id(fn)
        done = self._fns.get(key)
        if done is not None:
            return done
        if key in self._busy:  # recursion (a function that names itself): the name will do
            return b"recursive"
        self._busy.add(key)
        try:
            digest = self._function(fn)
        finally:
            self._busy.discard(key)
        self._fns[key] = digest
        return digest

    def _function(self, fn: Any) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        ident = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
        h.update(ident.encode())
        if isinstance(fn, functools.partial):
            h.update(self.function(fn.func))
            h.update(self.encode((fn.args, fn.keywords)))
            return h.digest()
        if isinstance(fn, types.MethodType):
            h.update(self.function(fn.__func__))
            h.update(self.encode(fn.__self__))
            return h.digest()
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):  # a builtin, a class, a callable object
            h.update(self._opaque(fn))
            return h.digest()
        h.update(self._code(code, 0))
        h.update(self.encode((getattr(fn, "__defaults__", None),
                              getattr(fn, "__kwdefaults__", None))))
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                h.update(self.encode(cell.cell_contents))
            except ValueError:  # an empty cell
                h.update(b"empty")
        h.update(self._globals(fn, code))
        return h.digest()

    def _globals(self, fn: Any, code: types.CodeType) -> bytes:
        """The functions and plain constants of *fn*'s module that its code names."""
        space = getattr(fn, "__globals__", None) or {}
        module = getattr(fn, "__module__", None)
        parts = []
        for name in sorted(_names(code)):
            value = space.get(name, _MISSING)
            if value is _MISSING:
                continue
            if type(value) is types.FunctionType and value.__module__ == module:
                parts.append(name.encode() + b"=" + self.function(value))
            elif _scalar(value) is not None or type(value) in (tuple, frozenset):
                parts.append(name.encode() + b"=" + self.encode(value))
        return b"".join(parts)


_MISSING = object()


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def function_ident(fn: Any) -> str:
    """Module and qualified name of *fn* (what the shape digest knows of a function)."""
    name = (getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
            or type(fn).__name__)
    return f"{getattr(fn, '__module__', '?')}.{name}"
