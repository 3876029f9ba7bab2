"""Peer runners: the same work done over multiprocessing and faster_fifo, for ratios.

Each peer owns one consumer process, started when the peer is built and joined (then
terminated, then killed, each under a deadline) by ``close()`` or the ``with`` block::

    user process                                  peer process
    QueueSink.send_small(n)      ─ mp.Queue ────▶ count; "sync" → ack the count
    FasterFifoSink.send_small(n) ─ faster_fifo ─▶ count (get_many); "sync" → ack
    PipeEcho.round_trips(n)      ◀─ mp.Pipe ───▶ send back what came
    PipeSink.transfer(obj)       ─ mp.Pipe ─────▶ reply with obj.nbytes

Each side uses its library the way its documentation recommends: ``Queue.put`` /
``Queue.get``, faster_fifo's ``put`` / ``get_many``, ``Connection.send`` / ``recv``.
Acks travel on a separate one-way pipe, once per batch, so they cost the batch nothing.
Nothing here knows about actors; the peers are what actorq is measured against.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import queue as _queue
import signal
import time
from typing import Any, Self

logger = logging.getLogger(__name__)

__all__ = ["FasterFifoSink", "PipeEcho", "PipeSink", "QueueSink", "faster_fifo_missing"]

# Control messages are strings; data messages never are.
SYNC = "sync"
STOP = "stop"
# faster_fifo's buffer: large enough that a burst of small messages does not block the
# producer on every put, small enough to stay in cache (its default is 1 MB).
FASTER_FIFO_BYTES = 8 * 2**20
# Every peer wait is bounded: a wedged peer fails the benchmark instead of hanging it.
DEFAULT_TIMEOUT = 60.0
JOIN_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Best effort: have the kernel SIGKILL this process when its parent dies.

    Under forkserver the parent is the fork server, which exits with the user's
    process, so a peer never outlives a benchmark that was killed.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _default_context() -> Any:
    # forkserver, like actorq's default: no fork-with-threads hazard in the peers.
    return multiprocessing.get_context("forkserver")


class _Peer:
    """One peer process, with the pipe its acks come back on, and ordered cleanup."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str, ctx: Any) -> None:
        self._ctx = ctx if ctx is not None else _default_context()
        self._acks_in, acks_out = self._ctx.Pipe(duplex=False)
        self._closed = False
        self._proc = self._ctx.Process(target=target, args=(*args, acks_out), name=name,
                                       daemon=True)
        try:
            self._proc.start()
        finally:
            acks_out.close()  # the child holds its own copy

    @property
    def pid(self) -> int | None:
        """The peer process's pid."""
        return self._proc.pid  # type: ignore[no-any-return]

    def _wait_ack(self, timeout: float) -> Any:
        if not self._acks_in.poll(timeout):
            state = "alive" if self._proc.is_alive() else f"exit code {self._proc.exitcode}"
            msg = (f"peer {self._proc.name!r} (pid {self._proc.pid}, {state}) sent no ack "
                   f"within {timeout}s")
            raise TimeoutError(msg)
        return self._acks_in.recv()

    def _send_stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _release(self, clean: bool) -> None:
        """Close this side's channels (*clean*: the peer exited on its own)."""

    def close(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Stop the peer process and join it: stop message, then SIGTERM, then SIGKILL.

        Idempotent. Blocks at most about ``3 * timeout`` seconds.
        """
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        try:
            if proc.is_alive():
                self._send_stop()
        except (OSError, ValueError, TimeoutError, _queue.Full) as exc:
            logger.warning("could not ask peer %s (pid %s) to stop: %s", proc.name, proc.pid,
                           exc)
        proc.join(timeout)
        clean = proc.exitcode == 0
        for escalate in (proc.terminate, proc.kill):
            if proc.exitcode is not None:
                break
            escalate()
            proc.join(timeout)
        self._release(clean)
        self._acks_in.close()
        proc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            logger.warning("peer %s was never closed", self._proc.name)


def _queue_sink_main(queue: Any, acks: Any) -> None:
    _die_with_parent()
    count = 0
    get = queue.get
    while True:
        message = get()
        if type(message) is str:
            if message == STOP:
                break
            acks.send(count)
            count = 0
        else:
            count += 1
    acks.close()


class QueueSink(_Peer):
    """A process that counts what arrives on a ``multiprocessing.Queue``.

    Args:
        ctx: multiprocessing context (default: forkserver).
    """

    def __init__(self, *, ctx: Any = None) -> None:
        ctx = ctx if ctx is not None else _default_context()
        self._queue = ctx.Queue()
        super().__init__(_queue_sink_main, (self._queue,), "bench:mp.Queue-sink", ctx)

    def send_small(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Put *n* small tuples ``("small", i, 1.5)``, then wait until all were received.

        Blocks until the peer acknowledges the batch.

        Args:
            n: messages to send.
            timeout: seconds to wait for the acknowledgement.

        Returns:
            How many messages the peer counted since the previous batch (*n* when
            nothing was lost).

        Raises:
            TimeoutError: no acknowledgement within *timeout*.
        """
        put = self._queue.put
        for i in range(n):
            put(("small", i, 1.5))
        put(SYNC)
        return int(self._wait_ack(timeout))

    def _send_stop(self) -> None:
        self._queue.put(STOP)

    def _release(self, clean: bool) -> None:
        self._queue.close()
        if clean:
            self._queue.join_thread()
        else:  # nobody reads the pipe any more: the feeder thread must not wait for it
            self._queue.cancel_join_thread()


def faster_fifo_missing() -> str | None:
    """Return why the faster_fifo peer cannot run (not installed), or None if it can."""
    try:
        importlib.import_module("faster_fifo")
    except ImportError as exc:
        return f"faster_fifo is not installed (pip install faster-fifo): {exc}"
    return None


def _faster_fifo_sink_main(queue: Any, acks: Any) -> None:
    _die_with_parent()
    count = 0
    get_many = queue.get_many
    running = True
    while running:
        try:
            batch = get_many(timeout=DEFAULT_TIMEOUT)
        except _queue.Empty:
            continue
        for message in batch:
            if type(message) is str:
                if message == STOP:
                    running = False
                    break
                acks.send(count)
                count = 0
            else:
                count += 1
    acks.close()


class FasterFifoSink(_Peer):
    """A process that counts what arrives on a ``faster_fifo.Queue`` (read with get_many).

    Args:
        ctx: multiprocessing context (default: forkserver).
        max_size_bytes: the queue's circular buffer size.

    Raises:
        ModuleNotFoundError: faster_fifo is not installed (see :func:`faster_fifo_missing`).
    """

    def __init__(self, *, ctx: Any = None, max_size_bytes: int = FASTER_FIFO_BYTES) -> None:
        reason = faster_fifo_missing()
        if reason is not None:
            raise ModuleNotFoundError(reason)
        faster_fifo = importlib.import_module("faster_fifo")
        self._queue = faster_fifo.Queue(max_size_bytes=max_size_bytes)
        super().__init__(_faster_fifo_sink_main, (self._queue,), "bench:faster_fifo-sink",
                         ctx)

    def send_small(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Put *n* small tuples ``("small", i, 1.5)``, then wait until all were received.

        Blocks while the queue's buffer is full, and until the peer acknowledges.

        Args:
            n: messages to send.
            timeout: seconds to wait for buffer space (per message) and for the ack.

        Returns:
            How many messages the peer counted since the previous batch.

        Raises:
            TimeoutError: no acknowledgement within *timeout*.
            queue.Full: the buffer stayed full for *timeout* seconds.
        """
        put = self._queue.put
        for i in range(n):
            put(("small", i, 1.5), True, timeout)
        put(SYNC, True, timeout)
        return int(self._wait_ack(timeout))

    def _send_stop(self) -> None:
        self._queue.put(STOP, True, JOIN_TIMEOUT)

    def _release(self, clean: bool) -> None:
        self._queue.close()


def _pipe_echo_main(conn: Any, acks: Any) -> None:
    _die_with_parent()
    recv, send = conn.recv, conn.send
    with contextlib.suppress(EOFError):
        while True:
            message = recv()
            if type(message) is str and message == STOP:
                break
            send(message)
    conn.close()
    acks.close()


def _pipe_sink_main(conn: Any, acks: Any) -> None:
    _die_with_parent()
    recv, send = conn.recv, conn.send
    with contextlib.suppress(EOFError):
        while True:
            message = recv()
            if type(message) is str and message == STOP:
                break
            send(int(getattr(message, "nbytes", 0)))
    conn.close()
    acks.close()


class _PipePeer(_Peer):
    def __init__(self, target: Any, name: str, ctx: Any) -> None:
        ctx = ctx if ctx is not None else _default_context()
        self._conn, theirs = ctx.Pipe()
        try:
            super().__init__(target, (theirs,), name, ctx)
        finally:
            theirs.close()

    def _ask(self, obj: Any, timeout: float) -> Any:
        self._conn.send(obj)
        if not self._conn.poll(timeout):
            msg = f"peer {self._proc.name!r} (pid {self._proc.pid}) did not reply in {timeout}s"
            raise TimeoutError(msg)
        return self._conn.recv()

    def _send_stop(self) -> None:
        self._conn.send(STOP)

    def _release(self, clean: bool) -> None:
        self._conn.close()


class PipeEcho(_PipePeer):
    """A process that sends back whatever arrives on a ``multiprocessing.Pipe``.

    Args:
        ctx: multiprocessing context (default: forkserver).
    """

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(_pipe_echo_main, "bench:Pipe-echo", ctx)

    def echo(self, obj: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send *obj* and return what comes back; blocks up to *timeout* seconds."""
        return self._ask(obj, timeout)

    def round_trips(self, n: int) -> list[int]:
        """Echo the integers ``0 .. n-1`` one at a time; return each round trip in ns.

        Blocks on each reply (``recv`` without a poll first, the fastest way; a peer
        that dies raises ``EOFError``).

        Raises:
            EOFError: the peer process is gone.
            RuntimeError: an echo came back wrong.
        """
        send, recv, clock = self._conn.send, self._conn.recv, time.perf_counter_ns
        times = []
        for i in range(n):
            start = clock()
            send(i)
            back = recv()
            times.append(clock() - start)
            if back != i:
                msg = f"Pipe echo returned {back!r} for {i!r}"
                raise RuntimeError(msg)
        return times


class PipeSink(_PipePeer):
    """A process that replies with ``obj.nbytes`` to each object sent on a Pipe.

    ``Connection.send`` pickles the object in band: an 8 MiB numpy array is copied into
    the pickle, written through the pipe in chunks, and copied again when unpickled.

    Args:
        ctx: multiprocessing context (default: forkserver).
    """

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(_pipe_sink_main, "bench:Pipe-sink", ctx)

    def transfer(self, obj: Any, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Send *obj* and wait for the peer's reply: its ``nbytes`` (0 if it has none).

        Raises:
            TimeoutError: no reply within *timeout* seconds.
        """
        return int(self._ask(obj, timeout))

