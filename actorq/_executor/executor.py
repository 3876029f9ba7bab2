"""``actorq.Executor``: the standard ``concurrent.futures.Executor`` interface on a pool.

::

    submit(fn, *args) ─▶ Future (PENDING) ─▶ the executor's queue
        fewer than 2 messages per member in flight? ─▶ RUNNING, sent: one task ("run"),
        or everything queued, up to MAX_BATCH ("run_many"), as one message
    a message's reply (done callback) ─▶ set_result / set_exception per task, and the
        next batch goes out

A member killed mid-task is restarted by the pool's supervisor and the task retried on
another member by the pool's retry policy: the executor never breaks
(``BrokenProcessPool`` has no counterpart here). Functions that pickle by reference
(module-level functions) travel as such; others (lambdas, closures, functions of
``__main__`` under forkserver) are pickled once with cloudpickle and unpickled once per
member (a cache keyed by an id).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import mmap
import multiprocessing
import os
import pickle
import threading
import time
import types
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle

import actorq
from actorq._core.actor import Actor
from actorq._core.reply import Reply
from actorq._errors import (
    ActorCrashed,
    DecodeError,
    EncodeError,
    InitializerFailed,
    format_remote,
    rebuild,
)
from actorq._executor import ledger
from actorq._executor.ledger import DECODING, ENCODING, Outcome, Step
from actorq._resilience.retry import Retry
from actorq._serialization import SAFE_TYPES as SAFE
from actorq._serialization import dumps_checked, quick_safe

_fn_ids = itertools.count(1)
_REUSED = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           functools.partial)  # callables worth caching in the members
_BY_REF = object()  # in the spec cache: the function travels as itself
_ALONE = object()  # a batch's tasks go again, one per message (Executor._undecoded)
_PLAIN = ("call", "chunk")  # task kinds whose arguments travel as themselves; "pcall" and
# "pchunk": those that need pickling are ``Packed`` at submit, unpickled by the worker
#: the options of ``system.pool`` an Executor passes on
POOL_OPTIONS = frozenset({"routing", "circuit", "retry", "timeout", "name", "hang_margin",
                          "max_restarts", "within", "idle_timeout", "oversubscribe"})
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_at_exit_registered = False


def _register_at_exit(executor: Executor) -> None:
    """At interpreter exit, finish the work of every executor not shut down (as the
    standard library's do). Registered with the first executor, so after the system's
    own exit hook: atexit runs it first, while the workers are still up."""
    global _at_exit_registered
    _live.add(executor)
    if not _at_exit_registered:
        _at_exit_registered = True
        atexit.register(_shutdown_all)


def _shutdown_all() -> None:
    for executor in list(_live):
        try:
            executor.shutdown(wait=True)
        except Exception:  # pragma: no cover - best effort at exit
            pass


FN_CACHE = 256  # functions remembered per member and per executor
MAX_BATCH = 512  # tasks per message at most
RECYCLE_RESTARTS = 1_000_000  # default max_restarts of a pool whose members recycle
_RECYCLE = "actorq.Executor: recycle"  # what a worker tells itself at its task limit


class Deferred:
    """Returned (as the class itself, which pickles by reference) for a task a worker
    did not run because it reached ``max_tasks_per_child``: the executor sends it again."""


class Raised:
    """What ``run`` returns for a task that raised ``SystemExit``, ``KeyboardInterrupt``
    or another ``BaseException`` that is not an ``Exception``: the future gets it, as
    with ``ProcessPoolExecutor``, and the worker lives on."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (Raised, (self.exc, self.tb))


class InitFailed:
    """What a worker whose initializer raised answers every task with: the executor
    breaks (``InitializerFailed``), as ``ProcessPoolExecutor`` does. The worker does not
    fail to start (its supervisor would start it again and again, and the pool's
    retries would end in ``CircuitOpen``): the error is the initializer's, permanent."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (InitFailed, (self.exc, self.tb))


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
    if t in SAFE or ((t is tuple or t is list) and quick_safe((value,))):
        return value
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


def _pack(kind: str, args: Any, kwargs: dict[str, Any] | None) -> tuple[str, Any, Any]:
    """A task's kind and arguments as they travel: what needs pickling is ``Packed``
    now (``TypeError`` from the pickling error if something does not pickle)."""
    if kind == "call":
        if quick_safe(args) and (not kwargs or quick_safe(kwargs.values())):
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


def _packed_parts(item: Any) -> list[str]:
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


def _fn_name(spec: Any) -> str:
    """The name of a task's function, for errors."""
    if type(spec) is tuple:
        return str(spec[3])
    return str(getattr(spec, "__qualname__", None) or type(spec).__qualname__)


def _killed_by(item: Any, step: Step) -> BaseException:
    """The error of a task whose data killed its worker in *step* (see ``ledger``): an
    argument as it was unpickled, or the return value as it was pickled."""
    name = _fn_name(item[1])
    if step.kind == DECODING:
        parts = _packed_parts(item)
        what = parts[step.ordinal] if step.ordinal < len(parts) else "an argument"
        return DecodeError(
            f"{what} of {name}() killed worker process {step.pid} while it was unpickled "
            "there (a crash, a signal or an os._exit in its __setstate__/__reduce__); the "
            "task was not run, and is not sent again (it would kill another worker)",
            "message")
    return EncodeError(
        f"the return value of {name}() killed worker process {step.pid} while it was "
        "pickled there, to be sent back (a crash, a signal or an os._exit in its "
        "__reduce__); the task ran once and is not run again")


class FunctionWorker(Actor):
    """A pool member that runs the functions an ``Executor`` sends it."""

    def __init__(self, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks: int | None = None) -> None:
        self._fns: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._maps: dict[str, mmap.mmap] = {}  # the ledger of each executor, mapped
        self._left = max_tasks  # tasks this process may still run (None: no limit)
        self._init_failed: InitFailed | None = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:  # SystemExit too, as the standard library's
                self._init_failed = _init_failed(exc)

    def _take_one(self) -> bool:
        """Count a task against ``max_tasks``; False once the limit is reached. The task
        that reaches it asks for a recycle: a message to itself, handled after the
        replies of what it runs now are out, that ends this process (exit code 0); its
        supervisor starts a fresh one, which handles what is still queued for it."""
        left = self._left
        if left is None:
            return True
        if left <= 0:
            return False
        self._left = left - 1
        if left == 1:
            self.ref.tell(_RECYCLE)
        return True

    def receive(self, message: Any) -> None:
        """Only the recycle request of ``_take_one``."""
        if message == _RECYCLE:
            os._exit(0)
        msg = f"FunctionWorker got an unexpected message: {message!r}"
        raise TypeError(msg)

    def _fn(self, spec: Any) -> Callable[..., Any]:
        if type(spec) is not tuple:
            return spec  # type: ignore[no-any-return]
        fn_id, blob = spec[1], spec[2]
        if not fn_id:  # a one-off callable (a joblib batch, say): not worth keeping
            return cloudpickle.loads(blob)  # type: ignore[no-any-return]
        fn = self._fns.get(fn_id)
        if fn is None:
            fn = self._fns[fn_id] = cloudpickle.loads(blob)
            if len(self._fns) > FN_CACHE:
                self._fns.popitem(last=False)
        return fn

    def _item(self, item: Any, rec: ledger.BatchRecord | None = None, index: int = 0) -> Any:
        kind, spec, args, kwargs = item
        fn = self._fn(spec)
        if kind == "call":
            return fn(*args, **kwargs)
        if kind == "chunk":
            return [fn(*a) for a in args]
        args, kwargs = self._unpack(item, rec, index)
        if kind == "pcall":
            return fn(*args, **kwargs)
        return [fn(*a) for a in args]

    def _unpack(self, item: Any, rec: ledger.BatchRecord | None,
                index: int) -> tuple[list[Any], Any]:
        """Rebuild a task's ``Packed`` arguments, each one's step in the ledger first (so
        that a worker killed by one is known to be); one that raises (``SystemExit``
        too) fails the task with ``DecodeError`` naming it."""
        _kind, _spec, args, kwargs = item
        args = list(args)
        ordinal = 0
        for i, a in enumerate(args):
            if type(a) is Packed:
                args[i] = self._load(a, item, rec, index, ordinal)
                ordinal += 1
        if kwargs:
            kwargs = dict(kwargs)
            for k, v in kwargs.items():
                if type(v) is Packed:
                    kwargs[k] = self._load(v, item, rec, index, ordinal)
                    ordinal += 1
        if rec is not None:
            rec.clear_step()  # the task runs now
        return args, kwargs or {}

    @staticmethod
    def _load(packed: Packed, item: Any, rec: ledger.BatchRecord | None, index: int,
              ordinal: int) -> Any:
        if rec is not None:
            rec.step(DECODING, index, ordinal)
        try:
            return packed.load()
        except BaseException as exc:  # sys.exit() in a __reduce__ too: the argument's
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = (f"{_packed_parts(item)[ordinal]} of {_fn_name(item[1])}() could not be "
                   f"unpickled in the worker (pid {os.getpid()}), so the task was not run: "
                   f"{type(exc).__name__}: {exc}")
            raise DecodeError(msg, "message") from exc

    def _record(self, where: tuple[str, int, int]) -> ledger.BatchRecord:
        """The ledger slot of a message (file, slot, batch number), as this worker sees it."""
        path, slot, batch = where
        ledger_map = self._maps.get(path)
        if ledger_map is None:
            ledger_map = self._maps[path] = ledger.open_map(path)
        return ledger.BatchRecord(ledger_map, slot, batch, path)

    def run(self, item: Any, where: tuple[str, int, int] | None = None) -> Any:
        """Run one task (``("call", fn, args, kwargs)``) or one ``map`` chunk.

        With *where* (a ledger slot), the slot says when the return value is being
        pickled (by the runtime, after this returns): if that kills the process, the
        retry finds it there and fails the task with ``EncodeError`` instead of running
        it again (see ``ledger``).
        """
        if self._init_failed is not None:
            return self._init_failed
        rec = None
        if where is not None:
            rec = self._record(where)
            if rec.crashed is not None:  # its return value killed the last worker
                raise _killed_by(item, rec.crashed)
        if self._left is not None and not self._take_one():
            return Deferred
        try:
            result = self._item(item)
        except Exception:
            if rec is not None:
                rec.step(ENCODING, 0)
            raise  # the handler's error, as for any call
        except BaseException as exc:  # SystemExit and the like: the task's, not ours
            result = Raised(exc, format_remote(exc))
        if rec is not None:
            rec.step(ENCODING, 0)
        return result

    def run_many(self, items: list[Any],
                 where: tuple[str, int, int] | None = None) -> list[Outcome] | InitFailed:
        """Run a batch of tasks; each one's outcome: (ok, value or exception, traceback).

        With *where* (ledger file, slot, batch number), each outcome is also recorded in
        the executor's ledger as its task finishes, and the tasks an earlier attempt
        recorded (its worker died mid-batch) are not run again: their recorded outcomes
        are returned (see ``ledger``).
        """
        if self._init_failed is not None:
            return self._init_failed
        rec = None
        done: dict[int, Outcome] = {}
        crashed = None
        if where is not None:
            rec = self._record(where)
            done = rec.done
            crashed = rec.crashed
        out: list[Outcome] = []
        for index, item in enumerate(items):
            outcome = done.get(index) if done else None
            if crashed is not None and index == crashed.task and rec is not None:
                # an earlier attempt's worker was killed by this task's data: fail it
                outcome = rec.record(index, (False, _killed_by(item, crashed), ""))
            elif outcome is None and self._left is not None and not self._take_one():
                outcome = (None, None, "")  # deferred: the executor sends it again
            elif outcome is None:
                try:
                    outcome = (True, self._item(item, rec, index), "")
                except BaseException as exc:  # SystemExit too: the task's, not ours
                    outcome = (False, exc, format_remote(exc))
                if rec is not None:
                    outcome = rec.record(index, outcome)
            out.append(outcome)
        return out


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose workers are actors of a pool.

    Args:
        max_workers: members of the pool (default: one per core). ``(min, max)`` scales.
        mp_context: a ``multiprocessing`` context: its start method is the workers'
            (``ActorSystem(start_method=...)``); with *system*, it must be the system's.
        initializer, initargs: run in each worker as it starts (as the standard library's).
        max_tasks_per_child: a worker runs at most that many tasks (a ``map`` chunk is
            one), then is replaced by a fresh process; nothing is lost or run twice.
        system: the ``ActorSystem`` to run on; without it the executor owns a private one,
            closed by ``shutdown()``.
        **pool_options: passed to ``system.pool`` (``routing``, ``circuit``, ``retry``,
            ``timeout``, ...). Default retry: 3 attempts on crashes and timeouts.

    ``submit``/``map`` return and yield what ``ProcessPoolExecutor``'s do; a worker that
    dies mid-task is restarted and the task retried (at-least-once), so the executor
    never breaks. At most two messages per worker are in flight; tasks submitted
    meanwhile wait in the executor (PENDING: ``cancel()`` works, as in the standard
    library) and go out together, as one message, when one comes back. A task sent is
    RUNNING; when a batch's worker dies, only the tasks of the batch that had not
    finished are run again (the finished ones' outcomes are kept in a ledger file).
    """

    def __init__(self, max_workers: int | tuple[int, int] | None = None,
                 mp_context: Any = None, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), *, max_tasks_per_child: int | None = None,
                 system: Any = None, **pool_options: Any) -> None:
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, (int, tuple)):
                msg = f"max_workers must be an int, not {max_workers!r}"
                raise TypeError(msg)
            if isinstance(max_workers, int) and max_workers <= 0:
                msg = "max_workers must be greater than 0"
                raise ValueError(msg)
        if initializer is not None and not callable(initializer):
            msg = "initializer must be a callable"
            raise TypeError(msg)
        unknown = set(pool_options) - POOL_OPTIONS
        if unknown:
            msg = (f"Executor() got unknown options {sorted(unknown)}; pool options are "
                   f"{sorted(POOL_OPTIONS)}")
            raise TypeError(msg)
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child,
                                                                       int):
                msg = "max_tasks_per_child must be an integer"
                raise TypeError(msg)
            if max_tasks_per_child <= 0:
                msg = "max_tasks_per_child must be >= 1"
                raise ValueError(msg)
            pool_options.setdefault("max_restarts", RECYCLE_RESTARTS)
        start_method = _start_method_of(mp_context)
        if system is not None and start_method not in (None, system.config.start_method):
            msg = (f"mp_context's start method {start_method!r} is not the one of the "
                   f"system given ({system.config.start_method!r}): the workers are that "
                   "system's actors; leave mp_context out, or pass a system started with "
                   f"ActorSystem(start_method={start_method!r})")
            raise ValueError(msg)
        pool_options.setdefault("retry", Retry(max_attempts=3))
        pool_options.setdefault("routing", "least_loaded")
        self._own_system = system is None
        if system is None:
            system = actorq.ActorSystem(start_method=start_method)
        self._system = system
        init = _Init(_spec_of(initializer)) if initializer is not None else None
        self._ledger = ""
        try:
            self._pool = self._system.pool(FunctionWorker, init, initargs, max_tasks_per_child,
                                           size=max_workers, **pool_options)
            slots = 2 * max(1, self._pool.max_size)  # messages in flight at most
            self._ledger = ledger.create(slots)
            self._ledger_map = ledger.open_map(self._ledger)  # to find spilled outcomes
        except BaseException:
            if self._ledger:
                ledger.remove(self._ledger)
            if getattr(self, "_pool", None) is not None:
                self._pool.stop()
            if self._own_system:
                self._system.close()
            raise
        self._lock = threading.Lock()
        self._shutdown = False
        self._closed = False
        self._closed_event = threading.Event()  # set once the workers are stopped
        self._pending: dict[concurrent.futures.Future[Any], None] = {}  # not done yet
        self._queue: deque[tuple[concurrent.futures.Future[Any], Any]] = deque()  # unsent
        self._again: deque[tuple[concurrent.futures.Future[Any], Any]] = deque()  # deferred
        self._alone: deque[tuple[concurrent.futures.Future[Any], Any]] = deque()  # _undecoded
        self._in_flight = 0  # messages (tasks or batches of them) sent, not answered
        self._specs: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._free_slots = deque(range(slots))
        self._batch_ids = itertools.count(1)
        self._broken: BaseException | None = None  # the initializer's error, once raised
        # dropped without shutdown(): its workers, ledger and private system go once the
        # last task is done and the executor is collected (as the standard library's)
        self._finalizer = weakref.finalize(
            self, _collected, self._pool, self._ledger, self._ledger_map,
            self._system if self._own_system else None)
        self._finalizer.atexit = False  # at exit: _shutdown_all, for executors still alive
        _register_at_exit(self)

    @property
    def pool(self) -> Any:
        """The ``Pool`` the tasks run on (statistics, circuits, members)."""
        return self._pool

    @property
    def mp_context(self) -> Any:
        """The ``multiprocessing`` context of the workers' start method."""
        return multiprocessing.get_context(self._system.config.start_method)

    # -- submitting -----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future``."""
        return self._enqueue("call", fn, args, kwargs)

    def _enqueue(self, kind: str, fn: Callable[..., Any], args: Any,
                 kwargs: dict[str, Any] | None) -> concurrent.futures.Future[Any]:
        """Queue one task (a call, or a chunk of ``map``) and send what may go now."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._broken is not None:
                raise self._broken_error()
            if self._shutdown:
                msg = "cannot schedule new futures after shutdown"
                raise RuntimeError(msg)
            try:
                spec = self._spec(fn)
                kind, args, kwargs = _pack(kind, args, kwargs)
            except TypeError as exc:
                # not callable, or does not pickle: the future fails, as with
                # ProcessPoolExecutor; nothing is queued or sent, the executor goes on
                future.set_exception(_unsendable(exc))
                return future
            task = (future, (kind, spec, args, kwargs))
            self._queue.append(task)
            self._pending[future] = None
            batch = self._take_locked()
        if batch:
            self._send(batch)
        return future

    def _take_locked(self) -> list[Any]:
        """Tasks to send now (lock held): a share of the queued ones (1 / the message
        slots, at most ``MAX_BATCH``) if fewer than two messages per member are in
        flight; else none (they go out, batched,
        as earlier messages come back). Cancelled tasks are dropped here, never sent;
        the others turn RUNNING."""
        slots = 2 * max(1, self._pool.size)
        if self._in_flight >= slots or self._broken is not None:
            return []
        if self._alone:  # tasks of a batch that did not unpickle in its worker
            self._in_flight += 1
            return [self._alone.popleft()]
        batch: list[Any] = []
        again = self._again
        while again and len(batch) < MAX_BATCH:  # deferred at a task limit: RUNNING already
            batch.append(again.popleft())
        if batch:
            self._in_flight += 1
            return batch
        queue = self._queue
        # a share of the queue, not all of it: the other workers get theirs as their
        # messages come back (balance), and what is still queued can still be cancelled
        take = min(MAX_BATCH, max(1, -(-len(queue) // slots)))
        while queue and len(batch) < take:
            task = queue.popleft()
            if task[0].set_running_or_notify_cancel():
                batch.append(task)
            else:
                self._pending.pop(task[0], None)
        if batch:
            self._in_flight += 1
        return batch

    def _send(self, batch: list[Any]) -> None:
        """One message for *batch* (one task of plain arguments: ``run``; else
        ``run_many``, with a slot of the ledger)."""
        slot = batch_no = -1
        many = len(batch) > 1 or batch[0][1][0] not in _PLAIN
        try:
            try:
                slot = self._free_slots.popleft()
            except IndexError:  # pragma: no cover - defensive: no ledger, then
                where = None
            else:
                batch_no = next(self._batch_ids)
                where = (self._ledger, slot, batch_no)
            if not many:
                reply = self._pool.call_with("run", (batch[0][1], where))
            else:
                reply = self._pool.call_with("run_many", ([t[1] for t in batch], where))
        except BaseException as exc:
            if slot >= 0:
                self._free_slots.append(slot)
            self._settle_all(batch, exc)
            self._sent_done()
            if not isinstance(exc, Exception):
                raise
            return
        reply.add_done_callback(lambda r: self._batch_done(batch, r, slot, batch_no, many))

    def _batch_done(self, batch: list[Any], reply: Reply[Any], slot: int, batch_no: int,
                    many: bool) -> None:
        result: Any
        result, exc = reply.outcome()
        if slot >= 0:
            if exc is not None and not self._closed:
                if type(exc) is DecodeError and many:
                    result, exc = self._undecoded(batch, exc, slot, batch_no)
                elif isinstance(exc, ActorCrashed) or isinstance(exc.__cause__,
                                                                 ActorCrashed):
                    result, exc = self._crashed(batch, exc, slot, batch_no)
                    many = True  # a list of outcomes
            if not self._closed:  # else: the ledger is gone with its files
                ledger.take_spills(self._ledger_map, self._ledger, slot)
            self._free_slots.append(slot)
        if result is _ALONE:
            pass  # its tasks go again, one per message
        elif type(result) is InitFailed:
            self._break(result)
            self._settle_all(batch, None)
        elif exc is not None:
            if type(exc) is EncodeError and not many:
                _name_encode_error(exc, batch[0][1])
            self._settle_all(batch, exc)
        elif not many:
            if result is Deferred:
                self._defer(batch)
            elif type(result) is Raised:
                self._settle_one(batch[0][0], False, result.exc, result.tb)
            else:
                self._settle_one(batch[0][0], True, result, "")
        else:
            deferred = []
            for task, (ok, value, tb) in zip(batch, result, strict=True):
                if ok is None:
                    deferred.append(task)
                else:
                    if not ok and type(value) is EncodeError:
                        _name_encode_error(value, task[1])
                    self._settle_one(task[0], ok, value, tb)
            if deferred:
                self._defer(deferred)
        self._sent_done()

    def _undecoded(self, batch: list[Any], exc: DecodeError, slot: int,
                   batch_no: int) -> tuple[Any, BaseException | None]:
        """A batch's message or reply did not unpickle where it arrived, because of one
        task's argument or result: fail only that task. Arguments: the batch was not run;
        its tasks go again, each alone. Result: the batch ran; each task's outcome is
        taken from the ledger (one that does not unpickle here gets *exc*)."""
        if exc.kind == "message":
            with self._lock:
                self._alone.extend(batch)
            return _ALONE, None
        found = ledger.read_slot(self._ledger_map, self._ledger, slot, batch_no)
        outcomes = []
        for index in range(len(batch)):
            outcome = found.get(index)
            outcomes.append(outcome if outcome is not None and outcome[0] is not None
                            else (False, exc, ""))
        return outcomes, None

    def _crashed(self, batch: list[Any], exc: BaseException, slot: int,
                 batch_no: int) -> tuple[Any, BaseException | None]:
        """A batch's worker died and the pool gave up on it (its retries are spent, or
        there are none): fail only the task the crash belongs to, take what finished
        from the ledger, and send the tasks not run yet again. The task fails with
        ``DecodeError`` or ``EncodeError`` if its data killed the worker (the slot's
        step, see ``ledger``), else with *exc*: it was running."""
        found = ledger.read_slot(self._ledger_map, self._ledger, slot, batch_no)
        step = ledger.crash_step(self._ledger_map, slot, found, batch_no)
        outcomes: list[Outcome] = []
        culprit = step.task if step is not None else None  # None: the first not finished
        for index, task in enumerate(batch):
            outcome = found.get(index)
            if outcome is not None and outcome[0] is not None:
                outcomes.append(outcome)
            elif culprit is None or index == culprit:
                error = exc if step is None else _killed_by(task[1], step)
                outcomes.append((False, error, ""))
                culprit = -1  # found: the tasks after it go again
            else:
                outcomes.append((None, None, ""))  # not run: sent again
        return outcomes, None

    def _defer(self, tasks: list[Any]) -> None:
        """Tasks a worker did not run (its task limit): first in line to go again."""
        with self._lock:
            self._again.extend(tasks)

    def _sent_done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            batch = self._take_locked() if self._queue or self._again or self._alone else []
        if batch:
            self._send(batch)

    def _settle_all(self, batch: list[Any], exc: BaseException | None) -> None:
        """Fail every task of *batch* with *exc* (None: the executor is broken)."""
        for task in batch:
            self._settle_one(task[0], False, exc or self._broken_error(), "")

    def _break(self, failed: InitFailed) -> None:
        """A worker's initializer raised: the executor is broken, as the standard
        library's is. What is still queued fails now, and so will every later submit."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = rebuild(failed.exc, failed.tb)
            unsent = list(self._alone) + list(self._again) + list(self._queue)
            self._alone.clear()
            self._again.clear()
            self._queue.clear()
        for future, _item in unsent:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled
                self._settle_one(future, False, self._broken_error(), "")

    def _broken_error(self) -> InitializerFailed:
        cause = self._broken
        assert cause is not None
        err = InitializerFailed(
            f"a worker's initializer raised {type(cause).__name__}: {cause}; this "
            "actorq.Executor is broken (as ProcessPoolExecutor is, with "
            "BrokenProcessPool): shut it down and make a new one")
        err.__cause__ = cause
        return err

    def _settle_one(self, future: concurrent.futures.Future[Any], ok: bool, value: Any,
                    tb: str) -> None:
        with self._lock:
            self._pending.pop(future, None)
        if future.done():  # pragma: no cover - defensive
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(rebuild(value, tb) if tb else value)

    def _spec(self, fn: Callable[..., Any]) -> Any:
        """How *fn* travels: itself if it pickles by reference, else a cloudpickled blob
        made once (and unpickled once per member)."""
        if not callable(fn):
            # as the standard library's future raises it (its worker calls fn)
            msg = (f"'{type(fn).__name__}' object is not callable (given to "
                   "actorq.Executor as the function to run; nothing was sent)")
            raise TypeError(msg)
        try:
            spec = self._specs.get(fn)
        except TypeError:  # not weakly referenceable, or unhashable: no cache
            return _spec_of(fn)
        if spec is not None:
            return fn if spec is _BY_REF else spec
        spec = _spec_of(fn)
        # weak keys, and no strong reference to fn in the value: the cache never keeps a
        # function (or the object of a bound method) alive
        self._specs[fn] = _BY_REF if spec is fn else spec
        return spec

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``builtins.map(fn, *iterables)``, run on the pool; results in order.

        Every task is submitted at once; *timeout* (seconds, from this call) bounds the
        wait for each next result (``TimeoutError``); *chunksize* > 1 sends that many
        items per task.
        """
        if chunksize < 1:
            msg = "chunksize must be >= 1."
            raise ValueError(msg)
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
            return _results(futures, end, flatten=False)
        futures = []
        items = zip(*iterables, strict=False)
        while chunk := list(itertools.islice(items, chunksize)):
            futures.append(self._submit_chunk(fn, chunk))
        return _results(futures, end, flatten=True)

    def _submit_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]
                      ) -> concurrent.futures.Future[Any]:
        return self._enqueue("chunk", fn, chunk, None)

    # -- shutting down ----------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; with *cancel_futures*, cancel those not finished; with *wait*,
        block until the rest are done, then stop the workers (and the private system)."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            # the tasks not sent yet (those sent are RUNNING: they finish)
            with self._lock:
                queued, self._queue = list(self._queue), deque()
            for future, _item in queued:
                if future.cancel():
                    future.set_running_or_notify_cancel()  # wakes wait()/as_completed()
                with self._lock:
                    self._pending.pop(future, None)
        if wait:
            concurrent.futures.wait(pending)
            self._close()
        else:
            threading.Thread(target=self._close_after, args=(pending,), daemon=True,
                             name="actorq-executor-shutdown").start()

    def _close_after(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        concurrent.futures.wait(pending)
        self._close()

    def _close(self) -> None:
        with self._lock:
            closing_here = not self._closed
            self._closed = True
        if not closing_here:  # another thread closes (shutdown(wait=False) earlier)
            self._closed_event.wait()
            return
        self._finalizer.detach()
        try:
            self._pool.stop()
        finally:
            ledger.remove(self._ledger)
            self._ledger_map.close()
            try:
                if self._own_system:
                    self._system.close()
            finally:
                self._closed_event.set()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"workers={self._pool.size}"
        return f"<actorq.Executor {state}>"


def _collected(pool: Any, path: str, ledger_map: mmap.mmap, system: Any) -> None:
    """An executor was garbage-collected without ``shutdown()`` (its tasks are done: each
    one in flight keeps it alive): release what it held, on a thread of its own (the
    collection may happen on the system's loop thread, which closing waits for)."""
    threading.Thread(target=_release, args=(pool, path, ledger_map, system),
                     name="actorq-executor-collected", daemon=True).start()


def _release(pool: Any, path: str, ledger_map: mmap.mmap, system: Any) -> None:
    try:
        pool.stop()
    finally:
        ledger.remove(path)
        ledger_map.close()
        if system is not None:
            system.close()


def _init_failed(exc: BaseException) -> InitFailed:
    """The answer of a worker whose initializer raised *exc* (logged here, as the
    standard library logs it); an exception that does not pickle travels as text."""
    logging.getLogger("actorq").critical("actorq.Executor: exception in initializer:",
                                         exc_info=exc)
    tb = format_remote(exc)
    try:
        pickle.dumps(exc, protocol=5)
    except BaseException as err:
        exc = RuntimeError(f"{type(exc).__name__}: {exc} (the exception itself cannot be "
                           f"sent back: {type(err).__name__}: {err})")
    return InitFailed(exc, tb)


class _Init:
    """An initializer spec that pickles as itself (runs ``FunctionWorker``'s initializer)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, *args: Any) -> Any:
        spec = self.spec
        fn = cloudpickle.loads(spec[2]) if type(spec) is tuple else spec
        return fn(*args)


def _start_method_of(mp_context: Any) -> str | None:
    """The start method an ``mp_context`` stands for (None: the system's default)."""
    if mp_context is None:
        return None
    get = getattr(mp_context, "get_start_method", None)
    if get is None:
        msg = (f"mp_context must be a multiprocessing context (multiprocessing.get_context"
               f"(...)), not {mp_context!r}")
        raise TypeError(msg)
    method: str = get(allow_none=False)
    return method


def _spec_of(fn: Callable[..., Any]) -> Any:
    try:
        by_ref = pickle.dumps(fn, protocol=5)
        if len(by_ref) < 512 and b"__main__" not in by_ref:
            return fn
    except Exception:
        pass
    try:
        blob = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        msg = f"cannot send {fn!r} to a worker process: {exc}"
        raise TypeError(msg) from exc
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if not isinstance(fn, _REUSED):
        return ("cp", 0, blob, name)  # not a function: likely used once, so not cached
    return ("cp", next(_fn_ids) ^ (os.getpid() << 32), blob, name)


def _results(futures: list[concurrent.futures.Future[Any]], end: float | None,
             *, flatten: bool) -> Iterator[Any]:
    """Yield the futures' results in order; cancel what is left if the consumer stops."""
    futures.reverse()
    try:
        while futures:
            # no local keeps a future or a result: the consumer owns what it was given
            if flatten:
                yield from _result(futures.pop(), end)
            else:
                yield _result(futures.pop(), end)
    finally:
        for f in futures:
            f.cancel()


def _result(future: concurrent.futures.Future[Any], end: float | None) -> Any:
    try:
        return future.result() if end is None else future.result(end - time.monotonic())
    except BaseException:
        future.cancel()
        raise
    finally:
        del future


Executor.__module__ = "actorq"


def _unsendable(exc: TypeError) -> BaseException:
    """The error of a task whose function or arguments do not pickle: the pickling
    error itself (the type ``ProcessPoolExecutor``'s future raises), with a note naming
    the argument (*exc*'s message); *exc* itself if the pickling raised a
    ``BaseException`` that is not an ``Exception`` (a ``sys.exit()`` in ``__reduce__``)."""
    cause = exc.__cause__
    if not isinstance(cause, Exception):
        return exc
    cause.add_note(f"actorq.Executor: {exc}")
    return cause


def _name_encode_error(exc: EncodeError, item: Any) -> None:
    """Name the task's function in the error of a return value that did not pickle."""
    text = str(exc)
    if text.startswith("the return value of "):  # named already (``_killed_by``)
        return
    detail = text.partition("could not be pickled: ")[2] or text
    exc.args = (f"the return value of {_fn_name(item[1])}() could not be pickled in its "
                f"worker, to be sent back: {detail}",)
