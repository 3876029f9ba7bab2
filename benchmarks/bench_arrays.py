"""8 MiB numpy arrays: actorq against a Pipe, and nothing else (the messaging suite's case).

    python benchmarks/bench_arrays.py [--per-repeat 10] [--repeats 7] [--steps]

The same actor, array and peer as ``actorq bench messaging``'s "8 MiB numpy array"
(``Sink.nbytes`` against ``PipeSink``: ``Connection.send`` of the array, pickled in
band), measured alone so that it takes seconds: ``--per-repeat`` sequential transfers
per repeat, the two sides interleaved repeat by repeat (every other round in reverse
order), and the ratio of each repeat pair. Prints ms per array on each side (each
repeat's mean, sorted; and the median of every single transfer), the ratio's median and
range, and what explains the spread (issue 15):

- the floor: the one copy actorq makes, an 8 MiB copy into an already mapped and
  faulted shared-memory buffer, timed in this process between the repeats;
- minor page faults per transfer of the caller and of the receiving process (the actor,
  the Pipe's peer), from ``/proc/<pid>/stat``: a transfer that maps or touches fresh
  memory shows as ~2,048 faults per 8 MiB.

With ``--steps``, a third side interleaved with the others splits actorq's time at the
copy's start and end (the caller's ``oob.copy_into``, wrapped while this side runs; a
copy made in parts counts from the first's start to the last's end) and
at its handler's first line (``time.perf_counter`` is CLOCK_MONOTONIC, the same clock in
every process): the call to the copy's start (the call path, the pickle, the block),
the copy, the copy's end to the handler's start (the actor's wake-up and decoding, or
what is left of them when it woke during the copy), and from there to the reply in the
caller's hands (the handler, the reply, the caller's wait). Its actor is a ``Stamper``,
a ``Sink`` whose handler returns that timestamp.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

import actorq
from actorq._transport import oob
from actorq.bench.peers import PipeSink
from actorq.bench.suites import messaging


def minor_faults(pid: int) -> int:
    """Minor page faults of process *pid* so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


class Side:
    """One side of the comparison: per-transfer times and page faults."""

    def __init__(self, name: str, transfer: Callable[[], object], pids: list[int]) -> None:
        self.name = name
        self.transfer = transfer
        self.pids = pids  # [the caller, the receiving process]
        self.means: list[float] = []  # ms per array, one per repeat
        self.each: list[float] = []  # ms, every transfer
        self.faults = [0] * len(pids)
        self.count = 0

    def repeat(self, k: int) -> None:
        before = [minor_faults(pid) for pid in self.pids]
        clock = time.perf_counter
        start = clock()
        for _ in range(k):
            t = clock()
            self.transfer()
            self.each.append((clock() - t) * 1e3)
        self.means.append((clock() - start) / k * 1e3)
        for i, pid in enumerate(self.pids):
            self.faults[i] += minor_faults(pid) - before[i]
        self.count += k

    def report(self) -> str:
        each = sorted(self.each)
        faults = ", ".join(f"{f / self.count:.2f}" for f in self.faults)
        return (f"{self.name:6s} ms/array: {' '.join(f'{x:.2f}' for x in sorted(self.means))}"
                f"\n       each transfer: p10 {each[len(each) // 10]:.2f}, median "
                f"{statistics.median(each):.2f}, p90 {each[len(each) * 9 // 10]:.2f} ms; "
                f"minor faults per transfer (caller, receiver): {faults}")


class Stamper(messaging.Sink):
    """The suite's sink, with a handler that says when it started."""

    def stamp(self, arr: np.ndarray) -> float:
        started = time.perf_counter()
        return started if float(arr[-1]) == arr.size - 1 else -1.0  # the end is there


class Steps:
    """actorq's transfer split at the copy's start and end and the handler's start."""

    def __init__(self, ref: actorq.ActorRef[Stamper], arr: np.ndarray) -> None:
        self.ref, self.arr = ref, arr
        self.splits: dict[str, list[float]] = {
            "call -> copy started": [], "the copy": [],
            "copy ended -> handler started": [], "handler started -> reply back": []}

    def repeat(self, k: int) -> None:
        copy, clock = oob.copy_into, time.perf_counter
        stamps: list[float] = []

        def stamped(dst: object, offset: int, src: object) -> int:
            stamps.append(clock())
            try:
                return copy(dst, offset, src)
            finally:
                stamps.append(clock())

        oob.copy_into = stamped
        try:
            for _ in range(k):
                stamps.clear()
                start = clock()
                started = self.ref.stamp(self.arr).result(timeout=messaging.REPLY_TIMEOUT)
                end = clock()
                if started < 0:
                    msg = "the actor did not see the array's last element"
                    raise RuntimeError(msg)
                if not stamps:
                    msg = "the array was not copied out of band"
                    raise RuntimeError(msg)
                # the copy: from its first part's start to its last part's end
                for xs, (a, b) in zip(self.splits.values(), [
                        (start, stamps[0]), (stamps[0], stamps[-1]), (stamps[-1], started),
                        (started, end)], strict=True):
                    xs.append((b - a) * 1e3)
        finally:
            oob.copy_into = copy

    def report(self) -> str:
        lines = []
        for name, xs in self.splits.items():
            xs = sorted(xs)
            lines.append(f"{name}: p10 {xs[len(xs) // 10]:.3f}, median "
                         f"{statistics.median(xs):.3f}, p90 {xs[len(xs) * 9 // 10]:.3f} ms")
        return "steps  " + "\n       ".join(lines)


def copy_floor(dst: np.ndarray, arr: np.ndarray, k: int) -> list[float]:
    """ms per copy of *arr* into *dst* (mapped shared memory): actorq's one copy."""
    times = []
    for _ in range(k):
        t = time.perf_counter()
        messaging.bare_copies(dst, arr, 1)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-repeat", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", action="store_true",
                        help="also split actorq's time at the handler's start")
    args = parser.parse_args()
    k = args.per_repeat
    arr = np.arange(messaging.ARRAY_BYTES // 8, dtype=np.float64)
    me = os.getpid()
    floor: list[float] = []
    dst = messaging.copy_target(arr)  # faulted in, as actorq's pooled block is
    with actorq.ActorSystem() as system:
        ref = system.spawn(Stamper if args.steps else messaging.Sink, name="arrays")
        actor_pid = ref.pid().result(timeout=messaging.REPLY_TIMEOUT)
        with PipeSink() as pipe:
            messaging.pipe_arrays(pipe, arr, 2)  # warm-up: blocks, mappings, the peer
            messaging.actorq_arrays(ref, arr, 2)
            ours = Side("actorq", lambda: messaging.actorq_arrays(ref, arr, 1),
                        [me, actor_pid])
            theirs = Side("Pipe", lambda: messaging.pipe_arrays(pipe, arr, 1),
                          [me, pipe._proc.pid])
            sides: list[Side | Steps] = [ours, theirs]
            if args.steps:
                sides.append(Steps(ref, arr))
            for i in range(args.repeats):
                for side in sides if i % 2 == 0 else sides[::-1]:
                    side.repeat(k)
                floor.extend(copy_floor(dst, arr, 3))
    ratios = sorted(p / a for a, p in zip(ours.means, theirs.means, strict=True))
    for side in sides:
        print(side.report())
    print(f"one 8 MiB copy into mapped shared memory: median {statistics.median(floor):.2f} "
          f"ms (min {min(floor):.2f}, max {max(floor):.2f})")
    print(f"Pipe / actorq: median {statistics.median(ratios):.1f}x "
          f"(range {ratios[0]:.1f} .. {ratios[-1]:.1f}), {args.repeats} repeat pairs")


if __name__ == "__main__":
    main()
