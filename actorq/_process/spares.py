"""Warm spare processes: started ahead, waiting for the message that says what to run.

A forkserver start costs ≈ 26 ms here; a restart that takes a spare costs what the boot
message and the constructor cost. Spares are refilled in the background (by the caller's
starter thread) and stopped with the pool: closing a spare's socket makes it exit.

A spare may be *prepared* for one actor (``prepare``): told ahead what it would be told
at boot, it maps that actor's memory and imports its class, and then needs one short
message to take over. Its *tag* says for which: a tuple whose first item is the key of
that actor; ``take(want)`` prefers a spare whose tag's key is *want*, else an unprepared
one, else any (the caller then boots it in full).
"""

from __future__ import annotations

import logging
import multiprocessing.process
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from actorq._process.deathsig import Lineage, lineage_for
from actorq._process.lean import LeanProcess
from actorq._process.spawn import (
    SERVER_EXIT_WAIT,
    fork_server_ended,
    fork_server_pid,
    restart_dead_fork_server,
)

logger = logging.getLogger(__name__)

QUIT = b"quit"  # a spare that reads this instead of its start message exits


class WarmPool:
    """Processes started with *target(sock, lineage)*, idle until their socket speaks.

    ``lineage`` (``deathsig.Lineage``) tells the child who its owner and parent are, as
    read here before the fork, and under fork which inherited fd to close: the system's
    end of its own socket pair, without which its end-of-file would never come.
    """

    def __init__(self, ctx: Any, target: Callable[[socket.socket, Lineage], None], size: int,
                 name: str = "actorq:spare") -> None:
        self._ctx = ctx
        self._target = target
        self.size = size
        self._name = name
        self._spares: deque[tuple[Any, socket.socket]] = deque()
        self._tags: dict[socket.socket, tuple[Any, ...]] = {}  # what a spare was prepared for
        self._lock = threading.Lock()
        self.closed = False

    def start_one(self) -> tuple[Any, socket.socket]:
        """Start a process now; return it with the system end of its socket.

        Under forkserver, a start that failed because the fork server died (killed, say)
        is tried once more, with a new fork server (``spawn.restart_dead_fork_server``).
        """
        server = fork_server_pid()
        try:
            return self._start_one()
        except (EOFError, OSError):
            if not (self._ctx.get_start_method() == "forkserver"
                    and restart_dead_fork_server(SERVER_EXIT_WAIT, server)):
                raise
        return self._start_one()

    def _start_one(self) -> tuple[Any, socket.socket]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            method = self._ctx.get_start_method()
            lineage = lineage_for(method, mine.fileno())
            # under forkserver, without multiprocessing's per-child bootstrap (lean.py)
            make = LeanProcess if method == "forkserver" else self._ctx.Process
            proc = make(target=self._target, args=(theirs, lineage), name=self._name,
                        daemon=True)
            proc.start()
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        # multiprocessing remembers every child it started, and every start() polls each
        # of them (one select() per child): with a thousand actors alive, starting one
        # more cost ≈ 20 ms of that alone (O(n²) for n actors). We join, close and kill
        # our processes ourselves (and the system closes at exit, before multiprocessing's
        # own exit handler would have), so they are left out of that list.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        return proc, mine

    def take(self, want: Any = None, *, only_prepared: bool = False
             ) -> tuple[Any, socket.socket, Any] | None:
        """Return a live spare and its tag, or None (dead spares are discarded).

        A spare prepared for *want* (its tag's key) first, then an unprepared one, then
        any; with *only_prepared*, a spare prepared for *want* or none.
        """
        while True:
            with self._lock:
                if not self._spares:
                    return None
                ranked = sorted(range(len(self._spares)), key=lambda i: (
                    want is None or self._key(self._spares[i][1]) != want,
                    self._spares[i][1] in self._tags))
                i = ranked[0]
                proc, sock = self._spares[i]
                tag = self._tags.get(sock)
                if only_prepared and (want is None or self._key(sock) != want):
                    return None
                del self._spares[i]
                self._tags.pop(sock, None)
            if _alive(proc):
                return proc, sock, tag
            self._discard(proc, sock)

    def _key(self, sock: socket.socket) -> Any:
        """The key a spare was prepared for (its tag's first item), or None (under _lock)."""
        tag = self._tags.get(sock)
        return None if tag is None else tag[0]

    def prepare(self, prep: Callable[[Any, socket.socket], tuple[Any, ...] | None]) -> bool:
        """Prepare an unprepared spare: ``tag = prep(proc, sock)``, a tuple whose first
        item is the key ``take`` matches (None: nothing was sent). True if one was.
        Call it from one thread at a time."""
        with self._lock:
            free = [s for s in self._spares if s[1] not in self._tags]
        if not free:
            return False
        proc, sock = free[0]
        tag = prep(proc, sock)
        if tag is None:
            return False
        with self._lock:
            if (proc, sock) in self._spares:
                self._tags[sock] = tag
                return True
        return False

    def missing(self) -> int:
        """How many spares ``refill`` would start now."""
        with self._lock:
            return 0 if self.closed else max(0, self.size - len(self._spares))

    def unprepared(self) -> int:
        """How many spares are not prepared for any actor now."""
        with self._lock:
            return sum(1 for _proc, sock in self._spares if sock not in self._tags)

    def tags(self) -> list[Any]:
        """The tags of the spares prepared now."""
        with self._lock:
            return list(self._tags.values())

    def refill(self) -> None:
        """Start spares until there are ``size`` of them."""
        while not self.closed and len(self._spares) < self.size:
            try:
                spare = self.start_one()
            except Exception:
                logger.exception("could not start a spare process")
                return
            with self._lock:
                if not self.closed:
                    self._spares.append(spare)
                    continue
            self._stop([spare], 5.0)  # closed meanwhile

    def close(self, timeout: float = 5.0) -> None:
        """Stop every spare (EOF on its socket), join it; kill it past *timeout*."""
        with self._lock:
            self.closed = True
            spares, self._spares = list(self._spares), deque()
            self._tags.clear()
        self._stop(spares, timeout)

    @staticmethod
    def _stop(spares: list[tuple[Any, socket.socket]], timeout: float) -> None:
        for _proc, sock in spares:
            # Say it, rather than rely on EOF: under fork, later children inherited a
            # copy of this end, so closing ours alone would not end the spare's wait.
            try:
                sock.send(QUIT)
            except OSError:
                pass
            sock.close()
        for proc, _sock in spares:
            proc.join(timeout)
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout)
            proc.close()

    def _discard(self, proc: Any, sock: socket.socket) -> None:
        sock.close()
        proc.join(0.1)
        if proc.exitcode is not None:
            proc.close()


def _alive(proc: Any) -> bool:
    """``proc.is_alive()`` without its selector (≈ 40 µs under forkserver, on the path of
    every restart): is its exit status not read yet, and has its sentinel (end-of-file,
    or the fork server's report) not turned readable yet?

    The status first: once something read it (``is_alive()``, ``exitcode``, ``join``),
    the sentinel says nothing reliable. The fork server writes the status, then closes
    its end: between the two, the status read, the sentinel is neither readable nor at
    end-of-file (a spare handed out dead under load); and a pipe's write end inherited
    by another process keeps it from end-of-file for good.
    """
    popen = getattr(proc, "_popen", None)  # (multiprocessing's, set by start())
    if popen is None or popen.returncode is not None:
        return False
    if fork_server_ended(getattr(popen, "server", None)):
        # its fork server died (an actor's death said so): it dies with it, if its
        # sentinel has not said so yet (the server closes its files one by one)
        return False
    try:
        poller = select.poll()
        poller.register(proc.sentinel, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):  # closed, or never started
        return False
