"""How objects cross processes: cloudpickle for code, pickle protocol 5 for data.

Code (an actor class with its constructor arguments) is pickled once per spawn with
cloudpickle, so classes defined in ``__main__``, in tests or as closures travel by value.
Data uses plain pickle, which is several times cheaper per message (docs/internals.md,
``pickle.dumps`` ≈ 480 ns against cloudpickle's ≈ 3.1 µs), with protocol 5 so that large
buffers (numpy arrays, bytearrays) can travel out of band.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

SAFE_TYPES = _SAFE = frozenset({int, float, str, bytes, bool, type(None), complex})


def dumps_code(obj: Any) -> bytes:
    """Pickle *obj* with cloudpickle (classes and functions by value where needed)."""
    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


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
    if type(value) in _SAFE:
        return
    try:
        pickle.dumps(value, protocol=5, buffer_callback=lambda _buf: False)
    except Exception as exc:
        msg = (
            f"{label} of {what} cannot be sent to another process: "
            f"{type(value).__name__} object is not picklable ({exc}); "
            "pass plain data, or give the type __reduce__/__getstate__"
        )
        raise TypeError(msg) from exc
