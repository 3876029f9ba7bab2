"""Start-method contexts: forkserver (with actorq preloaded), fork, spawn."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import threading

logger = logging.getLogger("actorq")

PRELOAD = ["actorq._actorproc.host"]
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
                _configured = True
                server = multiprocessing.forkserver._forkserver
                if getattr(server, "_forkserver_pid", None) is not None and not set(
                        PRELOAD) <= set(getattr(server, "_preload_modules", ())):
                    # The preload list is read when the fork server starts, and this
                    # interpreter's fork server is already running without it.
                    logger.warning(
                        "the multiprocessing fork server was started before actorq could "
                        "preload itself into it: every actor will import actorq on start "
                        "(slower starts, more memory per actor). Create the ActorSystem "
                        "before other forkserver users, or call "
                        "multiprocessing.set_forkserver_preload(%r) first", PRELOAD)
                ctx.set_forkserver_preload(PRELOAD)
    return ctx
