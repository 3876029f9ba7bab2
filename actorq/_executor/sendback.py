"""What a worker sends back for a task whose exception cannot be pickled.

``ProcessPoolExecutor`` sends the pickling error instead, with the remote traceback of
that error as its ``__cause__`` (``_sendback_result`` and ``_ExceptionWithTraceback`` in
CPython's Lib/concurrent/futures/process.py): ``except TypeError`` code written for it
sees the same type here. actorq does a little more: the remote traceback shows the
task's own exception first, then the pickling error, and a note on the error names the
task's exception (type and message), which the standard library leaves in the
traceback text only.
"""

from __future__ import annotations

import pickle

from actorq._errors import EncodeError, format_remote

UNSENDABLE_NOTE = "actorq.Executor: "  # how the note on a pickling error sent back starts


def _text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__qualname__}: {exc}"
    except Exception:  # its __str__ raises too
        return f"{type(exc).__qualname__} (its str() raises)"


def unsendable_exception(exc: BaseException, tb: str, err: BaseException,
                         who: str = "the task") -> tuple[BaseException, str]:
    """The error to send back, and its remote traceback text, for the exception *exc*
    (remote traceback *tb*) of *who* (the task, or the initializer) whose pickling
    raised *err*.

    *err* itself (a ``SystemExit`` from a ``__reduce__`` too, as the standard library
    sends it), noted; an ``EncodeError`` naming both if *err* does not pickle either.
    """
    err.__suppress_context__ = True  # *exc*, when raised while it was handled: in *tb*
    text = (f"{tb}\nThe exception above could not be pickled to be sent back:\n\n"
            f"{format_remote(err)}")
    if isinstance(err, SystemExit):
        return err, text
    what = _text(exc)
    try:
        err.add_note(f"{UNSENDABLE_NOTE}{who} raised {what}, which cannot be pickled to "
                     "be sent back (its traceback is in __cause__)")
        pickle.dumps(err, protocol=5)
    except Exception:
        err = EncodeError(f"{who} raised {what}, which cannot be pickled to be sent back: "
                          f"{_text(err)}")
    return err, text
