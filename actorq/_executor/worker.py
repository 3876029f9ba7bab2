"""The worker of an ``Executor``: a pool member that runs the tasks it is sent.

``run`` runs one task of plain arguments; ``run_many`` runs a batch (or a task whose
arguments travel ``Packed``), recording each outcome in the executor's ledger as the task
finishes (see ``ledger``). What a worker answers besides outcomes: ``Deferred`` (its task
limit is reached), ``Raised`` (a ``BaseException`` that is not an ``Exception``),
``InitFailed`` (its initializer raised: the executor breaks).
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle

from actorq._core.actor import Actor
from actorq._errors import DecodeError, format_remote
from actorq._executor import ledger
from actorq._executor.ledger import DECODING, ENCODING, LOADING, Outcome
from actorq._executor.packing import Packed, culprits, fn_name, killed_by, packed_parts
from actorq._executor.sendback import unsendable_exception

FN_CACHE = 256  # functions remembered per member and per executor
_RECYCLE = "actorq.Executor: recycle"  # what a worker tells itself at its task limit


class Deferred:
    """Returned (as the class itself, which pickles by reference) for a task a worker
    did not run because it reached ``max_tasks_per_child``: the executor sends it again."""


class _Answer:
    """An exception and its remote traceback text, answered by a worker in place of a
    result (each subclass says what it means to the executor)."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exc, self.tb))


class Raised(_Answer):
    """What ``run`` returns for a task that raised ``SystemExit``, ``KeyboardInterrupt``
    or another ``BaseException`` that is not an ``Exception``: the future gets it, as
    with ``ProcessPoolExecutor``, and the worker lives on. Also for an exception that
    cannot be pickled: what goes back instead (``sendback``)."""

    __slots__ = ()


class InitFailed(_Answer):
    """What a worker whose initializer raised answers every task with: the executor
    breaks (``InitializerFailed``), as ``ProcessPoolExecutor`` does. The worker does not
    fail to start (its supervisor would start it again and again, and the pool's
    retries would end in ``CircuitOpen``): the error is the initializer's, permanent."""

    __slots__ = ()


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
                self._init_failed = init_failed(exc, initializer)

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

    def _fn(self, spec: Any, rec: ledger.BatchRecord | None, index: int) -> Callable[..., Any]:
        if type(spec) is not tuple:
            return spec  # type: ignore[no-any-return]
        fn_id = spec[1]
        if not fn_id:  # a one-off callable (a joblib batch, say): not worth keeping
            return self._load_fn(spec, rec, index)
        fn = self._fns.get(fn_id)
        if fn is None:
            fn = self._fns[fn_id] = self._load_fn(spec, rec, index)
            if len(self._fns) > FN_CACHE:
                self._fns.popitem(last=False)
        return fn

    @staticmethod
    def _load_fn(spec: Any, rec: ledger.BatchRecord | None, index: int) -> Callable[..., Any]:
        """Unpickle a task's function, its step in the ledger first (so that a worker
        killed by its module's import is known to be); one that raises (``SystemExit``
        too) fails the task with ``DecodeError`` naming it and its module."""
        fn: Callable[..., Any] = _unpickled(
            rec, LOADING, index, 0, lambda: pickle.loads(spec[2]),
            lambda: f"function {fn_name(spec)}() of module {spec[4]!r}")
        if rec is not None:
            rec.clear_step()
        return fn

    def _item(self, item: Any, rec: ledger.BatchRecord | None = None, index: int = 0) -> Any:
        kind, spec, args, kwargs = item
        fn = self._fn(spec, rec, index)
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
        return _unpickled(rec, DECODING, index, ordinal, packed.load,
                          lambda: f"{packed_parts(item)[ordinal]} of {fn_name(item[1])}()")

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
        retry finds it there and runs the task again, a suspect; if that kills a second
        worker, the next one fails the task with ``EncodeError`` (see ``ledger``).
        """
        if self._init_failed is not None:
            return self._init_failed
        rec = None
        if where is not None:
            rec = self._record(where)
            if rec.crashed is not None:  # its return value killed the last two workers
                raise killed_by(item, rec.crashed)
        if self._left is not None and not self._take_one():
            return Deferred
        try:
            result = self._item(item, rec)
        except Exception as exc:
            if rec is not None:
                rec.step(ENCODING, 0)
            try:
                pickle.dumps(exc, protocol=5)
            except BaseException as err:  # sys.exit() in a __reduce__ too
                return Raised(*unsendable_exception(exc, format_remote(exc), err))
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
        blamed = culprits(items, crashed) if crashed is not None else ()
        for index, item in enumerate(items):
            outcome = done.get(index) if done else None
            if outcome is None and crashed is not None and index in blamed and rec:
                # an earlier attempt's worker was killed by this task's data: fail it
                outcome = rec.record(index, (False, killed_by(item, crashed), ""))
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


def _unpickled(rec: ledger.BatchRecord | None, kind: int, index: int, ordinal: int,
               load: Callable[[], Any], what: Callable[[], str]) -> Any:
    """*load()* (an unpickling), its step in the ledger first (so that a worker killed by
    it is known to be); one that raises (``SystemExit`` too: the data's) fails the task
    with ``DecodeError`` naming *what()* was unpickled."""
    if rec is not None:
        rec.step(kind, index, ordinal)
    try:
        return load()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        msg = (f"{what()} could not be unpickled in the worker (pid {os.getpid()}), so the "
               f"task was not run: {type(exc).__name__}: {exc}")
        raise DecodeError(msg, "message") from exc


def init_failed(exc: BaseException, initializer: Callable[..., Any]) -> InitFailed:
    """The answer of a worker whose *initializer* raised *exc* (logged here, as the
    standard library logs it). An exception that does not pickle is sent as its
    pickling error, noted with the initializer's name and *exc*, as a task's is
    (``sendback``)."""
    logging.getLogger("actorq").critical("actorq.Executor: exception in initializer:",
                                         exc_info=exc)
    tb = format_remote(exc)
    try:
        pickle.dumps(exc, protocol=5)
    except BaseException as err:
        name = fn_name(initializer.spec if isinstance(initializer, Init) else initializer)
        exc, tb = unsendable_exception(exc, tb, err, f"the initializer {name}()")
    return InitFailed(exc, tb)


class Init:
    """An initializer spec that pickles as itself (runs ``FunctionWorker``'s initializer)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, *args: Any) -> Any:
        spec = self.spec
        fn = cloudpickle.loads(spec[2]) if type(spec) is tuple else spec
        return fn(*args)
