"""A record's pickle: protocol 5, plain numpy arrays reduced by actorq (issue 15).

``dumps(msgs, take)`` is ``pickle.dumps(msgs, protocol=5, buffer_callback=take)``, with
one difference: a plain numpy array (an ``ndarray`` itself, C-contiguous, of a numeric
dtype without metadata) is reduced to ``(rebuild_array, (PickleBuffer,
dtype.str, shape))`` instead of numpy's own reduction, ``(numpy._core.numeric._frombuffer,
(PickleBuffer, dtype, shape, order))``, whose dtype is a second global with a reduction
and a state of its own. Each global a pickle names costs its writer an import call to
check it (``builtins.__import__``, and for ``numpy.dtype`` a package's ``fromlist``
handled in Python), and its reader a lookup and a call. Measured on an 8 MiB float64
argument of a call (warm, in one process): the pickle 19 -> 11 us, its loads 12 -> 8 us.
Every other object, arrays that do not qualify included, is pickled as before; the
buffer still goes out of band (or in band) through *take*, exactly as numpy's would.

It is used for a lone message that holds an array (``holds_array``: in the message's
tuple, or one level down, as a call's arguments and a reply's value are): every other
record is ``pickle.dumps``'d, byte for byte as before and at its cost (this pickler's
``reducer_override`` is a Python call per object of a class, and its set-up about a
microsecond: a pickled call without an array, or a burst of 100 objects, would pay
10-30 % more).

The pickler is made once per thread and reused (``clear_memo`` between records): a new
``Pickler`` per record would cost what the arrays save. It writes to a list of parts
joined once at the end: a large bytes object goes to the list as it is (the C pickler
hands payloads of 64 KiB and more straight to ``write``), so it is copied once, as
``pickle.dumps`` copies it. A record pickled while this thread's pickler is already at
work (a ``__reduce__`` that sends a message) gets a pickler of its own.
"""

from __future__ import annotations

import pickle
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

Take = Callable[[pickle.PickleBuffer], bool]


def rebuild_array(buf: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    """The array ``_Pickler`` reduced: *buf* (a buffer, out of band or in band) viewed
    as *dtype* in *shape*, without a copy (as numpy's own ``_frombuffer``)."""
    import numpy as np  # loaded by now: the sender pickled an array

    return np.frombuffer(buf, dtype=_dtype(np, dtype)).reshape(shape)


_dtypes: dict[str, Any] = {}


def _dtype(np: Any, name: str) -> Any:
    dtype = _dtypes.get(name)
    if dtype is None:
        dtype = _dtypes[name] = np.dtype(name)
    return dtype


# dtype kinds reduced here: bool, signed, unsigned, float, complex (no fields, no
# objects; datetimes export no buffer, strings and voids are left to numpy)
_NUMERIC = frozenset("biufc")


class _Pickler(pickle.Pickler):
    """Protocol 5, buffers to the current record's *take*, plain arrays reduced cheaply."""

    def __init__(self) -> None:
        self.parts: list[Any] = []  # what the pickler wrote: bytes, and large payloads
        super().__init__(SimpleNamespace(write=self.parts.append), 5,
                         buffer_callback=self._take)
        self.take: Take | None = None
        self.busy = False

    def _take(self, buf: pickle.PickleBuffer) -> bool:
        assert self.take is not None  # set for the record being pickled
        return self.take(buf)

    def reducer_override(self, obj: Any) -> Any:
        """Called for objects that are not of a builtin type (pickle's C code)."""
        np = sys.modules.get("numpy")
        if np is None or type(obj) is not np.ndarray or not obj.flags.c_contiguous:
            return NotImplemented
        dtype = obj.dtype
        if dtype.kind not in _NUMERIC or dtype.metadata is not None:
            return NotImplemented
        return rebuild_array, (pickle.PickleBuffer(obj), dtype.str, obj.shape)


_local = threading.local()


def holds_array(msg: tuple[Any, ...]) -> bool:
    """Does *msg* hold a numpy array, itself or in a tuple of it (a call's arguments)?"""
    np = sys.modules.get("numpy")
    if np is None:
        return False
    ndarray = np.ndarray
    for field in msg:
        if type(field) is tuple:
            for item in field:
                if type(item) is ndarray:
                    return True
        elif type(field) is ndarray:
            return True
    return False


def dumps(msgs: Any, take: Take) -> bytes:
    """Pickle *msgs* (protocol 5; buffers to *take*, as ``pickle.dumps``'s
    ``buffer_callback``: False keeps one out of band)."""
    pickler: _Pickler | None = getattr(_local, "pickler", None)
    if pickler is None or pickler.busy:
        if pickler is not None:  # re-entered (a __reduce__ sending): one of its own
            return _dump(_Pickler(), msgs, take)
        pickler = _local.pickler = _Pickler()
    return _dump(pickler, msgs, take)


def _dump(pickler: _Pickler, msgs: Any, take: Take) -> bytes:
    parts = pickler.parts
    pickler.clear_memo()
    pickler.take = take
    pickler.busy = True
    try:
        pickler.dump(msgs)
        return b"".join(parts)  # one part (a record without a large payload): as it is
    finally:
        parts.clear()
        pickler.busy = False
        pickler.take = None
