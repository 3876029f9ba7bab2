"""One timer thread per process for the routing layer: retries after their backoff,
call deadlines, pool resizing. Callbacks of replies must never wait, so anything to be
done *later* (or anything slow) is handed to this thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("actorq")


class Scheduler:
    """Runs ``fn()`` once *delay* seconds have passed, on its own daemon thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run *fn* on the scheduler thread after *delay* seconds (0: as soon as it can)."""
        when = time.monotonic() + max(0.0, delay)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            if self._thread is None:  # first use in this process
                self._thread = threading.Thread(target=self._run, name="actorq-routing",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is fn:
                self._cond.notify()

    def _after_fork(self) -> None:
        """In a forked child: the thread did not follow, and its lock may be held."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None

    def _run(self) -> None:
        while True:
            cond = self._cond
            with cond:
                while True:
                    heap = self._heap
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        _when, _seq, fn = heapq.heappop(heap)
                        break
                    cond.wait(heap[0][0] - now if heap else None)
            try:
                fn()
            except Exception:
                logger.exception("a scheduled routing task raised")


SCHEDULER = Scheduler()
os.register_at_fork(after_in_child=SCHEDULER._after_fork)
