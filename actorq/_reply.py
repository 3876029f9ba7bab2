"""Reply[T]: the result of a call, awaitable from any loop and waitable from any thread.

A reply is resolved exactly once, on whichever thread reads the answer from the ring
(the hub loop, or a synchronous waiter helping it). Waiters register first and check
second, the resolver sets ``_done`` first and notifies second; under the GIL that order
means no waiter is ever missed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from actorq._clock import Deadline
from actorq._errors import ActorqError, CallTimeout, DeadlockError, rebuild

if TYPE_CHECKING:
    from actorq._hub import Hub
    from actorq._ref import ActorRef

T = TypeVar("T")
_monotonic = time.monotonic


class Reply(Generic[T]):
    """The pending result of a call.

    Use ``await reply``, ``reply.result(timeout)`` or ``reply.done()``.
    """

    __slots__ = (
        "_callbacks",
        "_done",
        "_event",
        "_exc",
        "_hub",
        "_method",
        "_ref",
        "_value",
        "target_id",
        "token",
    )

    def __init__(self, hub: Hub, ref: ActorRef[Any], token: int, method: str) -> None:
        self._hub = hub
        self.target_id = ref.actor_id
        self._ref = ref
        self.token = token
        self._method = method
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._event: threading.Event | None = None
        # () until someone awaits: most replies are waited for with result(), or not at all
        self._callbacks: Sequence[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = ()

    @property
    def describe(self) -> str:
        """``"Counter 'c'.incr"``, for error messages (formatted only when one is needed)."""
        return self._ref._describe(self._method)

    # -- resolution (hub side) ----------------------------------------------------------

    def _resolve(self, value: Any = None, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._value, self._exc = value, exc
        self._done = True
        event = self._event
        if event is not None:
            event.set()
        if not self._callbacks:
            return
        for loop, fut in self._callbacks:
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._settle(fut)
            else:
                loop.call_soon_threadsafe(self._settle, fut)
        self._callbacks = ()

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return
        if self._exc is not None:
            fut.set_exception(self._exc)
        else:
            fut.set_result(self._value)

    def _fail(self, exc: BaseException) -> None:
        self._resolve(exc=exc)

    # -- waiting (caller side) ----------------------------------------------------------

    def done(self) -> bool:
        """True once the reply (value or error) has arrived; never waits."""
        return self._done

    def result(self, timeout: float | None = None) -> T:
        """Wait for the reply and return its value, or raise the handler's error.

        Blocks the calling thread up to *timeout* seconds (default: the system's call
        timeout). Raises ``CallTimeout`` when it passes, ``ActorCrashed`` if the actor died
        while handling the call, ``ActorStopped`` if it was stopped, ``DeadlockError`` if
        an actor waits on a call to itself, and ``RuntimeError`` if called on the loop that
        must deliver the reply (use ``await``).
        """
        if not self._done:
            wait = timeout if timeout is not None else self._hub.config.call_timeout
            deadline = Deadline(_monotonic() + wait, wait)  # Deadline.after, one frame less
            if self._hub.may_deadlock:
                self._check_deadlock()
            self._hub.wait_reply(self, deadline)
            if not self._done:
                raise self._timeout_error(deadline)
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[no-any-return]

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

    def _wait_event(self, deadline: Deadline) -> None:
        event = self._event
        if event is None:
            event = self._event = threading.Event()
        if not self._done:
            event.wait(deadline.remaining())

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            self._check_deadlock()
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Any] = loop.create_future()
            callbacks = self._callbacks
            if not isinstance(callbacks, list):
                callbacks = self._callbacks = []
            callbacks.append((loop, fut))
            if self._done:
                self._settle(fut)
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
