"""How objects cross processes: cloudpickle for code, pickle protocol 5 for data.

Code (an actor class with its constructor arguments) is pickled once per spawn with
cloudpickle, so classes defined in tests, notebooks or as closures travel by value.
Classes and functions defined at the top level of the user's main script are the
exception: they travel by name, with their by-value pickle as a fallback
(``_from_main``). With forkserver and spawn every child imports the main script again
(as ``__mp_main__``, which multiprocessing also makes its ``__main__``); by name, the
actor class is that module's class, and so are the types its methods use. Values sent
as plain pickle (``__main__.Order``) then resolve to that same class, and values the
actor returns or raises (``__mp_main__.Order``) resolve to the caller's own class
(multiprocessing aliases ``__mp_main__`` to ``__main__`` there). By value, the actor
would get a copy of each class, and ``isinstance`` would fail across the boundary.
Data uses plain pickle, which is several times cheaper per message (docs/internals.md,
``pickle.dumps`` ≈ 480 ns against cloudpickle's ≈ 3.1 µs), with protocol 5 so that large
buffers (numpy arrays, bytearrays) can travel out of band.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import cloudpickle

SAFE_TYPES = _SAFE = frozenset({int, float, str, bytes, bool, type(None), complex})


MAIN_MODULES = ("__main__", "__mp_main__")


# The by-value fallback of each of the main script's classes and functions, pickled once:
# cloudpickle took ≈ 0.5-1 ms of the user's process for a small actor class at every
# spawn (issue 15: a thousand spawns of one class). A child uses the copy only when it
# cannot find the class by name; a class changed after its first spawn keeps its first
# copy there.
_BY_VALUE: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


# cloudpickle guards its registry of classes pickled by value with a module lock. A
# process forked while another of its threads held it (the fork start method: the
# starter thread forks while the user's thread pickles an actor class) would inherit it
# held, and its first by-value pickle would wait forever. Each fork takes the lock first
# and both sides let go of it after: the child gets it free and the registry whole.
_TRACKER_LOCK = getattr(cloudpickle.cloudpickle, "_DYNAMIC_CLASS_TRACKER_LOCK", None)
if _TRACKER_LOCK is not None:
    os.register_at_fork(before=_TRACKER_LOCK.acquire,
                        after_in_parent=_TRACKER_LOCK.release,
                        after_in_child=_TRACKER_LOCK.release)


class _CodePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, except that top-level classes and functions of the main script go by
    name (with their by-value pickle as a fallback): see the module docstring."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)):
            qualname = main_qualname(obj)
            if qualname is not None:
                return _from_main, (qualname, _by_value(obj))
        return super().reducer_override(obj)


def _by_value(obj: Any) -> bytes:
    """*obj* pickled by value (cached: ``_BY_VALUE``)."""
    try:
        return _BY_VALUE[obj]
    except (KeyError, TypeError):
        pass
    blob: bytes = cloudpickle.dumps(obj, protocol=5)
    try:
        _BY_VALUE[obj] = blob
    except TypeError:  # not weakly referenceable: not cached
        pass
    return blob


def main_qualname(obj: Any) -> str | None:
    """*obj*'s qualified name if it is a class or function defined at the top level (or
    nested in a top-level class) of the main script, and found there under that name."""
    module = getattr(obj, "__module__", None)
    if module not in MAIN_MODULES:
        return None
    qualname = getattr(obj, "__qualname__", "")
    if "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return qualname if _lookup_main(qualname) is obj else None


def _lookup_main(qualname: str) -> Any:
    found: Any = sys.modules.get("__main__")
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _from_main(qualname: str, by_value: bytes) -> Any:
    """Unpickling: the main script's own *qualname* here if it has one (the main script,
    imported again as ``__mp_main__``, or inherited through fork), else the copy."""
    found = _lookup_main(qualname)
    if (isinstance(found, (type, types.FunctionType)) and getattr(found, "__qualname__", None)
            == qualname and getattr(found, "__module__", None) in MAIN_MODULES):
        return found
    main = sys.modules.get("__main__")
    if getattr(main, "__name__", None) == "__mp_main__":  # the script, imported again
        logging.getLogger("actorq").warning(
            "%s is not defined when %s is imported (it is under `if __name__ == "
            "\"__main__\":`, or made at run time): this process uses a copy of it, and "
            "the script's types it uses are copies too (isinstance with the caller's "
            "values fails); %s", qualname, getattr(main, "__file__", "the main script"),
            MAIN_HINT.format(name=qualname))
    return pickle.loads(by_value)


def dumps_code(obj: Any) -> bytes:
    """Pickle *obj* with cloudpickle (classes and functions by value where needed; the
    main script's by name, see the module docstring)."""
    buf = io.BytesIO()
    _CodePickler(buf, protocol=5).dump(obj)
    return buf.getvalue()


def loads(data: bytes | memoryview, buffers: Any = None) -> Any:
    """Unpickle *data* (plain pickle reads what cloudpickle wrote)."""
    return pickle.loads(data, buffers=buffers)


def quick_safe(values: Any) -> bool:
    """True if *values* are scalars or small tuples/lists of scalars (no pickling needed
    to know they pickle, and no large buffers among them)."""
    for v in values:
        t = type(v)
        if t in _SAFE:
            continue
        if t is tuple or t is list:
            if len(v) > 16:
                return False
            for e in v:
                if type(e) not in _SAFE:
                    return False
            continue
        return False
    return True


def check_picklable(what: str | Callable[[], str], args: tuple[Any, ...],
                    kwargs: dict[str, Any] | None) -> None:
    """Raise a clear ``TypeError`` now if *args*/*kwargs* cannot be pickled.

    Scalars and small tuples/lists of scalars are accepted without pickling; anything
    else is pickled once with its large buffers left out of band (so a big array costs
    nothing here). Called at the call site, so that a bad argument never reaches a batch.
    *what* names the call in the error (a callable is only called on error).
    """
    if quick_safe(args) and (not kwargs or quick_safe(kwargs.values())):
        return
    name = what if isinstance(what, str) else what()
    for index, value in enumerate(args):
        _check_one(name, f"argument {index}", value)
    for key, value in (kwargs or {}).items():
        _check_one(name, f"keyword argument {key!r}", value)


def _check_one(what: str, label: str, value: Any) -> None:
    if type(value) in _SAFE or _plain_array(value):
        return
    dumps_checked(what, label, value, None)


def _plain_array(value: Any) -> bool:
    """Is *value* a numpy array (exactly ``numpy.ndarray``) of a dtype with no Python
    objects in it, built in or structured? Such an array always pickles, and pickling it
    only to learn so costs as much as encoding it again (numpy's protocol-5 reduce
    imports ``pickle`` and looks up its rebuild function each time: about 4 % of an 8
    MiB array's send, copy included; ``benchmarks/msgpath_harness.py --count array``)."""
    t = type(value)
    if t.__name__ != "ndarray" or t.__module__ != "numpy":
        return False
    dtype = value.dtype
    return not dtype.hasobject and dtype.isbuiltin != 2  # 2: a user-defined dtype


def dumps_checked(what: str, label: str, value: Any,
                  buffers: list[pickle.PickleBuffer] | None) -> bytes:
    """*value* pickled (protocol 5), its large buffers left out of band (appended to
    *buffers*, or left out if None); or the clear ``TypeError`` of ``check_picklable``
    naming *label* of *what*, from the pickling error."""
    try:
        return pickle.dumps(value, protocol=5, buffer_callback=(
            (lambda _buf: False) if buffers is None else buffers.append))
    except BaseException as exc:  # SystemExit from a __reduce__ too: a bad argument
        if isinstance(exc, KeyboardInterrupt):
            raise
        way_out = "pass plain data, or give the type __reduce__/__getstate__"
        if "local object" in str(exc) or "attribute lookup" in str(exc):
            way_out = ("define it at the top level of a module (or of the main script, "
                       "outside `if __name__ == \"__main__\":`), not inside a function")
        msg = (
            f"{label} of {what} cannot be sent to another process: "
            f"{type(value).__name__} object is not picklable ({exc}); {way_out}"
        )
        raise TypeError(msg) from exc


# -- salvaging a batch that does not unpickle -----------------------------------------------

MAIN_HINT = ("define {name} at the top level of a module, or of the main script outside "
             "its `if __name__ == \"__main__\":` block, so that every process can import it")


class Unloadable:
    """Stands in, after ``salvage_loads``, for an object this process could not rebuild."""

    __slots__ = ("error", "name")

    def __init__(self, error: BaseException, name: str = "") -> None:
        self.error = error
        self.name = name  # "module.qualname" when a class or function was not found

    def __call__(self, *args: Any, **kwargs: Any) -> Unloadable:
        return self  # what a missing class or function would have built

    def describe(self) -> str:
        """The reason, with the way out when a main-script name was not found."""
        text = f"{type(self.error).__name__}: {self.error}"
        module, _dot, qualname = self.name.rpartition(".")
        if module in MAIN_MODULES:
            text += "; " + MAIN_HINT.format(name=qualname)
        return text

    def __repr__(self) -> str:
        return f"<unloadable: {self.describe()}>"


class Salvaged(list):  # type: ignore[type-arg]
    """The messages of a batch that did not unpickle as a whole (see ``salvage_loads``)."""


_PyUnpickler: Any = pickle._Unpickler  # the pure-Python one


class _Salvager(_PyUnpickler):  # type: ignore[misc]
    """The pure-Python unpickler, carrying on where the C one gave up: whatever cannot be
    rebuilt (a class or function not found here, a constructor or ``__setstate__`` that
    raises) becomes an ``Unloadable``, and so does whatever is built from one."""

    dispatch: ClassVar[dict[int, Any]] = dict(_PyUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except BaseException as exc:  # SystemExit from an import too: this object's
            if isinstance(exc, KeyboardInterrupt):
                raise
            return Unloadable(exc, f"{module}.{name}")

    def _load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        stack[-1] = _attempt(func, args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(cls if type(cls) is Unloadable
                    else _attempt(lambda: cls.__new__(cls, *args), ()))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(cls if type(cls) is Unloadable
                    else _attempt(lambda: cls.__new__(cls, *args, **kwargs), ()))

    def _guarded(op: Any) -> Any:
        """Wrap *op*, which pops what it needs and fills the object left on top of the
        stack: if it raises (an unloadable target, ``__setstate__`` raising, ...), that
        object becomes an ``Unloadable``."""

        def run(self: _Salvager) -> None:
            try:
                op(self)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if type(self.stack[-1]) is not Unloadable:  # else: keep the first reason
                    self.stack[-1] = Unloadable(exc)

        return run

    def _marked(op: Any) -> Any:
        """``_guarded`` for the ops that take the items since the last mark."""

        def run(self: _Salvager) -> None:
            items = self.pop_mark()
            if type(self.stack[-1]) is Unloadable:
                return
            self.metastack.append(self.stack)  # put the mark back: *op* pops it
            self.stack = items
            self.append = items.append
            try:
                op(self)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.stack[-1] = Unloadable(exc)

        return run

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    for _op in (pickle.BUILD, pickle.APPEND, pickle.SETITEM):
        dispatch[_op[0]] = _guarded(dispatch[_op[0]])
    for _op in (pickle.APPENDS, pickle.SETITEMS, pickle.ADDITEMS):
        dispatch[_op[0]] = _marked(dispatch[_op[0]])
    del _op


def _attempt(func: Any, args: tuple[Any, ...]) -> Any:
    if type(func) is Unloadable:
        return func
    try:
        return func(*args)
    except BaseException as exc:  # sys.exit() in a __reduce__'s callable too
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Unloadable(exc, getattr(func, "__module__", "") + "." +
                          getattr(func, "__qualname__", "")
                          if isinstance(func, type) else "")


def salvage_loads(data: bytes | memoryview, buffers: Any = None) -> Any:
    """Unpickle *data* that ``pickle.loads`` failed on, as far as it goes: a list comes
    back as ``Salvaged``, with ``Unloadable`` where something could not be rebuilt.

    The slow path of a batch of messages one of which does not unpickle here: the others
    must still be handled (``find_unloadable`` tells which is which). What raises while
    an object is rebuilt, ``SystemExit`` (a ``sys.exit()`` in a ``__reduce__``) or any
    other ``BaseException`` but ``KeyboardInterrupt``, makes that object ``Unloadable``.
    """
    obj = _Salvager(io.BytesIO(data), buffers=buffers).load()
    return Salvaged(obj) if type(obj) is list else obj


def find_unloadable(value: Any, limit: int = 100_000) -> Unloadable | None:
    """The first ``Unloadable`` in *value* or anything it refers to (None if none)."""
    if type(value) is Unloadable:
        return value
    seen = {id(value)}
    todo = [value]
    while todo and len(seen) < limit:
        for ref in gc.get_referents(todo.pop()):
            if type(ref) is Unloadable:
                return ref
            if id(ref) not in seen and not isinstance(ref, (type, types.ModuleType)):
                seen.add(id(ref))
                todo.append(ref)
    return None
