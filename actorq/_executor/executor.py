"""``actorq.Executor``: the standard ``concurrent.futures.Executor`` interface on a pool.

::

    submit(fn, *args) ─▶ Future (PENDING) ─▶ the executor's queue
        fewer than 2 messages per member in flight? ─▶ RUNNING, sent: one task ("run"),
        or everything queued, up to MAX_BATCH ("run_many"), as one message
    a message's reply (done callback) ─▶ set_result / set_exception per task, and the
        next batch goes out

A member killed mid-task is restarted by the pool's supervisor and the task retried on
another member by the pool's retry policy: the executor never breaks
(``BrokenProcessPool`` has no counterpart here). Functions are pickled once by the
executor (by reference, or with cloudpickle for lambdas, closures and functions of
``__main__`` under forkserver) and unpickled once per member, inside the first task that
needs them there (a cache keyed by an id); arguments that are not plain data are pickled
at ``submit`` and unpickled inside their task (``packing``). So the death of a worker
while it unpickles a task's data is seen in the ledger, and a second such death blames
the data (``ledger``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import mmap
import multiprocessing
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import actorq
from actorq._core.reply import Reply
from actorq._errors import (
    ActorCrashed,
    DecodeError,
    EncodeError,
    InitializerFailed,
    rebuild,
)
from actorq._executor import ledger
from actorq._executor.ledger import ENCODING, Outcome
from actorq._executor.packing import (
    PLAIN,
    culprits,
    killed_by,
    name_encode_error,
    pack,
    poisoned_fn,
    spec_id,
    spec_of,
    unsendable,
)
from actorq._executor.sendback import UNSENDABLE_NOTE
from actorq._executor.worker import Deferred, FunctionWorker, Init, InitFailed, Raised
from actorq._resilience.retry import Retry

_ALONE = object()  # tasks go again, one per message (Executor._undecoded, _crashed)
#: the options of ``system.pool`` an Executor passes on
POOL_OPTIONS = frozenset({"routing", "circuit", "retry", "timeout", "name", "hang_margin",
                          "max_restarts", "within", "idle_timeout", "oversubscribe"})
MAX_BATCH = 512  # tasks per message at most
RECYCLE_RESTARTS = 1_000_000  # default max_restarts of a pool whose members recycle
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
        init = Init(spec_of(initializer)) if initializer is not None else None
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
        # a task sent again alone after a worker died once while unpickling its argument
        # or function: that step (``ledger.set_suspect``)
        self._suspects: dict[concurrent.futures.Future[Any], int] = {}
        # functions whose unpickling killed workers (by id): their tasks fail unsent
        self._poisoned: dict[int, DecodeError] = {}
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
                kind, args, kwargs = pack(kind, args, kwargs)
            except TypeError as exc:
                # not callable, or does not pickle: the future fails, as with
                # ProcessPoolExecutor; nothing is queued or sent, the executor goes on
                future.set_exception(unsendable(exc))
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
        while self._poisoned:
            batch = self._drop_poisoned(batch)
            if batch:
                break
            with self._lock:  # nothing left to send: as if it came back
                self._in_flight -= 1
                batch = self._take_locked() if self._queue or self._again or self._alone else []
            if not batch:
                return
        slot = batch_no = -1
        many = len(batch) > 1 or batch[0][1][0] not in PLAIN
        try:
            try:
                slot = self._free_slots.popleft()
            except IndexError:  # pragma: no cover - defensive: no ledger, then
                where = None
            else:
                batch_no = next(self._batch_ids)
                where = (self._ledger, slot, batch_no)
                ledger.set_suspect(self._ledger_map, slot,
                                   self._suspects.pop(batch[0][0], 0) if self._suspects else 0)
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
                name_encode_error(exc, batch[0][1])
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
                    if value is not _ALONE:  # else: queued to go alone (_crashed)
                        deferred.append(task)
                else:
                    if not ok and type(value) is EncodeError:
                        name_encode_error(value, task[1])
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
        step, see ``ledger``: blamed), else with *exc*: it was running, or its outcome
        was being pickled a first time. A task whose argument or function was being
        unpickled, a first time, was not run: it goes again, alone, that step its
        suspect (a second death there blames it)."""
        found = ledger.read_slot(self._ledger_map, self._ledger, slot, batch_no)
        step = ledger.crash_step(self._ledger_map, slot, found, batch_no)
        blamed = culprits([t[1] for t in batch], step) if step and step.blamed else ()
        running = step is None  # it died running the first task not finished
        outcomes: list[Outcome] = []
        for index, task in enumerate(batch):
            outcome = found.get(index)
            if outcome is not None and outcome[0] is not None:
                outcomes.append(outcome)
            elif running:
                outcomes.append((False, exc, ""))
                running = False  # the tasks after it go again
            elif step is not None and index in blamed:
                outcomes.append((False, killed_by(task[1], step), ""))
            elif step is not None and index == step.task and step.kind == ENCODING:
                # it ran, and its worker died while its outcome was pickled, a first
                # time: as a death while it ran (the retries are spent, or none)
                outcomes.append((False, exc, ""))
            elif step is not None and index == step.task:  # a suspect
                with self._lock:
                    self._alone.append(task)
                    self._suspects[task[0]] = step.word(task=0)
                outcomes.append((None, _ALONE, ""))
            else:
                outcomes.append((None, None, ""))  # not run: sent again
        return outcomes, None

    def _drop_poisoned(self, batch: list[Any]) -> list[Any]:
        """Fail the tasks of *batch* whose function's unpickling killed workers; return
        the others."""
        keep = []
        for task in batch:
            error = self._poisoned.get(spec_id(task[1][1]))
            if error is None:
                keep.append(task)
            else:
                self._settle_one(task[0], False, DecodeError(str(error), "message"), "")
        return keep

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
        what = f"a worker's initializer raised {type(cause).__name__}: {cause}"
        for note in getattr(cause, "__notes__", ()):  # its exception did not pickle
            if note.startswith(f"{UNSENDABLE_NOTE}the initializer "):
                what = f"{note.removeprefix(UNSENDABLE_NOTE)}: {type(cause).__name__}: {cause}"
        err = InitializerFailed(
            f"{what}; this actorq.Executor is broken (as ProcessPoolExecutor is, with "
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
            return
        if type(value) is DecodeError and (fn_id := poisoned_fn(value)):
            self._poisoned[fn_id] = value  # its other tasks fail as they come to be sent
        future.set_exception(rebuild(value, tb) if tb else value)

    def _spec(self, fn: Callable[..., Any]) -> Any:
        """How *fn* travels (``packing.spec_of``): a function, a class or a cloudpickled
        callable is pickled once (and unpickled once per member, inside its first task)."""
        if not callable(fn):
            # as the standard library's future raises it (its worker calls fn)
            msg = (f"'{type(fn).__name__}' object is not callable (given to "
                   "actorq.Executor as the function to run; nothing was sent)")
            raise TypeError(msg)
        try:
            spec = self._specs.get(fn)
        except TypeError:  # not weakly referenceable, or unhashable: no cache
            return spec_of(fn)
        if spec is not None:
            return spec
        spec = spec_of(fn)
        if type(spec) is tuple and spec[0] != "val":  # "val": pickled per submit
            # weak keys, and no strong reference to fn in the value: the cache never
            # keeps a function (or the object of a bound method) alive
            self._specs[fn] = spec
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
