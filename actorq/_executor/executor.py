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
import functools
import itertools
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
from actorq._errors import format_remote, rebuild
from actorq._resilience.retry import Retry
from actorq._serialization import check_picklable

_fn_ids = itertools.count(1)
_REUSED = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           functools.partial)  # callables worth caching in the members
_BY_REF = object()  # in the spec cache: the function travels as itself
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


class FunctionWorker(Actor):
    """A pool member that runs the functions an ``Executor`` sends it."""

    def __init__(self, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self._fns: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        if initializer is not None:
            initializer(*initargs)

    def _fn(self, spec: Any) -> Callable[..., Any]:
        if type(spec) is not tuple:
            return spec  # type: ignore[no-any-return]
        _tag, fn_id, blob = spec
        if not fn_id:  # a one-off callable (a joblib batch, say): not worth keeping
            return cloudpickle.loads(blob)  # type: ignore[no-any-return]
        fn = self._fns.get(fn_id)
        if fn is None:
            fn = self._fns[fn_id] = cloudpickle.loads(blob)
            if len(self._fns) > FN_CACHE:
                self._fns.popitem(last=False)
        return fn

    def _item(self, item: Any) -> Any:
        kind, spec, args, kwargs = item
        fn = self._fn(spec)
        if kind == "chunk":
            return [fn(*a) for a in args]
        return fn(*args, **kwargs)

    def run(self, item: Any) -> Any:
        """Run one task (``("call", fn, args, kwargs)``) or one ``map`` chunk."""
        return self._item(item)

    def run_many(self, items: list[Any]) -> list[tuple[bool, Any, str]]:
        """Run a batch of tasks; each one's outcome: (ok, value or exception, traceback)."""
        out: list[tuple[bool, Any, str]] = []
        for item in items:
            try:
                out.append((True, self._item(item), ""))
            except Exception as exc:
                out.append((False, exc, format_remote(exc)))
        return out


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose workers are actors of a pool.

    Args:
        max_workers: members of the pool (default: one per core). ``(min, max)`` scales.
        system: the ``ActorSystem`` to run on; without it the executor owns a private one,
            closed by ``shutdown()``.
        initializer, initargs: run in each worker as it starts (as the standard library's).
        **pool_options: passed to ``system.pool`` (``routing``, ``circuit``, ``retry``,
            ``timeout``, ...). Default retry: 3 attempts on crashes and timeouts.

    ``submit``/``map`` return and yield what ``ProcessPoolExecutor``'s do; a worker that
    dies mid-task is restarted and the task retried (at-least-once), so the executor
    never breaks. At most two messages per worker are in flight; tasks submitted
    meanwhile wait in the executor (PENDING: ``cancel()`` works, as in the standard
    library) and go out together, as one message, when one comes back. A task sent is
    RUNNING; when a batch's worker dies, the batch is retried as a whole.
    """

    def __init__(self, max_workers: int | tuple[int, int] | None = None, *,
                 system: Any = None, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), **pool_options: Any) -> None:
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
        pool_options.setdefault("retry", Retry(max_attempts=3))
        pool_options.setdefault("routing", "least_loaded")
        self._own_system = system is None
        self._system = actorq.ActorSystem() if system is None else system
        init = _spec_of(initializer) if initializer is not None else None
        try:
            if init is not None:
                self._pool = self._system.pool(FunctionWorker, _Init(init), initargs,
                                               size=max_workers, **pool_options)
            else:
                self._pool = self._system.pool(FunctionWorker, size=max_workers,
                                               **pool_options)
        except BaseException:
            if self._own_system:
                self._system.close()
            raise
        self._lock = threading.Lock()
        self._shutdown = False
        self._closed = False
        self._pending: dict[concurrent.futures.Future[Any], None] = {}  # not done yet
        self._queue: deque[tuple[concurrent.futures.Future[Any], Any]] = deque()  # unsent
        self._in_flight = 0  # messages (tasks or batches of them) sent, not answered
        self._specs: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        _register_at_exit(self)

    @property
    def pool(self) -> Any:
        """The ``Pool`` the tasks run on (statistics, circuits, members)."""
        return self._pool

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
            if self._shutdown:
                msg = "cannot schedule new futures after shutdown"
                raise RuntimeError(msg)
            task = (future, (kind, self._spec(fn), args, kwargs))
            _check_task(task)
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
        if self._in_flight >= slots:
            return []
        batch: list[Any] = []
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
        """One message for *batch* (one task: ``run``; more: ``run_many``)."""
        try:
            if len(batch) == 1:
                reply = self._pool.call_with("run", (batch[0][1],))
            else:
                reply = self._pool.call_with("run_many", ([t[1] for t in batch],))
        except BaseException as exc:
            self._settle_all(batch, exc)
            self._sent_done()
            if not isinstance(exc, Exception):
                raise
            return
        reply.add_done_callback(lambda r: self._batch_done(batch, r))

    def _batch_done(self, batch: list[Any], reply: Reply[Any]) -> None:
        result: Any
        result, exc = reply.outcome()
        if exc is not None:
            self._settle_all(batch, exc)
        elif len(batch) == 1:
            self._settle_one(batch[0][0], True, result, "")
        else:
            for task, (ok, value, tb) in zip(batch, result, strict=True):
                self._settle_one(task[0], ok, value, tb)
        self._sent_done()

    def _sent_done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            batch = self._take_locked() if self._queue else []
        if batch:
            self._send(batch)

    def _settle_all(self, batch: list[Any], exc: BaseException) -> None:
        for task in batch:
            self._settle_one(task[0], False, exc, "")

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
            msg = f"{fn!r} is not callable"
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
            if self._closed:
                return
            self._closed = True
        try:
            self._pool.stop()
        finally:
            if self._own_system:
                self._system.close()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"workers={self._pool.size}"
        return f"<actorq.Executor {state}>"


class _Init:
    """An initializer spec that pickles as itself (runs ``FunctionWorker``'s initializer)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, *args: Any) -> Any:
        spec = self.spec
        fn = cloudpickle.loads(spec[2]) if type(spec) is tuple else spec
        return fn(*args)


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
    if not isinstance(fn, _REUSED):
        return ("cp", 0, blob)  # not a function: likely used once, so not cached by members
    return ("cp", next(_fn_ids) ^ (os.getpid() << 32), blob)


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


def _check_task(task: tuple[Any, Any]) -> None:
    """``TypeError`` at ``submit`` for arguments that cannot be pickled (nothing queued)."""
    _kind, _spec, args, kwargs = task[1]
    check_picklable("Executor.submit", args if _kind == "call" else tuple(args), kwargs)
