"""Stable keys: what a node computes, as a digest that is the same in every interpreter.

A node's journal key (``Node.key``) is, unless the user gave ``key=``, a digest of

* its function: module and qualified name, and the **code**: bytecode, constants
  (nested code objects too), names, argument layout, defaults, the values in its
  closure, and what it names among its module's globals: plain constants, functions
  of its own module, and functions and classes of *user modules* (``from helpers
  import f``, or ``helpers.f`` through a user module ``helpers``), each digested the
  same way, transitively (a class: the functions, static and class methods,
  properties and plain constants in its body and in its user base classes). So
  editing a task's function, or a helper it calls in any of your modules, changes the
  key. A user module is one outside the standard library and site-packages (an
  editable install counts as yours; actorq itself does not); what the code reaches
  through a library is not followed, so a library upgrade does not change keys: give
  such tasks a versioned ``key=``, or a ``Graph(salt=...)``. A callable object (an
  instance of a user class) is keyed by its pickle and its class's digest. What is
  followed is bounded (``MAX_FOLLOWED`` functions and classes per graph, ``MAX_CHAIN``
  deep): past that, a function counts by its name only (deterministically: the walk's
  order is the graph's);
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
import os
import pickle
import site
import sys
import sysconfig
import types
from collections.abc import Callable
from typing import Any

_MAX_DEPTH = 64
MAX_FOLLOWED = 2048  # functions and classes digested per graph, at most
MAX_CHAIN = 40  # a helper of a helper of ... this deep, at most


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
        self._chain = 0  # functions being digested (one inside another)
        self._followed = 0

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
        if self._chain >= MAX_CHAIN or self._followed >= MAX_FOLLOWED:
            return b"name:" + function_ident(fn).encode()  # bounded: its name only
        self._busy.add(key)
        self._chain += 1
        self._followed += 1
        try:
            if isinstance(fn, type) and is_user_module(fn.__module__):
                digest = self._class(fn)
            else:
                digest = self._function(fn)
        finally:
            self._busy.discard(key)
            self._chain -= 1
        self._fns[key] = digest
        return digest

    def _class(self, cls: type) -> bytes:
        """A user class: what its body (and its user bases' bodies) define."""
        h = hashlib.blake2b(digest_size=16)
        h.update(function_ident(cls).encode())
        for klass in cls.__mro__:
            if klass is not cls and not is_user_module(klass.__module__):
                continue
            h.update(b"<" + function_ident(klass).encode() + b">")
            for name, value in sorted(vars(klass).items()):
                part = self._member(value)
                if part is not None:
                    h.update(name.encode() + b"=" + part + b";")
        return h.digest()

    def _member(self, value: Any) -> bytes | None:
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if type(value) is types.FunctionType:
            if not is_user_module(value.__module__):
                return b"lib:" + function_ident(value).encode()
            return self.function(value)
        if isinstance(value, property):
            return b"".join(self._member(f) or b"-" for f in (value.fget, value.fset,
                                                               value.fdel))
        if _scalar(value) is not None or type(value) in (tuple, frozenset):
            return self.encode(value)
        return None

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
            kind = type(fn)
            if kind is not type and is_user_module(getattr(kind, "__module__", "")):
                h.update(self.function(kind))  # an instance of a user class: its code
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
        """What *fn*'s code names among its globals (see the module docstring)."""
        space = getattr(fn, "__globals__", None) or {}
        module = getattr(fn, "__module__", None)
        parts = []
        names = sorted(_names(code))
        for name in names:
            value = space.get(name, _MISSING)
            if value is _MISSING:
                continue
            kind = type(value)
            if kind is types.FunctionType or isinstance(value, type):
                if value.__module__ == module or is_user_module(value.__module__):
                    parts.append(name.encode() + b"=" + self.function(value))
            elif kind is types.ModuleType:
                if is_user_module(value.__name__):  # helpers.f: the attributes it names
                    for attr in names:
                        found = getattr(value, attr, None)
                        if (type(found) is types.FunctionType or isinstance(found, type)) \
                                and is_user_module(found.__module__):
                            parts.append(f"{name}.{attr}=".encode() + self.function(found))
            elif _scalar(value) is not None or kind in (tuple, frozenset):
                parts.append(name.encode() + b"=" + self.encode(value))
        return b"".join(parts)


_MISSING = object()


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _library_dirs() -> tuple[str, ...]:
    dirs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib",
                                                   "platlib")}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site module
        pass
    dirs.update(p for p in sys.path if os.path.basename(p) in ("site-packages",
                                                              "dist-packages"))
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


_LIBRARY_DIRS = _library_dirs()
_user_modules: dict[str, bool] = {}


def is_user_module(name: str) -> bool:
    """True for a module of the user's own code: not built in, not the standard library,
    not in site-packages, not actorq; a module that is not imported (code built with
    ``exec``) or has no file (an interactive ``__main__``) counts as the user's."""
    known = _user_modules.get(name)
    if known is not None:
        return known
    top = name.partition(".")[0]
    if not name or top == "actorq" or top in sys.stdlib_module_names \
            or name in sys.builtin_module_names:
        user = False
    else:
        file = getattr(sys.modules.get(name), "__file__", None)
        user = not file or not os.path.realpath(file).startswith(_LIBRARY_DIRS)
    _user_modules[name] = user
    return user


def function_ident(fn: Any) -> str:
    """Module and qualified name of *fn* (what the shape digest knows of a function)."""
    name = (getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
            or type(fn).__name__)
    return f"{getattr(fn, '__module__', '?')}.{name}"
