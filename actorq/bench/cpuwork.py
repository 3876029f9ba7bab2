"""CPU work of a known length for the benchmarks: ``spin(n)`` and its calibration.

A benchmark task of "5 ms of CPU" is ``spin(n)`` with the ``n`` that ``calibrate(0.005)``
returned: the same fixed work for actorq, for the bare processes it is compared with and
for every peer. ``n`` is found on this thread's CPU clock, not the wall clock (on a
loaded machine the wall clock also counts the time other processes had the core, and
the tasks would come out several times shorter than asked), and by timing ``spin(n)``
at the very ``n`` it returns: the loop's cost per iteration depends on ``n`` (past
``i = 2**15``, ``i * i`` takes a second 30-bit digit), so a count scaled from a longer
probe made tasks about 13 % shorter than asked (4.3 ms for 5). ``spin`` returns the CPU
seconds it took, so that a run reports what its tasks really cost (``cpu_per_task``):
CPU per iteration still varies with what else the machine runs (caches, the host).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

_thread_time = time.thread_time

SAMPLES = 9  # timings of spin(n) per calibration round; their median is taken
ROUNDS = 6  # calibration rounds at most (each moves n to the median's proportion)
SETTLED = 0.005  # a round that moves n by less than this fraction ends the calibration


def spin(n: int, *deps: Any) -> float:
    """Burn *n* iterations of a small integer loop; return this thread's CPU seconds.

    *deps* (the results of the tasks this one depends on) are only received."""
    t = _thread_time()
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return _thread_time() - t


def spin_many(n: int, count: int) -> float:
    """``spin(n)`` *count* times; return the CPU seconds they took in all."""
    return sum(spin(n) for _ in range(count))


def calibrate(seconds: float) -> int:
    """The ``n`` for which ``spin(n)`` takes *seconds* of this thread's CPU time.

    A first guess from a probe of at least 20 ms, then rounds of ``SAMPLES`` timings of
    ``spin(n)`` itself, each moving ``n`` in proportion to their median (the median
    ignores a sample that a preemption or a cache flush slowed), until a round moves it
    by less than ``SETTLED``. About ``0.15 s`` of CPU for *seconds* = 5 ms.
    """
    if not seconds > 0:
        msg = f"calibrate(seconds={seconds!r}): a positive number of seconds"
        raise ValueError(msg)
    n = 20_000
    while (dt := spin(n)) < 0.02:
        n *= 2
    n = max(1, round(n * seconds / dt))
    for _ in range(ROUNDS):
        took = statistics.median(spin(n) for _ in range(SAMPLES))
        new = max(1, round(n * seconds / took)) if took > 0 else n * 2
        if abs(new - n) <= SETTLED * n:
            return new
        n = new
    return n


def cpu_per_task(cpu_seconds: Iterable[float]) -> float:
    """The mean of the CPU seconds that ``spin`` tasks returned (0.0 for none)."""
    values = list(cpu_seconds)
    return sum(values) / len(values) if values else 0.0


def burn(seconds: float) -> None:
    """Spend *seconds* of this thread's CPU time (not wall time: preemption is not work)."""
    end = _thread_time() + seconds
    while _thread_time() < end:
        pass
