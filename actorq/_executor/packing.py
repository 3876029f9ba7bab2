"""How an ``Executor`` task travels to its worker, and how its parts are named in errors.

A task is ``(kind, spec, args, kwargs)``. *spec* is the function, pickled by the
executor: ``(how, id, pickle, qualified name, module)`` (``spec_of``), unpickled by the
worker inside the task (so that a worker killed while it imports the function's module
is seen to be: ``ledger.LOADING``), once per worker if it has an id. *kind* says how the
arguments travel: ``"call"`` (one call) and ``"chunk"`` (a ``map`` chunk: a list of
argument tuples) carry plain data as itself; ``"pcall"`` and ``"pchunk"`` carry each
argument that needs pickling as ``Packed``, pickled at ``submit`` and unpickled by the
worker inside the task (``pack``).
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from actorq._errors import DecodeError, EncodeError
from actorq._executor.ledger import DECODING, LOADING, Step
from actorq._serialization import SAFE_TYPES as SAFE
from actorq._serialization import dumps_checked, quick_safe

_fn_ids = itertools.count(1)
_REUSED = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           functools.partial)  # callables worth caching in the members
_GLOBAL = (types.FunctionType, type)  # callables that pickle by reference, as a name only
_POISON = "_actorq_fn_id"  # on an error that a function's unpickling killed workers
PLAIN = ("call", "chunk")  # task kinds whose arguments travel as themselves; "pcall" and
# "pchunk": those that need pickling are ``Packed`` at submit, unpickled by the worker


class Packed(tuple):  # type: ignore[type-arg]  # (pickle, out-of-band buffers, type name)
    """An argument pickled by the executor at ``submit`` (once: the pickling that checks
    it), unpickled by the worker in the task itself, not by the message's decoding.

    So a worker killed while it rebuilds the argument (a segfault or an ``os._exit`` in a
    ``__setstate__``) is seen to be killed by that argument: the step is in the batch's
    ledger slot (``ledger.DECODING``), and the task fails alone with ``DecodeError``
    (CPython's ``test_crash_at_task_unpickle``; ``ProcessPoolExecutor`` breaks). Large
    buffers (arrays) stay out of band: the message carries them as buffers. A tuple
    (its pickle, the buffers or None, the type's name), so that it pickles and
    unpickles in C.
    """

    __slots__ = ()

    def load(self) -> Any:
        """The argument, rebuilt."""
        return pickle.loads(self[0], buffers=self[1])


def _packed(value: Any, label: Callable[[], str]) -> Any:
    """*value* as it travels: itself if it is plain data, else ``Packed`` (or the
    ``TypeError`` naming it (*label*), from the pickling error, if it does not pickle)."""
    t = type(value)
    if t in SAFE or (t is tuple and quick_safe((value,))):
        return value
    if t is list and quick_safe((value,)):
        return list(value)  # a copy: the task sees it as it was at submit (``pack``)
    buffers: list[pickle.PickleBuffer] = []
    try:
        blob = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except BaseException as exc:  # SystemExit from a __reduce__ too: a bad argument
        if isinstance(exc, KeyboardInterrupt):
            raise
        dumps_checked("Executor.submit", label(), value, None)  # the error, naming it
        msg = f"{label()} of Executor.submit cannot be pickled: {exc!r}"  # pragma: no cover
        raise TypeError(msg) from exc  # pragma: no cover - it pickled the second time
    return Packed((blob, buffers or None, t.__qualname__))


def pack(kind: str, args: Any, kwargs: dict[str, Any] | None) -> tuple[str, Any, Any]:
    """A task's kind and arguments as they travel: what needs pickling is ``Packed``
    now (``TypeError`` from the pickling error if something does not pickle)."""
    if kind == "call":
        if quick_safe(args) and (not kwargs or quick_safe(kwargs.values())):
            # plain data travels as itself, pickled with its message (maybe later): a
            # list among it is copied now, so that the task sees every argument as it
            # was at submit (the others are pickled now). The copy is written out here,
            # for kwargs below and in _packed, not called from one helper: a call costs
            # ~350 more instructions per task with a list argument (+3 %), rebuilding
            # kwargs from a helper's list ~4.6k (+30 %) (tidy9, callgrind, pack() alone)
            if list in map(type, args):
                args = tuple([list(a) if type(a) is list else a for a in args])
            if kwargs and list in map(type, kwargs.values()):
                kwargs = {k: list(v) if type(v) is list else v for k, v in kwargs.items()}
            return kind, args, kwargs
        args = tuple([_packed(a, lambda i=i: f"argument {i}")  # type: ignore[misc]
                      for i, a in enumerate(args)])
        if kwargs:
            kwargs = {k: _packed(v, lambda k=k: f"keyword argument {k!r}")  # type: ignore[misc]
                      for k, v in kwargs.items()}
        return "pcall", args, kwargs
    if quick_safe(args):  # a chunk of ``map``: a list of argument tuples
        return kind, args, kwargs
    return "pchunk", [_packed(a, lambda i=i: f"item {i} of a map chunk")  # type: ignore[misc]
                      for i, a in enumerate(args)], None


def packed_parts(item: Any) -> list[str]:
    """The ``Packed`` arguments of a task, in the order the worker unpickles them, as
    errors name them: "argument 1 (Point)"."""
    kind, _spec, args, kwargs = item
    label = "argument" if kind == "pcall" else "item {} of a map chunk"
    parts = [f"{label} {i} ({a[2]})" if kind == "pcall" else f"{label.format(i)} ({a[2]})"
             for i, a in enumerate(args) if type(a) is Packed]
    if kind == "pcall" and kwargs:
        parts += [f"keyword argument {k!r} ({v[2]})" for k, v in kwargs.items()
                  if type(v) is Packed]
    return parts


def fn_name(spec: Any) -> str:
    """The name of a task's function, for errors."""
    if type(spec) is tuple:
        return str(spec[3])
    return str(getattr(spec, "__qualname__", None) or type(spec).__qualname__)


def spec_of(fn: Callable[..., Any]) -> Any:
    """How *fn* travels: itself for a builtin function of a module (its module is the
    interpreter's: importing it kills nothing); else ``(how, id, pickle, qualified name,
    module)``: ``"ref"`` (a function or class, by reference: kept by id in each worker),
    ``"val"`` (another callable with a small pickle, a ``partial`` or a bound method:
    no id, unpickled per task, so it is pickled per ``submit``, as an argument is) or
    ``"cp"`` (cloudpickled: lambdas, closures, functions of ``__main__``; an id if it is
    a function, else none). ``TypeError`` if it does not pickle."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = str(getattr(fn, "__module__", None) or type(fn).__module__)
    try:
        by_ref = pickle.dumps(fn, protocol=5)
    except Exception:
        pass
    else:
        if len(by_ref) < 512 and b"__main__" not in by_ref:
            if isinstance(fn, types.BuiltinFunctionType) and (
                    fn.__self__ is None or isinstance(fn.__self__, types.ModuleType)):
                return fn
            if isinstance(fn, _GLOBAL):
                return ("ref", next(_fn_ids) ^ (os.getpid() << 32), by_ref, name, module)
            return ("val", 0, by_ref, name, module)
    try:
        blob = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        msg = f"cannot send {fn!r} to a worker process: {exc}"
        raise TypeError(msg) from exc
    if not isinstance(fn, _REUSED):
        return ("cp", 0, blob, name, module)  # not a function: likely used once
    return ("cp", next(_fn_ids) ^ (os.getpid() << 32), blob, name, module)


def spec_id(spec: Any) -> int:
    """The id of a task's function (0: none, it is unpickled per task or travels as
    itself)."""
    return spec[1] if type(spec) is tuple else 0


def poisoned_fn(exc: BaseException) -> int:
    """The id of the function whose unpickling killed workers, if *exc* says so (0)."""
    return int(exc.__dict__.get(_POISON, 0))


def culprits(items: list[Any], step: Step) -> set[int]:
    """The tasks of a batch that a blamed *step* fails: its own, and if a function's
    unpickling killed the workers, every task of that function."""
    fn_id = spec_id(items[step.task][1]) if step.kind == LOADING else 0
    if not fn_id:
        return {step.task}
    return {i for i, item in enumerate(items) if spec_id(item[1]) == fn_id}


def killed_by(item: Any, step: Step) -> BaseException:
    """The error of a task whose data killed its worker in *step* (see ``ledger``): an
    argument or the function as it was unpickled (twice), or the return value as it
    was pickled."""
    spec = item[1]
    name = fn_name(spec)
    if step.kind == LOADING:
        module = spec[4] if type(spec) is tuple else "?"
        err = DecodeError(
            f"function {name}() of module {module!r} killed worker processes "
            f"{step.earlier} and {step.pid} while it was unpickled there (importing its "
            "module: a crash, a signal or an os._exit there); its tasks are not run, and "
            "this executor sends none of them again (each would kill a worker)", "message")
        err.__dict__[_POISON] = spec_id(spec)
        return err
    if step.kind == DECODING:
        parts = packed_parts(item)
        what = parts[step.ordinal] if step.ordinal < len(parts) else "an argument"
        return DecodeError(
            f"{what} of {name}() killed worker processes {step.earlier} and {step.pid} "
            "while it was unpickled there (a crash, a signal or an os._exit in its "
            "__setstate__/__reduce__: two workers, each time in that step); the task was "
            "not run, and is not sent again (it would kill another worker)", "message")
    return EncodeError(
        f"the return value of {name}() killed worker processes {step.earlier} and "
        f"{step.pid} while it was pickled there, to be sent back (a crash, a signal or an "
        "os._exit in its __reduce__: two workers, each time in that step); the task ran "
        "twice and is not run again")


def unsendable(exc: TypeError) -> BaseException:
    """The error of a task whose function or arguments do not pickle: the pickling
    error itself (the type ``ProcessPoolExecutor``'s future raises), with a note naming
    the argument (*exc*'s message); *exc* itself if the pickling raised a
    ``BaseException`` that is not an ``Exception`` (a ``sys.exit()`` in ``__reduce__``)."""
    cause = exc.__cause__
    if not isinstance(cause, Exception):
        return exc
    cause.add_note(f"actorq.Executor: {exc}")
    return cause


def name_encode_error(exc: EncodeError, item: Any) -> None:
    """Name the task's function in the error of a return value that did not pickle."""
    text = str(exc)
    if text.startswith("the return value of "):  # named already (``killed_by``)
        return
    detail = text.partition("could not be pickled: ")[2] or text
    exc.args = (f"the return value of {fn_name(item[1])}() could not be pickled in its "
                f"worker, to be sent back: {detail}",)
