"""Task-pool peers: the same calls through multiprocessing.Pool, ProcessPoolExecutor, loky, Dask.

Each peer has one worker process (an actor is one process) and runs the module-level
function :func:`echo`, pickled by reference, the way each library's documentation shows
it: ``Pool.apply_async`` then ``AsyncResult.get``; ``Executor.submit`` then
``Future.result``; loky's ``get_reusable_executor``; Dask's ``Client.submit`` then
``Client.gather`` on a ``LocalCluster`` of one single-threaded worker process. Ray is
not included here: it is too large to install beside actorq on a test machine; Dask and
Ray are skipped with a note where they are not installed (:func:`missing`).

    peer = open_peer("mp.Pool")        # starts its worker
    peer.pipelined(1000, batches=2)    # 1000 outstanding, wait all; twice
    peer.close()                       # joins the worker (kill after a deadline)
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["PEERS", "TaskPeer", "echo", "missing", "open_peer"]

TIMEOUT = 60.0  # every wait is bounded: a wedged peer fails the run, never hangs it


def echo(x: Any) -> Any:
    """Return *x* (the task every peer runs)."""
    return x


def _check(name: str, got: list[Any], n: int) -> None:
    if got != list(range(n)):
        msg = f"{name}: pipelined echoes came back wrong"
        raise RuntimeError(msg)


class TaskPeer:
    """One worker process behind a task-pool library; see the module docstring."""

    def __init__(self, name: str, submit: Callable[[int], Any],
                 wait: Callable[[list[Any]], list[Any]], close: Callable[[], None]) -> None:
        self.name = name
        self._submit, self._wait, self._close = submit, wait, close
        self._closed = False

    def pipelined(self, n: int, batches: int) -> None:
        """Submit ``echo(0..n-1)``, wait for all; *batches* times. Blocks until done.

        Raises:
            RuntimeError: an echo came back wrong.
            TimeoutError: a result took longer than 60 s.
        """
        for _ in range(batches):
            pending = [self._submit(i) for i in range(n)]
            _check(self.name, self._wait(pending), n)

    def close(self) -> None:
        """Shut the pool down and join its worker; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()


def _mp_pool() -> TaskPeer:
    ctx = multiprocessing.get_context("forkserver")
    pool = ctx.Pool(processes=1)

    def close() -> None:
        pool.close()
        pool.join()

    return TaskPeer("mp.Pool apply_async", lambda i: pool.apply_async(echo, (i,)),
                    lambda rs: [r.get(TIMEOUT) for r in rs], close)


def _executor() -> TaskPeer:
    ex = ProcessPoolExecutor(max_workers=1,
                             mp_context=multiprocessing.get_context("forkserver"))
    return TaskPeer("ProcessPoolExecutor submit", lambda i: ex.submit(echo, i),
                    lambda fs: [f.result(TIMEOUT) for f in fs],
                    lambda: ex.shutdown(wait=True, cancel_futures=True))


def _loky() -> TaskPeer:
    from loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=1)
    return TaskPeer("loky submit", lambda i: ex.submit(echo, i),
                    lambda fs: [f.result(TIMEOUT) for f in fs],
                    lambda: ex.shutdown(wait=True, kill_workers=True))


def _dask() -> TaskPeer:
    distributed: Any = importlib.import_module("distributed")  # untyped; optional
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = distributed.Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return TaskPeer("Dask submit", lambda i: client.submit(echo, i, pure=False),
                    lambda fs: list(client.gather(fs)), close)


# name -> (short key for --set task_peers=..., module that must be importable, opener)
PEERS: dict[str, tuple[str, str | None, Callable[[], TaskPeer]]] = {
    "mp.Pool apply_async": ("pool", None, _mp_pool),
    "ProcessPoolExecutor submit": ("executor", None, _executor),
    "loky submit": ("loky", "loky", _loky),
    "Dask submit": ("dask", "distributed", _dask),
}


def missing(name: str) -> str | None:
    """Why the peer *name* cannot run here (its library is not installed), or None."""
    module = PEERS[name][1]
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module}): peer not measured"
    return None


def open_peer(name: str) -> TaskPeer:
    """Start the peer *name* (a key of :data:`PEERS`) and return it; close it after."""
    return PEERS[name][2]()
