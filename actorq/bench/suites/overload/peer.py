"""The ``multiprocessing.Queue`` peer: a consumer process and producer processes, started
with forkserver (each imports this package again: its top-level imports stay light)."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import time
from collections.abc import Sequence
from typing import Any

from actorq.bench.cpuwork import burn
from actorq.bench.suites.overload.params import JOIN_TIMEOUT, REPLY_TIMEOUT
from actorq.bench.suites.overload.record import READY, SENT, Recorder, paced_send, wait_for

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Best effort: have the kernel SIGKILL this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def queue_consumer_main(queue: Any, path: str, cost: float, discard: Any) -> None:
    """The mp.Queue consumer: work on each message until *discard* is set, then only
    count (and check) what arrives, until ``None``."""
    _die_with_parent()
    rec = Recorder(path)
    rec.touch()
    get = queue.get
    is_set = discard.is_set
    working = True
    while (message := get()) is not None:
        producer, seq, stamp = message
        if working and not is_set():
            burn(cost)
            rec.record(producer, seq, stamp)
        else:  # after the overload: drain the backlog without the work, still checking it
            working = False
            rec.record(producer, seq, stamp, keep=False)
    rec.close()


def queue_producer_main(queue: Any, path: str, producer: int, rate: float, duration: float,
                        go: Any) -> None:
    """An mp.Queue producer process: ``put`` at *rate* (it never waits), then exit
    (which waits until its feeder thread has written its backlog to the pipe)."""
    _die_with_parent()
    rec = Recorder(path)
    if not go.wait(REPLY_TIMEOUT):
        return
    put = queue.put
    out = paced_send(lambda seq: put((producer, seq, time.time())), rate, duration)
    rec.slots[SENT + producer] = int(out["sent"])
    rec.close()


class QueuePeer:
    """A consumer process reading a ``multiprocessing.Queue`` (forkserver), and the
    producer processes that feed it; ``close()`` drains and joins them all."""

    def __init__(self, rec: Recorder, cost: float) -> None:
        self.ctx: Any = multiprocessing.get_context("forkserver")
        self.rec = rec
        self.queue = self.ctx.Queue()
        self.discard = self.ctx.Event()
        self.go = self.ctx.Event()
        self.producers: list[Any] = []
        self.consumer = self.ctx.Process(target=queue_consumer_main,
                                         args=(self.queue, rec.path, cost, self.discard),
                                         name="bench:overload-mpq-consumer", daemon=True)
        self.consumer.start()
        self._closed = False
        wait_for(lambda: rec.slots[READY] == 1, REPLY_TIMEOUT, "mp.Queue consumer start")

    def put(self, message: Any) -> None:
        self.queue.put(message)

    def start_producers(self, ids: Sequence[int], rate: float, duration: float) -> None:
        """Start producer processes; they wait for ``go``."""
        for producer in ids:
            proc = self.ctx.Process(target=queue_producer_main,
                                    args=(self.queue, self.rec.path, producer, rate, duration,
                                          self.go),
                                    name=f"bench:overload-mpq-producer-{producer}",
                                    daemon=True)
            proc.start()
            self.producers.append(proc)

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.producers]

    def drain(self, timeout: float) -> float:
        """Stop the work, let the producers exit (their backlogs flushed into the pipe),
        then drain everything; return the seconds it took."""
        start = time.monotonic()
        self.discard.set()
        for proc in self.producers:
            proc.join(max(0.1, timeout - (time.monotonic() - start)))
        self.queue.put(None)
        self.consumer.join(max(0.1, timeout - (time.monotonic() - start)))
        if self.consumer.exitcode is None:
            msg = f"mp.Queue consumer still draining after {timeout:g} s"
            raise TimeoutError(msg)
        return time.monotonic() - start

    def close(self) -> None:
        """Join (then terminate, then kill) every process; close the queue. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.go.set()  # producers still waiting for the start would wait REPLY_TIMEOUT
        self.discard.set()
        procs = [*self.producers, self.consumer]
        if self.consumer.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                self.queue.put(None)
        clean = True
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            for escalate in (proc.terminate, proc.kill):
                if proc.exitcode is not None:
                    break
                clean = False
                escalate()
                proc.join(JOIN_TIMEOUT)
        if not clean:  # nobody reads the pipe any more: our feeder must not wait for it
            self.queue.cancel_join_thread()
        self.queue.close()
        if clean:
            self.queue.join_thread()
        for proc in procs:
            proc.close()

    def __enter__(self) -> QueuePeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
