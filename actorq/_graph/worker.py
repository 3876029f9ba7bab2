"""The task worker: an actor that runs batches of graph tasks in its own process.

One call, ``run(code, tasks, store)``, carries a batch (several tiny tasks, or one big one) and
returns the batch's CPU time in the worker, the time it spent runnable but waiting for a
core, and one list of outcomes, so scheduling costs one message round trip per batch,
not per task. The two times let the scheduler size batches by the work in them, not by
wall time that a loaded machine stretches: a task's wall time less its wait for a core
is its CPU plus its own waiting (sleep, I/O). The wait comes from the kernel's
``/proc/thread-self/schedstat`` (0 where there is none: then the wall time counts as
before). The scheduler sends a batch whose tasks' arguments are all plain scalars
marshalled (``pack_plain``, read by ``run_plain``), any other pickled (``run_packed``), or
as arguments when they hold large buffers (``run``); the outcome comes back marshalled
as one ``bytes`` value unless it holds a shared-memory handle (``pack_outcome``). Wire
records (plain tuples, cheapest to pickle or marshal)::

    code     {digest: cloudpickled function} for functions this worker has not had yet
    task     (tid, digest, args, kwargs, values, nested, packed)
               values: one (kind, payload) per dependency, kind VALUE | PICKLED | SHARED,
               or LOCAL: payload is the tid of an earlier task of the batch;
               nested PATCH: values are (tid, position in args) of such tasks
    outcome  (tid, status, kind, payload, t_start, t_end)
               status OK: (kind, payload) is the value; ERR: payload pickles (exc, tb)
               NEED_CODE: this worker does not know the digest (it was restarted)
               SKIPPED: not run, a LOCAL dependency did not succeed in this batch
    store    the journal's blob folder, or None: a large result is also copied there

A value is sent back as it is when it is a scalar; otherwise it is pickled here once;
large ones (out-of-band buffers or pickle past the threshold) go to a shared-memory
segment (``actorq._shared``) and only its handle travels: dependents map it.
"""

from __future__ import annotations

import marshal
import os
import pickle
import threading
import time
from typing import Any

from actorq._core.actor import Actor
from actorq._errors import GraphError, format_remote
from actorq._graph.blobs import save
from actorq._graph.graph import Dep, fill
from actorq._serialization import SAFE_TYPES, loads
from actorq._shared import SharedObject, share_pickled

VALUE, PICKLED, SHARED = 0, 1, 2
# LOCAL: the value of an earlier task of the same batch (payload: its tid), which the
# worker holds (a fused dependent, scheduler._fuse): no round trip through the scheduler
LOCAL = 3
# Node.nested of a fused flat task (fusion.patch_args): its args hold None where a value
# of this batch goes, and its values are (tid, position) pairs; the batch still marshals
PATCH = 3
OK, ERR, NEED_CODE = 0, 1, 2
# SKIPPED: a fused task not run, as a task of the batch it depends on did not succeed
SKIPPED = 3

_marshal, _unmarshal = marshal.dumps, marshal.loads
PLAIN_MARSHAL = 2  # pack_plain's marshal version (see there)
_monotonic = time.monotonic
_thread_time = time.thread_time
SCHEDSTAT = "/proc/thread-self/schedstat"  # on-CPU ns, runnable-but-waiting ns, slices


class RunQueueClock:
    """Seconds this thread has spent runnable but waiting for a core (0.0 without
    schedstat); one ``pread`` of a file kept open (≈ 8 µs here), re-opened if asked
    from another thread."""

    def __init__(self) -> None:
        self._fd = -1
        self._thread = 0

    def __call__(self) -> float:
        """The run-queue wait of the calling thread so far, in seconds."""
        tid = threading.get_ident()
        if tid != self._thread:
            self.close()
            self._thread = tid
            try:
                self._fd = os.open(SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # no schedstat (kernel without it, no /proc)
                return 0.0
        if self._fd < 0:
            return 0.0
        try:
            return int(os.pread(self._fd, 64, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        """Let go of the file (the next call opens it again)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._thread = -1, 0


def pack_value(value: Any, run_prefix: str, threshold: int) -> tuple[int, Any]:
    """Return (kind, payload) for *value*: as is, pickled, or in shared memory."""
    if type(value) in SAFE_TYPES and not (
            type(value) in (str, bytes) and len(value) >= threshold):
        return VALUE, value
    bufs: list[pickle.PickleBuffer] = []
    body = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    if bufs:
        raws = [b.raw() for b in bufs]
        if len(body) + sum(r.nbytes for r in raws) >= threshold:
            return SHARED, share_pickled(body, run_prefix, raws)  # one pickling
        body = pickle.dumps(value, protocol=5)  # small: all in band
    if len(body) >= threshold:
        return SHARED, share_pickled(body, run_prefix)
    return PICKLED, body


def fill_flat(args: tuple[Any, ...], deps: tuple[Any, ...],
              values: list[Any]) -> tuple[Any, ...] | None:
    """The scheduler's side of a flat template (``Node.nested == FLAT``: scalars and
    top-level Deps, no keywords): *args* with every ``Dep(k)`` replaced by the value of
    ``deps[k]`` (anything with an ``index`` into *values*, the run's (kind, payload)
    per node), if every one it meets is a scalar sent as is (``VALUE``); else None
    (the worker fills it). One plain loop: no list of the values made first."""
    out = []
    for arg in args:
        if type(arg) is Dep:
            value = values[deps[arg.index].index]
            if value[0] != VALUE:
                return None
            arg = value[1]
        out.append(arg)
    return tuple(out)


def pack_plain(code: dict[bytes, bytes] | None, tasks: list[tuple[Any, ...]],
               store: str | None) -> bytes:
    """A batch whose tasks' arguments are all plain scalars (``SAFE_TYPES``, their
    dependencies' values filled in: ``fill_flat``), marshalled for ``run_plain``: about a
    third of pickle's instructions to write, and less to read, per batch (callgrind).
    Only such exact types: marshal would write any other buffer (a ``bytearray``, an
    array) as ``bytes``. Version 2: no table of shared objects to build (``LONE_MARSHAL``)."""
    return _marshal((code, tasks, store), PLAIN_MARSHAL)


def pack_outcome(outcome: tuple[float, float, list[Any]]
                 ) -> bytes | tuple[float, float, list[Any]]:
    """A batch's outcome (``TaskWorker.run``) marshalled (``PLAIN_MARSHAL``) when it can
    be, as it is otherwise; ``unpack_outcome`` reads either. Every value is then a plain
    scalar or bytes (``VALUE``, ``PICKLED``, an error pickled): the reply is one
    ``bytes``, which the actor's reply path marshals as it is, where the tuple of lists
    of tuples was pickled, and unpickled by the scheduler (≈ 11k instructions a batch
    on its loop thread, callgrind). A ``SHARED`` value's handle is an object: pickled."""
    for item in outcome[2]:
        if item[2] == SHARED:
            return outcome
    return _marshal(outcome, PLAIN_MARSHAL)


def unpack_outcome(outcome: Any) -> tuple[float, float, list[Any]]:
    """What ``pack_outcome`` made of a batch's outcome, read back."""
    if type(outcome) is bytes:
        return _unmarshal(outcome)  # type: ignore[no-any-return]
    return outcome  # type: ignore[no-any-return]


def unpack_value(kind: int, payload: Any) -> Any:
    """The value a (kind, payload) pair stands for (a shared one is mapped, not copied)."""
    if kind == VALUE:
        return payload
    if kind == PICKLED:
        return loads(payload)
    obj: SharedObject = payload
    return obj.load()


def _have_local(values: list[tuple[int, Any]], local: dict[int, tuple[int, Any]],
                nested: int) -> bool:
    """Whether every value of this batch that *values* names was produced in it."""
    if nested == PATCH:
        for tid, _ in values:  # noqa: SIM110 (per task: all() of a generator costs more)
            if tid not in local:
                return False
        return True
    for kind, payload in values:  # noqa: SIM110 (as above)
        if kind == LOCAL and payload not in local:
            return False
    return True


def _patch(args: tuple[Any, ...], values: list[tuple[int, int]],
           local: dict[int, tuple[int, Any]]) -> tuple[Any, ...]:
    """*args* of a PATCH task with the values of this batch put in their places."""
    out = list(args)
    for tid, position in values:
        out[position] = unpack_value(*local[tid])
    return tuple(out)


def pack_error(exc: BaseException) -> bytes:
    """Pickle (exception, traceback text); an exception that does not pickle is described."""
    tb = format_remote(exc)
    try:
        return pickle.dumps((exc, tb), protocol=5)
    except Exception:
        text = (f"the task raised {type(exc).__name__}: {exc} (that exception could not be "
                "pickled, so it is reported as a GraphError)")
        return pickle.dumps((GraphError(text), tb), protocol=5)


class TaskWorker(Actor):
    """Runs graph tasks; functions are cached by digest (shipped once per worker)."""

    def __init__(self, run_prefix: str, threshold: int) -> None:
        self._prefix = run_prefix
        self._threshold = threshold
        self._fns: dict[bytes, Any] = {}
        self._queued = RunQueueClock()

    def run(self, code: dict[bytes, bytes] | None, tasks: list[tuple[Any, ...]],
            store: str | None = None) -> tuple[float, float, list[Any]]:
        """Run a batch of tasks in order; return the CPU seconds the batch took in this
        thread, the seconds it waited for a core, and one outcome per task (module
        docstring)."""
        cpu, queued = _thread_time(), self._queued()
        fns = self._fns
        if code:
            for digest, blob in code.items():
                if digest not in fns:
                    fns[digest] = loads(blob)
        out: list[tuple[Any, ...]] = []
        local: dict[int, tuple[int, Any]] = {}  # this batch's results, for LOCAL values
        for tid, digest, args, kwargs, values, nested, packed in tasks:
            if values and not _have_local(values, local, nested):
                out.append((tid, SKIPPED, 0, None, 0.0, 0.0))
                continue
            fn = fns.get(digest)
            if fn is None:
                out.append((tid, NEED_CODE, 0, None, 0.0, 0.0))
                continue
            t0 = _monotonic()
            try:
                if packed is not None:
                    args, kwargs = loads(packed)
                if values and nested == PATCH:
                    args = _patch(args, values, local)
                elif values:
                    vals = [unpack_value(k, p) if k != LOCAL else unpack_value(*local[p])
                            for k, p in values]
                    if nested:
                        args, kwargs = fill(args, vals), fill(kwargs, vals)
                value = fn(*args, **kwargs)
                kind, payload = pack_value(value, self._prefix, self._threshold)
                if kind == SHARED and store is not None:
                    save(store, payload)  # the journal's copy: the scheduler never sees it
            except Exception as exc:
                out.append((tid, ERR, 0, pack_error(exc), t0, _monotonic()))
                continue
            local[tid] = (kind, payload)
            out.append((tid, OK, kind, payload, t0, _monotonic()))
        return _thread_time() - cpu, self._queued() - queued, out

    def run_packed(self, blob: bytes) -> bytes | tuple[float, float, list[Any]]:
        """``run`` with (code, tasks, store) pickled by the scheduler (no check pickling);
        the outcome as ``pack_outcome`` makes it."""
        code, tasks, store = loads(blob)
        return pack_outcome(self.run(code, tasks, store))

    def run_plain(self, blob: bytes) -> bytes | tuple[float, float, list[Any]]:
        """``run`` with (code, tasks, store) marshalled by the scheduler (``pack_plain``:
        every task's arguments plain scalars); the outcome as ``pack_outcome`` makes it."""
        code, tasks, store = _unmarshal(blob)
        return pack_outcome(self.run(code, tasks, store))

    def ping(self) -> int:
        """Answer at once (the scheduler waits for a new worker's first reply)."""
        return 1
