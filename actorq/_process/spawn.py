"""Start-method contexts: forkserver (with actorq preloaded), fork, spawn."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import threading

PRELOAD = ["actorq._host"]
_lock = threading.Lock()
_configured = False


def get_context(method: str) -> multiprocessing.context.BaseContext:
    """Return the multiprocessing context for *method*; forkserver preloads actorq.

    The fork server is shared by every system of this interpreter and exits with it
    (it watches a pipe from this process), so it is started once, not per system.
    """
    global _configured
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        with _lock:
            if not _configured:
                ctx.set_forkserver_preload(PRELOAD)
                _configured = True
    return ctx
