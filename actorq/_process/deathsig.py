"""Children die with their owner: PR_SET_PDEATHSIG, a pidfd watcher, the control socket.

Who is the parent of a new process depends on the start method:

* ``fork`` and ``spawn``: the owner (the user's process) itself, from the thread that
  forked it. PR_SET_PDEATHSIG fires when that *thread* exits, so a process is forked only
  from a thread that lives as long as the system (the starter thread, see ``spawn``).
  The kernel's SIGKILL takes a busy actor down mid-handler, whatever holds its GIL.
* ``forkserver``: the fork server. It exits when it reads end-of-file on a pipe whose
  write end the owner holds, and every process it forks inherits a copy of that end
  (``multiprocessing.forkserver``); so each of our processes closes its copy at once
  (``forget_forkserver``), else one busy actor alone keeps the fork server, and with it
  itself, alive after the owner died. The second line is a watcher thread on a pidfd of
  the owner, in the fork server (``serve_owner``): it exits the fork server when the
  owner dies, and the kernel then kills every process it forked. One thread for all of
  them: a thread in each actor cost it ≈ 90 copy-on-write page faults and ≈ 0.9 ms of
  CPU at every start (issue 15). A process whose fork server does not watch its owner
  (one actorq did not start) watches it itself (it needs the GIL to exit: a handler that
  holds the GIL in C delays it).

The parent's pid is read *before* the fork and passed in (``Lineage``): read in the child,
a parent that died before the prctl took effect looks like the new parent (init or a
subreaper) and the check passes, leaving an orphan. The control socket to the system is
the last line: an actor that reads end-of-file on it exits at once (between messages).
"""

from __future__ import annotations

import ctypes
import multiprocessing.forkserver
import os
import select
import signal
import threading
from dataclasses import dataclass

from actorq._process import spawn

PR_SET_PDEATHSIG = 1
# looked up once, at import (in the fork server, which preloads this module): a CDLL made
# in each new process cost it ≈ 0.4 ms and 35 copy-on-write page faults (issue 15)
_prctl = ctypes.CDLL(None, use_errno=True).prctl
EXIT_ORPHANED = 4  # as the actor's EXIT_SYSTEM_GONE: the system it belonged to is gone
# In the fork server: the pid of the process whose death makes it exit (serve_owner);
# the processes it forks inherit the value, and need no watcher of their own for it.
SERVER_OWNER: int | None = None


@dataclass(frozen=True, slots=True)
class Lineage:
    """Who a new process belongs to, read in the parent before the fork.

    ``owner`` is the process that owns the system; ``parent`` the one that forks the
    child (the owner, or the fork server); ``close_fd`` an fd the child inherits under
    fork but must not keep (the system's end of its own socket pair), or -1.
    """

    owner: int
    parent: int
    close_fd: int = -1

    def __reduce__(self) -> tuple[type[Lineage], tuple[int, int, int]]:
        # rebuilt by its __init__: a frozen slots dataclass's own unpickling walks its
        # fields() (≈ 30 copied pages and 0.14 ms of a forked child, issue 15)
        return (Lineage, (self.owner, self.parent, self.close_fd))


def lineage_for(method: str, close_fd: int = -1) -> Lineage:
    """The ``Lineage`` of a process about to be started with *method* from here."""
    me = os.getpid()
    if method != "forkserver":
        return Lineage(me, me, close_fd if method == "fork" else -1)
    spawn.ensure_fork_server()  # a no-op once it runs
    return Lineage(me, spawn.fork_server_pid() or me)


def set_pdeathsig(parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send *sig* to this process when its parent dies.

    *parent* is the pid the parent had before the fork: if it is no longer our parent,
    it died before the request took effect, and we exit now.
    """
    if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


def forget_forkserver() -> None:
    """Close the fork server's keep-alive fd that this process inherited, if any.

    The fork server lives while any copy of that pipe's write end is open; it is the
    owner's alone to hold. Forgetting it also makes multiprocessing start a fork server
    of this process's own, should user code here need one.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if server is None or fd is None:
        return
    server._forkserver_alive_fd = None
    server._forkserver_pid = None
    server._forkserver_address = None
    try:
        os.close(fd)
    except OSError:
        pass


def watch_owner(owner: int) -> bool:
    """Exit this process as soon as *owner* dies (a daemon thread polls a pidfd).

    False if it cannot be watched (no pidfd here, Linux < 5.3: the fork server and the
    socket remain).
    """
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(EXIT_ORPHANED)
    except OSError:
        return False

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="actorq-owner-watch", daemon=True).start()
    return True


def serve_owner(owner: int) -> None:
    """In the fork server, as it starts: exit when *owner* dies, for every process it
    will fork (they die with it: ``set_pdeathsig``).

    The thread is started before the fork server takes its first request and only ever
    waits in ``select`` (holding no lock, not the GIL) or exits the process: forking
    beside it is safe.
    """
    global SERVER_OWNER
    if watch_owner(owner):
        SERVER_OWNER = owner


def arm(lineage: Lineage) -> None:
    """Everything a new process does first so that it never outlives its owner."""
    set_pdeathsig(lineage.parent)
    if lineage.close_fd >= 0:
        try:
            os.close(lineage.close_fd)
        except OSError:
            pass
    forget_forkserver()
    if lineage.parent != lineage.owner and lineage.owner != SERVER_OWNER:
        watch_owner(lineage.owner)
