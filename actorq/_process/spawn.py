"""Start-method contexts: forkserver (with actorq and the main module preloaded), fork, spawn.

The fork server imports the user's main module (as ``__mp_main__``) once, when it
starts, and every process it forks has it; without that, each one imported it again
(with its imports: a script importing ``argparse``, ``json``, ``statistics`` and
``psutil`` made each actor ≈ 1.8 MiB bigger, and slower to start). multiprocessing's own
``"__main__"`` preload does not do it on Python 3.11 (the fork server is never given the
script's path), so what each child would be told to import (``main_to_preload``: the
module's name under ``python -m``, else the main file's path, a console script's too)
and ``sys.argv`` go to the fork server in ``PRELOAD_MAIN_ENV``, set only while it is
being started, and ``actorq._actorproc.host`` imports it there the way a child would
(``preload.preload_main``); each child then finds it imported. A main module that
creates an ``ActorSystem`` at import time makes the fork server exit with
``EXIT_MAIN_UNGUARDED`` (``preload.exit_if_importing_main``); ``fork_server_unguarded``
tells the system so.

The fork server imports the same actorq as this process, and looks up modules on this
process's ``sys.path``. multiprocessing starts it with ``python -c``, which puts the
current directory first on its path (and Python 3.11's fork server ignores the
``sys_path`` it is given): from inside another checkout of actorq, the fork server, and
every actor, ran that checkout's code. So it is started with ``PYTHONSAFEPATH`` (no
current directory) and the directory of this process's actorq first on ``PYTHONPATH``;
``preload.adopt_parent_path`` then sets its ``sys.path`` to ours (``PARENT_PATH_ENV``) and
puts both variables back as they were.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from actorq._process import lifelock

logger = logging.getLogger("actorq")

PRELOAD = ["actorq._actorproc.host"]
PRELOAD_MAIN_ENV = "ACTORQ_PRELOAD_MAIN"
PARENT_PATH_ENV = "ACTORQ_PARENT_PATH"
EXIT_MAIN_UNGUARDED = 6  # as host.EXIT_MAIN_UNGUARDED (this layer does not import it)
# How long a start waits for a fork server that failed it or is known dead to finish
# exiting (a SIGKILLed one: milliseconds; this bounds a wedged one)
SERVER_EXIT_WAIT = 5.0
_lock = threading.Lock()


def _fresh_lock() -> None:
    """In a child made by fork: another thread of the parent may have held the lock (a
    fork server's start takes seconds); the child has no such thread, so a new lock."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock)
_configured = False
# what the fork server was given when this process started it (``sys_path``, and
# ``sys_argv`` if it preloads the main script): a child started the lean way
# (``lean.py``) is sent these only if they changed since
FORK_SERVER_GIVEN: dict[str, Any] = {}


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
                if getattr(server, "_forkserver_pid", None) is None:
                    _start_fork_server()
    return ctx


def _start_fork_server() -> None:
    """Start the fork server now, with this process's actorq and ``sys.path``, telling it
    which main module to preload (if any)."""
    env = parent_path_env()
    main = main_to_preload()
    if main:  # with the argv the user started it with (a main may read it at import)
        env[PRELOAD_MAIN_ENV] = json.dumps([main, sys.argv])
        FORK_SERVER_GIVEN["sys_argv"] = list(sys.argv)
    FORK_SERVER_GIVEN["sys_path"] = json.loads(env[PARENT_PATH_ENV])["sys_path"]
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        multiprocessing.forkserver.ensure_running()
        FORK_SERVER_GIVEN["pid"] = fork_server_pid()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main_to_preload() -> dict[str, str]:
    """What each child is told to import as ``__mp_main__`` (the key and value
    multiprocessing's ``spawn.get_preparation_data`` sends, ``spawn.prepare`` reads):
    the main module by name (``python -m pkg.mod``), or the main file by path (``python
    prog.py``, a console script: a file without ``.py``). Empty if children import
    nothing: no main file (``-c``, an interactive session), or a ``__main__`` module
    (``python -m pkg``, a folder or zip file: multiprocessing's children skip it)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(name, str):
        if name == "__main__" or name.endswith(".__main__"):
            return {}
        return {"init_main_from_name": name}
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return {}
    path = os.path.abspath(path)  # (absolute already: Python sets it so since 3.9)
    return {"init_main_from_path": path} if os.path.isfile(path) else {}


def fork_server_pid() -> int | None:
    """The pid of this interpreter's multiprocessing fork server (None: not started)."""
    return getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)


def actorq_root() -> str:
    """The directory this process imported the actorq package from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parent_path_env() -> dict[str, str]:
    """The environment the fork server starts with: actorq's directory first on its path,
    not the current directory, what ``preload.adopt_parent_path`` needs to undo it, and
    the pid of this process (the fork server exits when it dies)."""
    root = actorq_root()
    old = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    pythonpath = os.pathsep.join(p for p in (root, old["PYTHONPATH"]) if p)
    given = {"sys_path": [p for p in sys.path if isinstance(p, str)], "root": root,
             "env": old, "owner": os.getpid()}
    return {PARENT_PATH_ENV: json.dumps(given), "PYTHONPATH": pythonpath,
            "PYTHONSAFEPATH": "1"}


def ensure_fork_server() -> None:
    """Make sure the fork server runs. One that died (killed, say) is started again the
    way ``get_context`` starts it (``restart_dead_fork_server``): multiprocessing would
    start it without actorq's path, main script and owner watch."""
    # Called at every forkserver start. The look (a pidfd opened, polled, closed) costs
    # 5.5-6.8 µs of CPU per start, multiprocessing's own check after it 3.7-4.2 µs
    # (tidy9, 20,000 calls x 3, load 18-30): 0.3 % of the 2.1-2.5 ms a start costs this
    # process. Kept, not cached: a pidfd kept open would be one more fd in every process
    # forked from here (the fork start method), and one more to close when the fork
    # server is started again.
    pid = fork_server_pid()
    if pid is not None and fork_server_ended(pid):
        # An actor's death said it is gone: it may still be exiting (its status set,
        # its files closed, not reaped yet). Wait here (a starter thread) until it has
        # exited: else multiprocessing, finding it exited a moment later, would start
        # the next one itself, without actorq's path, main script and owner watch.
        restart_dead_fork_server(SERVER_EXIT_WAIT, pid)
    elif pid is not None and exits_within(pid, 0):
        restart_dead_fork_server(0, pid)
    elif pid is not None:
        # alive, as its pidfd just said: multiprocessing's own check (ensure_running)
        # would say it again, and first probe the resource tracker, a message that
        # process wakes up to read (lean.tracker_fd says why that matters)
        return
    multiprocessing.forkserver.ensure_running()  # starts it if it does not run


def restart_dead_fork_server(timeout: float, dead: int | None = None) -> bool:
    """After a start failed on the fork server: if it died (or dies within *timeout*: a
    fork server being killed may still take a request and drop it), start a new one as
    ``get_context`` does, and return True (the caller may try again). False if it is
    alive, or exited because the main script creates a system at import time (its
    status is left for ``fork_server_unguarded``). *dead*: the fork server the caller
    found dead or failing (True at once if another thread started the next one since).

    Without this a process started while the fork server was being killed failed its
    start for good; and multiprocessing, left to start the next one itself, would start
    it without actorq's path, main script and owner watch.
    """
    with _lock:
        pid = fork_server_pid()
        if dead is not None and pid != dead:
            return True  # *dead* (the caller's) was started again meanwhile
        if pid is not None:
            if not exits_within(pid, timeout):
                return False
            if fork_server_unguarded():
                return False
        if pid is not None:
            fork_server_end(pid)  # read now: multiprocessing reaps it in what follows
        logger.warning("the fork server (pid %s) is gone: starting a new one", pid)
        _start_fork_server()  # (multiprocessing reaps the old one first)
        # (a dead one's pid, given again: its end is not this one's)
        _server_ends.pop(fork_server_pid() or 0, None)
        return True


def exits_within(pid: int, timeout: float) -> bool:
    """Has *pid* (our child, or a process we may watch) exited, or does it within
    *timeout* seconds? With 0 a look that never waits. It is not reaped.

    (A pid nobody has is taken as exited: one reaped already, maybe by another parent.)
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as e:  # no pidfd_open: a kernel before 5.3, or valgrind (ENOSYS)
        if e.errno != errno.ENOSYS:
            raise
        return _exits_within_by_waitid(pid, timeout)
    try:
        poller = select.poll()  # (not select(): a system with many actors has fds > 1023)
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1e3))
    finally:
        os.close(pidfd)


def _exits_within_by_waitid(pid: int, timeout: float) -> bool:
    """``exits_within`` without a pidfd: look with ``waitid(WNOWAIT)`` every
    millisecond (only where ``pidfd_open`` is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # reaped already
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


# How each fork server that exited ended, read before multiprocessing reaps it (its
# children's deaths may be handled after that): pid -> "was killed by SIGKILL"
_server_ends: dict[int, str] = {}


def fork_server_end(pid: int) -> str | None:
    """How the fork server *pid* (this process's child) ended: "was killed by SIGKILL",
    "exited with code 1"; None while it lives. Never waits.

    Read without reaping it, and kept (a fork server restarted since was reaped by
    multiprocessing); "died" if it was reaped unread. A server still exiting is read
    from ``/proc`` (``lifelock.exit_status``): its status is set as it starts to exit,
    before it closes its files (its children's status pipes: their end-of-file) and
    before the kernel sends its children their death signal, so whoever learns of
    either finds its end here at once.
    """
    known = _server_ends.get(pid)
    if known is not None:
        return known
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return "died"
    if info is None:
        status = lifelock.exit_status(pid)
        if not status:
            return None  # alive, or its status not set yet (it is before its files close)
        code = lifelock.exitcode_of(status)
    else:
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    if code >= 0:
        end = f"exited with code {code}"
    else:
        try:
            end = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            end = f"was killed by signal {-code}"
    _server_ends[pid] = end
    return end


def fork_server_ended(pid: int | None) -> bool:
    """Is the fork server *pid* known to have ended (``fork_server_end`` read it)?
    A dict look-up: no system call."""
    return pid in _server_ends


def fork_server_unguarded() -> bool:
    """True if the fork server exited because the main script creates an actor system
    when imported (read without reaping it: multiprocessing reaps its own fork server)."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return False
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return (info is not None and info.si_code == os.CLD_EXITED
            and info.si_status == EXIT_MAIN_UNGUARDED)
