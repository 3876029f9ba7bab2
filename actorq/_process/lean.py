"""A lean child start under the fork server: what multiprocessing's child did that an
actor process does not need, left out.

A process that multiprocessing's fork server forks unpickles preparation data (the
parent's ``sys.path``, ``sys.argv``, working directory, authkey, start method, main
module) and a ``Process`` object, and runs ``BaseProcess._bootstrap`` before its target:
it closes and reopens ``stdin`` (the fork server did that once already), builds a
``_ParentProcess``, resets the counters and sets of children, and so on. Each object it
makes or touches, each function it runs for the first time here (3.11 specializes the
bytecode in place), is a page of the fork server's heap copied into the child; on this
machine a copied page costs ≈ 4 µs, and 15-45 µs once ≈ 6 GiB are in use (issue 15;
``benchmarks/probe_start.py``, ``probe_fresh_memory.py``).

A ``LeanProcess`` sends less and runs less:

* its preparation data leaves out ``sys.path`` and ``sys.argv`` when they are what the
  fork server was given when actorq started it (``spawn.FORK_SERVER_GIVEN``), and the
  start method; the authkey, working directory and main module still come and are
  applied by multiprocessing as before;
* it pickles, for the child, as a ``LeanStart``: the target, its arguments and the
  process name. Its ``_bootstrap`` runs the target with what of
  ``BaseProcess._bootstrap`` matters once the target runs: the fork server's finalizers
  are dropped and its after-fork hooks run, an exception is reported as multiprocessing
  reports it, and at exit the finalizers run and non-daemon threads are joined. Left
  out: ``multiprocessing.parent_process()`` is None in the child.

On the parent's side a ``LeanProcess`` is a ``ForkServerProcess`` like any other
(``pid``, ``sentinel``, ``exitcode``, ``join``, ``kill``).
"""

from __future__ import annotations

import io
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.spawn
import multiprocessing.util
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from actorq._process import spawn

# How long a child whose fork server died may take to die with it (it is being sent its
# SIGKILL: microseconds; this bounds the wait on a child that lives on)
SERVER_GONE_WAIT = 5.0


class LeanStart:
    """What a lean child unpickles instead of a ``Process``: its target and arguments."""

    __slots__ = ("args", "daemon", "name", "target")

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...],
                 name: str, daemon: bool) -> None:
        self.target = target
        self.args = args
        self.name = name
        self.daemon = daemon

    def _bootstrap(self, parent_sentinel: int | None = None) -> int:
        """Run the target in this (new) process; return its exit code.

        Called by ``multiprocessing.spawn._main`` in the child, as it calls
        ``BaseProcess._bootstrap``.
        """
        util = multiprocessing.util
        if parent_sentinel is not None:
            os.close(parent_sentinel)  # nobody here asks for the parent process
        try:
            # (a daemonic process may not start processes of its own, as before)
            multiprocessing.current_process().daemon = self.daemon
            multiprocessing.context._force_start_method("forkserver")
            util._finalizer_registry.clear()  # type: ignore[attr-defined]
            util._run_after_forkers()  # type: ignore[attr-defined]
            try:
                self.target(*self.args)
                code = 0
            finally:
                util._exit_function()  # type: ignore[attr-defined]
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException:
            code = 1
            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
        finally:
            threading._shutdown()  # type: ignore[attr-defined]
            util._flush_std_streams()  # type: ignore[attr-defined]
        return code


def _exit_code(exc: SystemExit) -> int:
    """The exit code ``sys.exit(code)`` asks for, as multiprocessing reads it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def preparation(name: str) -> dict[str, Any]:
    """multiprocessing's preparation data for a child, less what the fork server holds
    already: ``sys.path`` and ``sys.argv`` as given to it when actorq started it
    (``spawn``), and the start method (``LeanStart`` forces it)."""
    data = multiprocessing.spawn.get_preparation_data(name)
    given = spawn.FORK_SERVER_GIVEN
    if given.get("pid") == spawn.fork_server_pid():
        for key in ("sys_path", "sys_argv"):  # (not if it was started again since)
            if key in given and data.get(key) == given[key]:
                del data[key]
    del data["start_method"]
    if not data["log_to_stderr"]:
        del data["log_to_stderr"]
    return data


class LeanPopen(multiprocessing.popen_forkserver.Popen):
    """``popen_forkserver.Popen`` sending ``preparation()`` instead of the full data,
    and reading a status the dead fork server could not send as the child's real one."""

    server: int | None = None  # the fork server's pid when it started the child
    server_death: str | None = None  # "its fork server (pid N) was killed by SIGKILL"

    def _launch(self, process_obj: Any) -> None:
        # popen_forkserver.Popen._launch (Python 3.11), with only the data changed
        reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
        forkserver = multiprocessing.forkserver
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(preparation(process_obj.name), buf)
            reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        # (the parent's duplicate of the data pipe is the child's parent sentinel)
        parent_w = os.dup(w)
        self.finalizer = multiprocessing.util.Finalize(
            self, multiprocessing.util.close_fds,  # type: ignore[attr-defined]
            (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)
        self.server = spawn.fork_server_pid()  # who reports its exit status

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """``popen_forkserver.Popen.poll``, but a status the fork server could not send
        because it died is the child's real one: killed by its death signal."""
        if self.returncode is None:
            if not multiprocessing.connection.wait(
                    [self.sentinel], 0 if flag == os.WNOHANG else None):
                return None
            try:
                self.returncode = multiprocessing.forkserver.read_signed(self.sentinel)
            except (OSError, EOFError):
                self.returncode = self._died_with_server()
        return self.returncode

    def _died_with_server(self) -> int:
        """End-of-file and no status: the fork server died (multiprocessing says 255,
        "exited with code 255"). Its children die with it, by ``SIGKILL`` (the
        PR_SET_PDEATHSIG ``deathsig.arm`` sets first thing): the kernel sends it as the
        fork server exits, *after* closing its files, so the child may still be
        running now; wait for it (bounded) so that the caller never handles as dead a
        process that runs on. ``server_death`` then says what happened to the server."""
        server = self.server
        if server is None or not spawn._exits_within(server, SERVER_GONE_WAIT):
            return 255  # the fork server lives: not that (as multiprocessing says)
        self.server_death = f"its fork server (pid {server}) {_server_end(server)}"
        if not spawn._exits_within(self.pid, SERVER_GONE_WAIT):
            return 255  # it outlived its fork server: a death signal not armed
        return -signal.SIGKILL


def _server_end(pid: int) -> str:
    """How the fork server *pid* (this process's child, exited) ended: "was killed by
    SIGKILL", "exited with code 1", or "died" if it was reaped already."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        info = None
    if info is None:
        return "died"
    if info.si_code == os.CLD_EXITED:
        return f"exited with code {info.si_status}"
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = f"signal {info.si_status}"
    return f"was killed by {name}"


class LeanProcess(multiprocessing.context.ForkServerProcess):
    """A fork server process whose child runs its target without multiprocessing's
    per-child bootstrap (the module docstring says what is left out)."""

    @staticmethod
    def _Popen(process_obj: Any) -> LeanPopen:
        return LeanPopen(process_obj)

    @property
    def fork_server_death(self) -> str | None:
        """What ended it, if it died with its fork server ("its fork server (pid N) was
        killed by SIGKILL"), once its exit status is read; else None."""
        return getattr(self._popen, "server_death", None)  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled only by popen_forkserver, for the child (a Process does not pickle
        # otherwise: its authkey refuses to)
        return (LeanStart,
                (self._target, self._args, self.name, self.daemon))  # type: ignore[attr-defined]

