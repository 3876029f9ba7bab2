"""The bound on memory held by large results: ``system.run(g, max_memory=...)``.

Large results live in shared memory until no pending dependent (nor the user) needs them.
The scheduler cannot know a result's size before its task returns, so it predicts it:
per function, the largest result measured so far (a function not measured yet: the
largest result of any function). A task is dispatched only if the bytes held now, plus
the predicted results of the tasks in flight, plus its own predicted result, stay at or
under the cap; otherwise it is *parked* (held back, in its priority order) and ready tasks
behind it are considered instead. So, at the cap::

    consumers whose results are small (a reduction, a checksum)   always dispatched: they
                                                                   only free memory
    tasks with a large result (producers, transforms)              wait for room

and when nothing runs and everything ready would go over the cap (the results that must
be kept already fill it, or one result is larger than the cap), one task runs at a time,
a task that frees memory first: the run goes on, slowly, never deadlocks. Held bytes thus
never exceed the cap except (a) by that one task's result, or (b) when a result is larger
than predicted (a function's first results, before one has been measured).

The gate costs nothing until the first large result: before it, tasks are not checked.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from typing import Any

from actorq._errors import GraphError
from actorq._shared import SHM_DIR

Entry = tuple[int, float, int]  # a ready-heap entry: (-priority, -rank, tid)


def default_max_memory() -> int:
    """Half the memory available now, and at most 90 % of the free space of /dev/shm."""
    available = _mem_available()
    try:
        st = os.statvfs(SHM_DIR)
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = available
    return max(1, min(available // 2, shm_free * 9 // 10))


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_max_memory(value: Any) -> int:
    """*value* as a cap in bytes (None: :func:`default_max_memory`); GraphError if bad."""
    if value is None:
        return default_max_memory()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = (f"max_memory must be a positive number of bytes (int), not {value!r}; "
               "None picks half the available memory")
        raise GraphError(msg)
    return value


class MemoryGate:
    """Held bytes, predictions and parked tasks of one run (see the module docstring)."""

    __slots__ = ("alone", "cap", "forced", "held", "held_back", "inflight", "largest", "on",
                 "out", "parked", "peak", "reserved")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0  # bytes of large results alive now
        self.peak = 0
        self.on = False  # set by the first large result: from then on, dispatch checks
        self.out: dict[bytes, int] = {}  # function digest -> largest result measured
        self.largest = 0
        self.inflight = 0  # predicted result bytes of the tasks in flight
        self.reserved: dict[int, int] = {}  # tid -> its prediction, while in flight
        self.parked: list[Entry] = []  # a heap, in ready order
        self.held_back = 0  # times a task was parked
        self.forced = 0  # tasks run alone over the cap
        self.alone = -1  # the task chosen by pick_alone, admitted over the cap

    # -- accounting ---------------------------------------------------------------------

    def start(self, in_flight: list[int]) -> None:
        """The first large result came: check dispatch from now on, and reserve room for
        the tasks already in flight (predicted as large as that result)."""
        self.on = True
        for tid in in_flight:
            self.reserved[tid] = self.largest
        self.inflight += self.largest * len(in_flight)

    def add(self, nbytes: int) -> None:
        """A large result of *nbytes* is now held."""
        self.held += nbytes
        if self.held > self.peak:
            self.peak = self.held

    def sub(self, nbytes: int) -> None:
        """A large result was freed."""
        self.held -= nbytes

    def measure(self, digest: bytes, nbytes: int) -> None:
        """A task of function *digest* returned a result of *nbytes* (0: small)."""
        if nbytes > self.out.get(digest, -1):
            self.out[digest] = nbytes
            if nbytes > self.largest:
                self.largest = nbytes

    def release(self, tids: list[int]) -> None:
        """The tasks *tids* came back (or were lost): drop their reservations."""
        reserved = self.reserved
        for tid in tids:
            self.inflight -= reserved.pop(tid, 0)

    # -- dispatch -----------------------------------------------------------------------

    def admit(self, tid: int, digest: bytes) -> bool:
        """May task *tid* (of function *digest*) be sent now? Reserves its prediction."""
        expect = self.out.get(digest, self.largest)
        if expect and self.held + self.inflight + expect > self.cap:
            if tid != self.alone:
                return False  # wait for room (running tasks free some, or finish)
            self.forced += 1  # nothing runs: one task over the cap, never a deadlock
        self.alone = -1
        if expect:
            self.reserved[tid] = expect
            self.inflight += expect
        return True

    def park(self, entry: Entry) -> None:
        """Hold *entry* back until there is room."""
        heapq.heappush(self.parked, entry)
        self.held_back += 1

    def unpark(self, ready: list[Entry], digest_of: Callable[[int], bytes]) -> None:
        """Move parked tasks back to *ready*, in order, as far as the room now allows."""
        parked = self.parked
        room = self.cap - self.held - self.inflight
        while parked:
            expect = self.out.get(digest_of(parked[0][2]), self.largest)
            if expect > room:
                break
            room -= expect
            heapq.heappush(ready, heapq.heappop(parked))

    def pick_alone(self, ready: list[Entry], frees: Callable[[int], int]) -> None:
        """Nothing runs and nothing fits: move the parked task to run alone to *ready*.

        A task that frees memory (the last pending consumer of a large result) comes
        first, then the parked order.
        """
        parked = self.parked
        best = max(range(len(parked)), key=lambda k: (frees(parked[k][2]) > 0,
                                                      [-x for x in parked[k]]))
        entry = parked[best]
        parked[best] = parked[-1]
        parked.pop()
        heapq.heapify(parked)
        heapq.heappush(ready, entry)
        self.alone = entry[2]
