"""Reply[T]: the result of a call, awaitable from any loop and waitable from any thread.

A reply is completed exactly once, through ``set_result`` or ``set_exception``: by the
hub (on whichever thread reads the answer from the ring: the hub loop, or a synchronous
waiter helping it), by the runtime (the actor crashed or stopped), or by a layer above
the kernel that made it with ``Reply.pending`` (a pool's call spanning several attempts).
Waiters register first and check second; the completer sets ``_done`` first and notifies
second; under the GIL that order means no waiter is ever missed. Done-callbacks and
awaiting loops are registered under one lock, so each runs exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from actorq import _native
from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._errors import ActorqError, CallTimeout, DeadlockError, rebuild

T = TypeVar("T")
_monotonic = time.monotonic
logger = logging.getLogger(__name__)
# Guards the callback lists of every reply: registering and taking them. Held for a few
# instructions, and only by replies that have callbacks (most have none).
_callbacks_lock = threading.Lock()
# A fork while another thread holds it (the fork start method) would leave the child
# with it held: the forking thread takes it first, and both sides let go of it after
# (builtins, no Python frame added to a child's start).
os.register_at_fork(before=_callbacks_lock.acquire, after_in_parent=_callbacks_lock.release,
                    after_in_child=_callbacks_lock.release)


class ReplyWaiter(Protocol):
    """What a reply needs from whoever delivers it (the hub of its process).

    Optional, not part of the protocol: ``spins`` (a class attribute; missing: False).
    A waiter whose ``spins`` is True has ``wait_spin(reply) -> bool``, the quick part
    of a wait (help deliver *reply* for a moment, never sleeping; return its
    ``done()``), and nothing else delivers its replies but another thread: ``result()``
    asks ``wait_spin`` first, and if it ran out, builds its ``Deadline`` and sleeps on
    the reply itself (``sleep_until_done``) instead of calling ``wait_reply``. The user's
    process's hub is one (its caller spins on the reply's ring).
    """

    config: SystemConfig
    may_deadlock: bool

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Block until *reply* is done or *deadline* passes (may help deliver it)."""
        ...

    def timeout_hint(self, reply: Reply[Any]) -> str:
        """Why *reply* may be late (appended to its ``CallTimeout`` message)."""
        ...

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        """True if waiting on *reply* here can never end (an actor calling itself)."""
        ...

    def flush_dirty(self, *, wait: bool = True) -> bool:
        """Send what is buffered, so that an awaited call is on its way."""
        ...


class Describable(Protocol):
    """What a reply shows of the ref it came from."""

    def _describe(self, method: str | None = None) -> str: ...


class _Detached:
    """The waiter of a ``Reply.pending``: nothing to deliver, nothing to deadlock on."""

    may_deadlock = False
    spins = False  # (a class attribute: result() finds it without a miss)

    def __init__(self, config: SystemConfig) -> None:
        self.config = config

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        reply.sleep_until_done(deadline.remaining())

    def timeout_hint(self, reply: Reply[Any]) -> str:
        return ""

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        return False

    def flush_dirty(self, *, wait: bool = True) -> bool:
        return True


_DEFAULT_DETACHED = _Detached(SystemConfig())


class ReplyFields:
    """The fields of a ``Reply`` and its construction: the pure-Python fallback of the C
    ``ReplyCore`` (actorq/_native/_ring.c), which has the same fields, made the same way,
    without a Python frame (a reply is made per call: issue 15). Fields only (and
    ``done()``): what a reply does is ``Reply``'s."""

    __slots__ = (
        "_callbacks",
        "_done",
        "_event",
        "_exc",
        "_hook",
        "_hub",
        "_method",
        "_ref",
        "_value",
        "target_id",
        "token",
    )

    def __init__(self, hub: ReplyWaiter, ref: Describable | None, token: int, method: str,
                 target_id: int = 0) -> None:
        self._hub = hub
        self.target_id = target_id
        self._ref = ref
        self.token = token
        self._method = method
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._event: threading.Event | None = None
        # the on_outcome hook: hook(reply, value, exc) -> bool (see ``Reply.set_result``)
        self._hook: Callable[[Any, Any, BaseException | None], Any] | None = None
        # () until someone awaits or adds a callback: most replies are waited for with
        # result(), or not at all. Entries: (loop, future) of an awaiter, or a callable.
        self._callbacks: list[Any] | tuple[()] = ()

    def done(self) -> bool:
        """True once the reply (value or error) has arrived; never waits."""
        return self._done


# The C fields where actorq's native helpers are built: ``SystemHub.wait_spin`` completes
# a plain reply from its ring in C (``_native.take_reply``) only if it is a ``ReplyCore``.
if TYPE_CHECKING:
    _Fields = ReplyFields
else:
    _Fields = _native.ReplyCore or ReplyFields


class Reply(_Fields, Generic[T]):
    """The pending result of a call.

    Use ``await reply``, ``reply.result(timeout)``, ``reply.done()`` or
    ``reply.add_done_callback(fn)``. Layers that compose calls (a pool retrying on
    another member) make their own with ``Reply.pending(...)`` and complete it with
    ``set_result``/``set_exception``; they read a finished attempt with ``outcome()``
    and wait through it with its ``waiter`` (see ``waiter``).
    """

    __slots__ = ()

    @classmethod
    def pending(cls, description: str = "a pending result", *,
                config: SystemConfig | None = None,
                waiter: ReplyWaiter | None = None) -> Reply[Any]:
        """Return a new reply that its creator completes with ``set_result``/``set_exception``.

        *description* names it in error messages (``CallTimeout``); *config* gives the
        default timeout of ``result()`` (the system's ``call_timeout``). *waiter*, if
        given, is what ``result()`` and ``await`` wait through (a ``ReplyWaiter``: a
        composite waiting through its current attempt's ``waiter``); its ``config`` then
        gives the timeout. Without one, waiting just sleeps until the reply is completed.
        """
        if waiter is None:
            waiter = _DEFAULT_DETACHED if config is None else _Detached(config)
        return cls(waiter, None, 0, description)

    @property
    def describe(self) -> str:
        """``"Counter 'c'.incr"``, for error messages (formatted only when one is needed)."""
        ref = self._ref
        return ref._describe(self._method) if ref is not None else self._method

    @property
    def waiter(self) -> ReplyWaiter:
        """Whoever delivers this reply (the hub of its process, or a composite's waiter).

        A reply that spans several attempts (``Reply.pending``) has its own waiter, which
        waits through the current attempt's: ``inner.waiter.wait_reply(inner, deadline)``
        reads the rings that attempt's answer comes on, as ``inner.result()`` would;
        ``inner.waiter.flush_dirty()`` sends what is buffered; and
        ``inner.waiter.waiting_would_deadlock(inner)`` says whether waiting here can end.
        """
        return self._hub

    def outcome(self) -> tuple[T | None, BaseException | None]:
        """``(value, None)`` if the call succeeded, ``(None, exc)`` if it failed.

        Never waits and never raises the call's error (for a done-callback, or code that
        checked ``done()``). Raises ``RuntimeError`` if the reply is not done yet.
        """
        if not self._done:
            msg = f"{self.describe}: outcome() of a reply that is not done yet"
            raise RuntimeError(msg)
        return self._value, self._exc

    def sleep_until_done(self, timeout: float | None = None) -> bool:
        """Sleep until the reply is done or *timeout* seconds pass; return ``done()``.

        Unlike ``result()`` it does not help deliver the reply (no flush, no reading of
        rings): it is the last step of a waiter's ``wait_reply``, for a reply that
        someone else completes (another thread, a timer, the hub loop).
        """
        if not self._done:
            event = self._event
            if event is None:
                event = self._event = threading.Event()
            if not self._done:
                event.wait(timeout)
        return self._done

    # -- completion -----------------------------------------------------------------------

    def set_result(self, value: T) -> bool:
        """Complete the reply with *value*; False (and no change) if it was already done.

        Wakes every waiter and runs the done-callbacks on this thread. Never blocks.
        """
        hook = self._hook
        if self._done:
            if hook is not None:  # armed by on_late_outcome: the call's own answer
                self._late(value, None)
            return False
        if hook is not None:
            # Ask the hook first (``ActorRef.call_with(on_outcome=)``): it may take the
            # reply over (it stays pending, or the hook completed it itself). Written
            # out here, not a method of its own: once per pool call (a frame less;
            # benchmarks/callgrind_pool_call.py).
            self._hook = None
            exc = self._exc
            self._exc = None  # cleared first: a taker may complete it at once
            try:
                taken = hook(self, value, exc)
            except Exception as err:
                self._hook_raised(err)
                taken = False
            if taken or self._done:
                return False
            self._exc = exc
        self._value = value
        self._done = True
        event = self._event
        if event is not None:
            event.set()
        if self._callbacks:
            self._run_callbacks()
        return True

    def _hook_raised(self, exc: BaseException) -> None:
        """The ``on_outcome`` hook raised *exc* (``set_result`` asked it, or the C reply
        step did: ``_native.take_reply``): logged, and the reply is published."""
        logger.error("the on_outcome hook of %r raised", self, exc_info=exc)

    def on_late_outcome(self, hook: Callable[[Reply[T], Any, BaseException | None], object]
                        ) -> None:
        """Run ``hook(reply, value, exc)`` once, for the call's own outcome, if it comes
        after this reply was completed by someone else (a pool's deadline failed it while
        the member still runs the call: the pool counts the member's answer then).

        Only from an ``on_outcome`` hook (``ActorRef.call_with``) that publishes the
        reply it was given (returns False). Never waits; an exception *hook* raises is
        logged."""
        self._hook = hook  # set_result: run if already done

    def _late(self, value: Any, exc: BaseException | None) -> None:
        hook, self._hook = self._hook, None
        try:
            hook(self, value, exc)  # type: ignore[misc]
        except Exception:
            logger.exception("the late-outcome hook of %r raised", self)

    def set_exception(self, exc: BaseException) -> bool:
        """Complete the reply with *exc* (raised by ``result()``); False if already done."""
        if self._done:
            if self._hook is not None:  # armed by on_late_outcome: the call's own answer
                self._late(None, exc)
            return False
        self._exc = exc
        # the value stays None; set_result does the rest (the success path stays one call)
        return self.set_result(None)  # type: ignore[arg-type]

    def add_done_callback(self, fn: Callable[[Reply[T]], object]) -> None:
        """Call ``fn(reply)`` once the reply is done; at once, here, if it is already.

        Otherwise *fn* runs on the thread that completes the reply (for an actor call,
        usually the system's loop thread): it must be quick and must not block. An
        exception it raises is logged and otherwise ignored.
        """
        if not self._done:
            with _callbacks_lock:  # _register, written out: once per pool call
                callbacks = self._callbacks
                if not isinstance(callbacks, list):
                    callbacks = self._callbacks = []
                callbacks.append(fn)
            if self._done:  # completed while we registered: its completer may have missed it
                self._run_callbacks()
            return
        self._call(fn)

    def _register(self, entry: Any) -> None:
        with _callbacks_lock:
            callbacks = self._callbacks
            if not isinstance(callbacks, list):
                callbacks = self._callbacks = []
            callbacks.append(entry)

    def _call(self, fn: Callable[[Reply[T]], object]) -> None:
        try:
            fn(self)
        except Exception:
            logger.exception("a done-callback of %r raised", self)

    def _run_callbacks(self) -> None:
        with _callbacks_lock:
            callbacks, self._callbacks = self._callbacks, ()
        running: Any = None
        for entry in callbacks:
            if type(entry) is not tuple:
                try:  # _call, written out: a frame less per callback
                    entry(self)
                except Exception:
                    logger.exception("a done-callback of %r raised", self)
                continue
            loop, fut = entry
            if loop.is_closed():
                continue
            if running is None:
                try:
                    running = asyncio.get_running_loop()
                except RuntimeError:
                    running = False
            if running is loop:
                self._settle(fut)
            else:
                loop.call_soon_threadsafe(self._settle, fut)

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return
        if self._exc is not None:
            fut.set_exception(self._exc)
        else:
            fut.set_result(self._value)

    # -- waiting (caller side) ----------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Wait for the reply and return its value, or raise the handler's error.

        Blocks the calling thread up to *timeout* seconds (default: the system's call
        timeout). Raises ``CallTimeout`` when it passes, ``ActorCrashed`` if the actor died
        while handling the call, ``ActorStopped`` if it was stopped, ``DeadlockError`` if
        an actor waits on a call to itself, and ``RuntimeError`` if called on the loop that
        must deliver the reply (use ``await``).
        """
        if not self._done:
            hub = self._hub
            if hub.may_deadlock:
                self._check_deadlock()
            start = _monotonic()
            # A spinning waiter (the user's process) mostly has the reply within its
            # spin: no Deadline is built for it (~1.7k instructions of a round trip
            # with its deallocation; benchmarks/msgpath_harness.py call-real).
            try:  # (not getattr: a C call, ~400 instructions)
                spins = hub.spins  # type: ignore[attr-defined]
            except AttributeError:  # a user's waiter may not have it (ReplyWaiter)
                spins = False
            if not (spins and hub.wait_spin(self)):  # type: ignore[attr-defined]
                wait = timeout if timeout is not None else hub.config.call_timeout
                deadline = Deadline(start + wait, wait)  # Deadline.after, one frame less
                if spins:  # the rest of its wait: sleep (another thread delivers it)
                    while not self._done and not deadline.expired():
                        self.sleep_until_done(deadline.remaining())
                else:
                    hub.wait_reply(self, deadline)
                if not self._done:
                    raise self._timeout_error(deadline)
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like ``result()``, then return the call's exception, or None if it succeeded.

        Raises ``CallTimeout`` if the reply is not done within *timeout*.
        """
        if not self._done:
            try:
                self.result(timeout)
            except BaseException:
                if not self._done:  # a timeout, or an interrupt: not the call's answer
                    raise
        return self._exc

    def _timeout_error(self, deadline: Deadline) -> CallTimeout:
        hint = self._hub.timeout_hint(self)
        msg = f"no reply from {self.describe} within {deadline.timeout:g}s{hint}"
        return CallTimeout(msg)

    def _check_deadlock(self) -> None:
        if self._hub.waiting_would_deadlock(self):
            msg = (
                f"{self.describe}: an actor waiting on a call to itself would deadlock "
                "(it handles one message at a time); use tell(), or call the method directly"
            )
            raise DeadlockError(msg)

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            self._check_deadlock()
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Any] = loop.create_future()
            self._register((loop, fut))
            if self._done:
                self._run_callbacks()
            self._hub.flush_dirty()
            timeout = self._hub.config.call_timeout
            try:
                yield from asyncio.wait_for(fut, timeout).__await__()
            except TimeoutError:
                if not self._done:
                    raise self._timeout_error(Deadline(0.0, timeout)) from None
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<Reply {self.describe} {state}>"


def error_from_wire(exc: BaseException | None, tb_text: str) -> BaseException:
    """Rebuild a handler's exception with its remote traceback as ``__cause__``."""
    if exc is None:  # pragma: no cover - defensive
        exc = ActorqError("remote error (no exception object)")
    return rebuild(exc, tb_text)
