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

The fork server that actorq starts also serves its requests in less
(``serve_lean_requests``, installed at its preload): multiprocessing's child reads its
pipe through a buffered file, unpickles the preparation data and the process in two
loads, keeps a duplicate of the pipe as the parent sentinel, and closes the write end of
every other live child's status pipe one by one (a thousand ``close`` calls in the
thousandth actor). A lean request is ``LEAN_REQUEST``, a length and one pickle of both;
the child reads it with two ``os.read`` calls and closes runs of those pipes with
``os.closerange``. A request from multiprocessing's own ``Popen`` (another user of the
fork server in this interpreter) is served as multiprocessing serves it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (signal.signal minus its enums)
import io
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.process
import multiprocessing.resource_tracker
import multiprocessing.spawn
import multiprocessing.util
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from actorq._process import lifelock, spawn

# A lean request starts with this byte; multiprocessing's own requests are a pickle
# stream, which starts with the PROTO opcode (b"\x80").
LEAN_REQUEST = b"L"
_HEAD = struct.Struct("=cI")  # LEAN_REQUEST, then the length of the pickle that follows
# How often a start checks that multiprocessing's resource tracker still runs (seconds;
# ``tracker_fd``)
TRACKER_CHECK_EVERY = 1.0
_tracker_checked = [0.0]  # time.monotonic() of the last check


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
            if util._afterfork_registry:  # type: ignore[attr-defined]
                # (empty in an actor: walking it raised and caught an IndexError)
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


def serves_lean() -> bool:
    """Is the fork server running now the one actorq started, with this actorq
    (``serve_lean_requests`` installed at its preload)?

    Under ``python -E`` (or ``-I``) the fork server ignores the ``PYTHONPATH`` that puts
    this actorq first (``spawn``) and may run another copy, which may not read lean
    requests: it is sent multiprocessing's own.
    """
    return (not sys.flags.ignore_environment
            and spawn.FORK_SERVER_GIVEN.get("pid") == spawn.fork_server_pid())


class LeanPopen(multiprocessing.popen_forkserver.Popen):
    """``popen_forkserver.Popen`` sending ``preparation()`` instead of the full data (as
    one lean request when the fork server serves them), and reading a status the dead
    fork server could not send as the child's real one."""

    server: int | None = None  # the fork server's pid when it started the child
    server_death: str | None = None  # "its fork server (pid N) was killed by SIGKILL"

    def _launch(self, process_obj: Any) -> None:
        # popen_forkserver.Popen._launch (Python 3.11), with only the data changed
        reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
        forkserver = multiprocessing.forkserver
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            if serves_lean():
                buf.write(_HEAD.pack(LEAN_REQUEST, 0))
                reduction.dump((preparation(process_obj.name), process_obj), buf)
                buf.seek(0)
                buf.write(_HEAD.pack(LEAN_REQUEST, len(buf.getbuffer()) - _HEAD.size))
            else:
                reduction.dump(preparation(process_obj.name), buf)
                reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        self.sentinel, w = connect_to_new_process(self._fds)  # type: ignore[attr-defined]
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
        "exited with code 255"); ``server_death`` then says how. Never waits (this runs
        on the system's loop thread).

        The fork server's status is set as it starts to exit, before it closes its files
        (this end-of-file): ``spawn.fork_server_end`` reads it at once. Its children are
        sent their death signal (SIGKILL: PR_SET_PDEATHSIG, which ``deathsig.arm`` sets
        first thing) only after that, so the child may still be running: for an instant
        if it armed that signal, until it reaches ``deathsig.arm`` (and exits on its own)
        if not. It is killed now (``_end_orphan``): from then on it runs no more code,
        as after its death signal, and the caller may handle it as dead."""
        death = self.server_gone()
        if death is None:
            # the fork server lives: it closes our pipe's end only as it exits (or
            # after it wrote the status), so this is not that (as multiprocessing says)
            return 255
        self.server_death = death
        return _end_orphan(self.pid)

    def server_gone(self) -> str | None:
        """"its fork server (pid N) was killed by SIGKILL" if the fork server that
        started the child is exiting or gone, else None (a look, never a wait)."""
        server = self.server
        end = None if server is None else spawn.fork_server_end(server)
        return None if end is None else f"its fork server (pid {server}) {end}"


def connect_to_new_process(fds: list[int]) -> tuple[int, int]:
    """Ask the fork server for a child: ``ForkServer.connect_to_new_process`` (Python
    3.11) without its two checks. Its caller made sure the fork server runs
    (``spawn.ensure_fork_server``, by the start's ``deathsig.lineage_for``), and the
    resource tracker is checked at most every ``TRACKER_CHECK_EVERY`` (``tracker_fd``).
    Returns the status pipe's read end and the request pipe's write end."""
    server: Any = multiprocessing.forkserver._forkserver
    address, alive = server._forkserver_address, server._forkserver_alive_fd
    if (address is None or alive is None  # being started again: multiprocessing's way
            or getattr(server, "_forkserver_authkey", None) is not None):
        # (a Python whose fork server authenticates each connection, 3.14 on: its own way)
        return server.connect_to_new_process(fds)  # type: ignore[no-any-return]
    if len(fds) + 4 >= multiprocessing.forkserver.MAXFDS_TO_SEND:
        msg = "too many fds"
        raise ValueError(msg)
    reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(address)
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            reduction.sendfds(client, [child_r, child_w, alive, tracker_fd(), *fds])
        except BaseException:
            os.close(parent_r)
            os.close(parent_w)
            raise
        finally:
            os.close(child_r)
            os.close(child_w)
    return parent_r, parent_w


def tracker_fd() -> int:
    """The fd of multiprocessing's resource tracker that a new child is handed (the
    tracker started if it does not run).

    multiprocessing checks that the tracker lives by writing it a probe message, which
    the tracker process wakes up to read and parse: three of them per start, ≈ 0.2 ms
    of that process's CPU per actor (issue 15). Here at most one per
    ``TRACKER_CHECK_EVERY``: a child handed the fd of a tracker that died meanwhile
    finds it dead at its first use of it and starts its own, as multiprocessing's
    children do.
    """
    tracker: Any = multiprocessing.resource_tracker._resource_tracker
    now = time.monotonic()
    fd = tracker._fd
    if fd is None or now - _tracker_checked[0] >= TRACKER_CHECK_EVERY:
        fd = tracker.getfd()  # checks it, or starts it
        _tracker_checked[0] = now
    return int(fd)


def _end_orphan(pid: int) -> int:
    """End *pid*, a child of a fork server that is gone, if it is not exiting already:
    from then on it runs no more code. Its exit code: SIGKILL's, its death signal's.

    (Its own status is not read: ``/proc`` shows it only once the kernel has set it,
    after the process is marked exiting; and a child that exited on its own a moment
    before its death signal did so because its fork server or its system went away.
    Its pid could be someone else's only if the process exited, was reaped by its new
    parent and the pid was given out again since its fork server's end-of-file: the
    bet every look by pid here makes, as the wait this replaced did.)
    """
    if lifelock.exit_status(pid) is not None:
        return -signal.SIGKILL  # exiting: dying by its death signal
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -signal.SIGKILL  # gone (reaped by its new parent)
    except OSError:  # no pidfd_open (a kernel before 5.3, valgrind): by its pid
        pidfd = -1
    try:
        if pidfd < 0:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it exited just now
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return -signal.SIGKILL


class LeanProcess(multiprocessing.context.ForkServerProcess):
    """A fork server process whose child runs its target without multiprocessing's
    per-child bootstrap (the module docstring says what is left out)."""

    @staticmethod
    def _Popen(process_obj: Any) -> LeanPopen:
        return LeanPopen(process_obj)

    def fork_server_death(self, code: int) -> str | None:
        """What ended it if it died with its fork server ("its fork server (pid N) was
        killed by SIGKILL"), else None. Never waits.

        *code* is its exit code: read (the sentinel's status, or ``LeanPopen.poll``'s
        when the dead fork server could not send one), or seen first by its life lock
        (``lifelock``) before it is reaped: then SIGKILL while the fork server that
        started it is exiting or gone is its death signal (the server starts to exit
        before the kernel sends it).
        """
        popen: LeanPopen | None = self._popen  # type: ignore[attr-defined]
        if popen is None:
            return None
        if popen.returncode is not None:  # read from its sentinel: known
            return popen.server_death
        return popen.server_gone() if code == -signal.SIGKILL else None

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled only by popen_forkserver, for the child (a Process does not pickle
        # otherwise: its authkey refuses to)
        args = self._args  # type: ignore[attr-defined]
        if serves_lean():  # (a fork server running another copy of actorq may lack it)
            args = tuple(InheritedSocket(a) if isinstance(a, socket.socket) else a
                         for a in args)
        return (LeanStart, (self._target, args, self.name, self.daemon))  # type: ignore[attr-defined]


class InheritedSocket:
    """A socket argument of a lean child, pickled as the index of its fd among those the
    fork server hands the child, and its family and type as plain numbers.

    multiprocessing pickles a socket with its family and type as enums: rebuilding
    them (``socket.AddressFamily(1)``, the enum machinery's first run in the child)
    was ≈ 25 of the ≈ 1,200 pages an actor's start copies (issue 15).
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __reduce__(self) -> tuple[Any, ...]:
        popen: Any = multiprocessing.context.get_spawning_popen()
        index = popen.duplicate_for_child(self.sock.fileno())
        s = self.sock
        return (_socket_in_child, (index, int(s.family), int(s.type), s.proto))


def _socket_in_child(index: int, family: int, kind: int, proto: int) -> socket.socket:
    """In the child: the socket whose fd came *index*-th from the fork server."""
    fds: Any = multiprocessing.forkserver.get_inherited_fds()
    return socket.socket(family, kind, proto, fileno=fds[index])


def serve_lean_requests() -> None:
    """In the fork server, at its preload: serve each request with ``serve_one``."""
    multiprocessing.forkserver._serve_one = serve_one  # type: ignore[attr-defined]


def serve_one(child_r: int, fds: list[int], unused_fds: list[int],
              handlers: dict[int, Any]) -> int:
    """In the fork server's new child: run what the request on *child_r* asks; return
    the exit code. ``multiprocessing.forkserver._serve_one`` (Python 3.11) with the
    lean request (module docstring) read and run in less."""
    signal.set_wakeup_fd(-1)
    for sig, val in handlers.items():
        set_handler(sig, val)
    close_all(unused_fds)
    # (the fds the fork server received for this child, as multiprocessing sets them)
    server: Any = multiprocessing.forkserver._forkserver
    tracker: Any = multiprocessing.resource_tracker._resource_tracker
    server._forkserver_alive_fd, tracker._fd, *server._inherited_fds = fds
    head = _read_exactly(child_r, _HEAD.size)
    if head[:1] != LEAN_REQUEST:
        return _serve_pickled(head, child_r)
    data = _read_exactly(child_r, _HEAD.unpack(head)[1])
    os.close(child_r)  # (nobody here asks for the parent process)
    reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
    process = multiprocessing.process.current_process()
    process._inheriting = True  # type: ignore[attr-defined]
    try:
        prepared, start = reduction.pickle.loads(data)
        multiprocessing.spawn.prepare(prepared)
    finally:
        del process._inheriting  # type: ignore[attr-defined]
    return int(start._bootstrap())


def set_handler(sig: int, handler: Any) -> None:
    """``signal.signal(sig, handler)`` without its enums: it turns the handler it
    replaces into a ``Handlers`` member, and for a function (the fork server's SIGCHLD
    handler) that raises and catches a ValueError inside the enum machinery, in every
    new process (issue 15: ≈ 0.1-0.2 ms of its start)."""
    _signal.signal(int(sig), handler if callable(handler) else int(handler))


def rehearse_request(target: Callable[..., object], times: int) -> None:
    """In the fork server, before it serves: read a lean request for *target* as a
    child does, *times* times, with this process's own name, authkey and working
    directory (``actorq._actorproc.warmup`` says why; nothing here changes)."""
    reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
    process = multiprocessing.process.current_process()
    prepared = {"name": process.name, "authkey": bytes(process.authkey), "dir": os.getcwd()}
    prepared.update(spawn.main_to_preload())  # (the main preloaded: found done)
    start = LeanStart(target, (), process.name, process.daemon)
    data = bytes(reduction.ForkingPickler.dumps((prepared, start)))
    system_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for _ in range(times):
            got, _start = reduction.pickle.loads(data)
            multiprocessing.spawn.prepare(got)
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0,
                          fileno=os.dup(child_end.fileno())).close()
    finally:
        system_end.close()
        child_end.close()


def close_all(fds: Iterable[int]) -> None:
    """Close *fds*: each run of consecutive numbers with one ``closerange`` call."""
    ordered = sorted(fds)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if i == j:
            os.close(ordered[i])
        else:
            os.closerange(ordered[i], ordered[j] + 1)
        i = j + 1


def _read_exactly(fd: int, n: int) -> bytes:
    """*n* bytes from the pipe *fd* (EOFError if it ends first)."""
    got = os.read(fd, n)
    while len(got) < n:
        more = os.read(fd, n - len(got))
        if not more:
            msg = f"the request pipe ended after {len(got)} of {n} bytes"
            raise EOFError(msg)
        got += more
    return got


class _Replayed(io.RawIOBase):
    """The pipe *fd* read from its start again: *head*, read already, then the rest."""

    def __init__(self, head: bytes, fd: int) -> None:
        super().__init__()
        self._head = head
        self._fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return os.readv(self._fd, [b])

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _serve_pickled(head: bytes, child_r: int) -> int:
    """multiprocessing's own request (its ``_serve_one`` and ``spawn._main``, 3.11), of
    which *head* is read already."""
    reduction = multiprocessing.context.reduction  # type: ignore[attr-defined]
    parent_sentinel = os.dup(child_r)
    process = multiprocessing.process.current_process()
    with io.BufferedReader(_Replayed(head, child_r)) as from_parent:
        process._inheriting = True  # type: ignore[attr-defined]
        try:
            preparation_data = reduction.pickle.load(from_parent)
            multiprocessing.spawn.prepare(preparation_data)
            obj = reduction.pickle.load(from_parent)
        finally:
            del process._inheriting  # type: ignore[attr-defined]
    return int(obj._bootstrap(parent_sentinel))
