"""One timer thread per process for the routing layer: retries after their backoff,
call deadlines, pool resizing. Callbacks of replies must never wait, so anything to be
done *later* (or anything slow) is handed to this thread.

The thread runs only while something is scheduled: it is started by the first
``call_later`` and ends once nothing is left (the next ``call_later`` starts it again).
A pool that stops takes its entries out with ``cancel(pool)``, so a stopped pool, or a
closed system, leaves no thread behind.
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

# (when, seq, fn, owner, run if cancelled)
_Entry = tuple[float, int, Callable[[], Any], object, bool]


class Scheduler:
    """Runs ``fn()`` once *delay* seconds have passed, on its own daemon thread."""

    def __init__(self) -> None:
        # An RLock, not a Lock: Condition probes a Lock for three methods it lacks and
        # catches an AttributeError for each, and _after_fork runs in every forked child.
        self._cond = threading.Condition(threading.RLock())
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], Any], owner: object = None,
                   *, run_if_cancelled: bool = False) -> None:
        """Run *fn* on the scheduler thread after *delay* seconds (0: as soon as it can).

        *owner* (a pool) can take its entries out with ``cancel``; those marked
        *run_if_cancelled* are then run at once by the canceller instead (a retry that
        must fail its call rather than leave it waiting)."""
        when = time.monotonic() + max(0.0, delay)
        entry = (when, next(self._seq), fn, owner, run_if_cancelled)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:  # nothing was scheduled: (re)start the thread
                self._thread = threading.Thread(target=self._run, name="actorq-routing",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()

    def cancel(self, owner: object) -> None:
        """Take *owner*'s entries out; run those marked ``run_if_cancelled`` now, here."""
        with self._cond:
            mine = [e for e in self._heap if e[3] is owner]
            if not mine:
                return
            self._heap = [e for e in self._heap if e[3] is not owner]
            heapq.heapify(self._heap)
            self._cond.notify()  # the thread may end now
        for entry in mine:
            if entry[4]:
                self._call(entry[2])

    def pending(self) -> int:
        """Entries scheduled and not run yet."""
        with self._cond:
            return len(self._heap)

    def _after_fork(self) -> None:
        """In a forked child: the thread did not follow, and its lock may be held."""
        self._cond = threading.Condition(threading.RLock())
        self._heap = []
        self._thread = None

    def _run(self) -> None:
        while True:
            cond = self._cond
            with cond:
                while True:
                    heap = self._heap
                    if not heap:
                        self._thread = None  # nothing left: end; call_later restarts us
                        return
                    now = time.monotonic()
                    if heap[0][0] <= now:
                        fn = heapq.heappop(heap)[2]
                        break
                    cond.wait(heap[0][0] - now)
            self._call(fn)

    @staticmethod
    def _call(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("a scheduled routing task raised")


SCHEDULER = Scheduler()
os.register_at_fork(after_in_child=SCHEDULER._after_fork)
