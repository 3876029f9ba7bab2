"""joblib backend ``"actorq"``: ``Parallel(n_jobs=...)`` and scikit-learn's ``n_jobs`` on
actorq (``pip install 'actorq[joblib]'``).

::

    from actorq.integrations import joblib as aq_joblib
    aq_joblib.register()
    with joblib.parallel_config(backend="actorq", n_jobs=4):
        cross_val_score(model, X, y, cv=5)

Batches of tasks run on an ``actorq.Executor`` (one per worker count, kept for the
next ``Parallel`` call and shut down at exit): a worker killed mid-batch is restarted
and its batch retried, instead of the whole ``Parallel`` call failing.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from joblib import register_parallel_backend  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
)

import actorq
from actorq._executor.executor import POOL_OPTIONS

_executors: dict[int, actorq.Executor] = {}
_lock = threading.Lock()


def _executor(n_jobs: int, options: dict[str, Any]) -> actorq.Executor:
    with _lock:
        ex = _executors.get(n_jobs)
        if ex is None or ex._shutdown:
            ex = _executors[n_jobs] = actorq.Executor(n_jobs, **options)
        return ex


@atexit.register
def shutdown() -> None:
    """Shut down the executors the backend started (also run at interpreter exit)."""
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
    for ex in executors:
        ex.shutdown(wait=True)


class ActorqBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` on an ``actorq.Executor``.

    ``backend_kwargs`` (from ``parallel_config(backend="actorq", ...)`` or
    ``register(**options)``) go to ``actorq.Executor`` (``retry=``, ``circuit=``, ...).
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = 1

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self._workers: actorq.Executor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many workers *n_jobs* means (-1: every core, -2: all but one, ...)."""
        if n_jobs == 0:
            msg = "n_jobs == 0 in Parallel has no meaning"
            raise ValueError(msg)
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        """Start (or reuse) the executor for this ``Parallel`` call."""
        n = self.effective_n_jobs(n_jobs)
        options = {k: v for k, v in {**self.backend_kwargs, **backend_kwargs}.items()
                   if k in POOL_OPTIONS}  # joblib's memmapping options mean nothing here
        self._workers = _executor(n, options)
        self.parallel = parallel
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Run one batch on the executor; *callback* fires when it is done."""
        assert self._workers is not None
        future = self._workers.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's result (or its exception, raised)."""
        return out.result()

    def terminate(self) -> None:
        """The ``Parallel`` call is over: keep the workers for the next one."""
        self._workers = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: nothing to tear down (unfinished batches are dropped by joblib)."""


def register(**options: Any) -> None:
    """Register the joblib backend ``"actorq"`` (*options* go to ``actorq.Executor``)."""
    register_parallel_backend("actorq", lambda **kw: ActorqBackend(**{**options, **kw}))
