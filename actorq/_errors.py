"""Every exception actorq raises, rooted at :class:`ActorqError`.

Each class keeps its constructor arguments in ``self.args`` so that it pickles:
errors cross process boundaries (a crash reported by the system to an actor that
was calling the crashed one, say).
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import traceback


class ActorqError(Exception):
    """Base class of every error actorq raises."""


class Backpressure(ActorqError):
    """The target's mailbox has no credit left (``tell_nowait``, or a send timeout)."""


class MessageTooLarge(ActorqError, ValueError):
    """A message's large buffers (or its spilled record) did not fit in shared memory
    (``/dev/shm`` full, or over a file size limit): that message was not sent (a call's
    reply raises this, a tell is dropped and logged); the rest of its burst was."""


class ActorCrashed(ActorqError):
    """The actor's process died while handling this call, or before replying.

    ``cause`` classifies the death: ``"signal"``, ``"exit"``, ``"lost"``, ...
    """

    def __init__(self, message: str, cause: str = "lost") -> None:
        super().__init__(message, cause)
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[0])


class ActorStopped(ActorqError):
    """The actor was stopped (or its system closed) before the call could be handled."""


class CallTimeout(ActorqError, TimeoutError):
    """A call got no reply before its deadline.

    ``reason`` is ``"expired"`` when the actor dropped the call unrun because its
    deadline had passed while it was queued; ``""`` otherwise.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message, reason)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


class StartTimeout(ActorqError, TimeoutError):
    """An actor did not start (or the system did not answer its actor) in time."""


class CircuitOpen(ActorqError):
    """Every candidate's circuit is open: the call fails fast."""


class InitializerFailed(ActorqError, concurrent.futures.BrokenExecutor):
    """An ``Executor``'s initializer raised in a worker: the executor is broken (as
    ``ProcessPoolExecutor`` is, with ``BrokenProcessPool``). Every task not finished
    fails with it, and so does every later ``submit``; ``__cause__`` is the
    initializer's exception (its own ``__cause__``: the worker's traceback)."""


class DecodeError(ActorqError, TypeError):
    """A message could not be unpickled in the process it reached: a call's arguments
    or a tell (``kind="message"``: it was not handled) or a reply (``kind="reply"``:
    the handler ran, its result is lost). The message names the part and the error."""

    def __init__(self, message: str, kind: str = "message") -> None:
        super().__init__(message, kind)
        self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0])


class EncodeError(ActorqError, pickle.PicklingError, TypeError):
    """A value could not be pickled to be sent to another process: a handler's return
    value (its caller gets this), a call's arguments, an ``Executor`` task's result.
    A ``pickle.PicklingError`` (what ``ProcessPoolExecutor``'s future raises for a result
    that does not pickle) and a ``TypeError`` (what pickling an unpicklable object
    raises); ``__cause__`` is the pickling error (or its remote traceback)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GraphError(ActorqError):
    """A job graph is malformed (a cycle, an unpicklable argument, ...)."""


class DeadlockError(ActorqError):
    """Waiting on this reply would deadlock: the target is blocked waiting on the caller."""


class BenchError(ActorqError, ValueError):
    """The benchmark harness was given bad input, or a measured workload failed.

    An unknown suite, a workload that does not import, is not callable, raises or runs
    past its timeout, an unwritable output folder, a malformed result file.
    """


class NoSuchActor(ActorqError, KeyError):
    """No live actor is registered under that name (``lookup``). A ``KeyError`` whose
    message reads as a sentence (a plain ``KeyError`` shows its message quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RemoteTraceback(ActorqError):
    """The traceback of an exception raised in another process, kept as text."""

    def __init__(self, tb_text: str) -> None:
        super().__init__(tb_text)
        self.tb_text = tb_text

    @property
    def tb(self) -> str:
        """``tb_text``, under the name ``concurrent.futures``' own remote traceback uses
        (code written for ``ProcessPoolExecutor`` reads ``exc.__cause__.tb``)."""
        return self.tb_text

    def __str__(self) -> str:
        return "\n\n" + self.tb_text


_RUNTIME_FILES = (os.path.dirname(os.path.abspath(__file__)) + os.sep, "uvloop")


def _runtime_frame(filename: str) -> bool:
    return filename.startswith(_RUNTIME_FILES[0]) or _RUNTIME_FILES[1] in filename


def format_remote(exc: BaseException) -> str:
    """Return the formatted traceback of *exc* (in the process where it was raised),
    without the runtime's own frames at its top (actorq's host and hub, uvloop): the
    first frame shown is the user's handler."""
    tb = exc.__traceback__
    while (tb is not None and tb.tb_next is not None
           and _runtime_frame(tb.tb_frame.f_code.co_filename)):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def raised_at(exc: BaseException) -> tuple[str, int]:
    """The file and line where *exc* was raised (its innermost frame), or ("?", 0)."""
    tb = exc.__traceback__
    if tb is None:
        return "?", 0
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def rebuild(exc: BaseException, tb_text: str) -> BaseException:
    """Attach the remote traceback text to *exc* as its ``__cause__`` and return it."""
    exc.__cause__ = RemoteTraceback(tb_text)
    return exc


PUBLIC = (
    ActorqError,
    Backpressure,
    MessageTooLarge,
    ActorCrashed,
    ActorStopped,
    CallTimeout,
    StartTimeout,
    CircuitOpen,
    DecodeError,
    EncodeError,
    GraphError,
    DeadlockError,
    InitializerFailed,
    RemoteTraceback,
)
for _cls in PUBLIC:
    _cls.__module__ = "actorq"
# Raised by the public submodule actorq.bench, so it is shown there (not in actorq's API).
BenchError.__module__ = "actorq.bench"
