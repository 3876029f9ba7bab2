"""The floor of an out-of-band send: ways to copy 8 MiB into faulted-in shared memory.

    python benchmarks/bench_copy.py [--rounds 40] [--mib 8]

Issue 15 asks whether one core saturates this machine's memory bandwidth (Ray copies
large objects into its store with several threads, ``memcopy_threads``; numpy's
``copyto`` releases the GIL for large copies). Compares, interleaved round by round
(every other round in reverse order), three copies each per round:

- one thread: ``ctypes.memmove``, ``numpy.copyto``, a ``memoryview`` slice assignment
  (what ``oob.BlockPool.put`` does);
- two and three threads, each copying its part with ``ctypes.memmove`` (which
  releases the GIL), the helpers persistent and woken by an event, as a copy thread
  built into actorq would be;
- two threads sharing 1 MiB chunks: the caller copies chunks from a shared counter
  and a woken helper takes chunks from it too if it gets a CPU in time, so that a
  helper that is not scheduled costs a wake-up, not a wait;
- actorq's ``copy_into`` (streaming stores) with one thread and with two: the last
  design, built into actorq in C (128 KiB chunks, the helper a pthread on a futex).

Prints GB/s: the median and the p10 .. p90 of all copies. On a loaded machine the
threads rarely run at the same time; two more lines keep apart the shared-chunks copies
where the helper did take 3/8 or more, and the two-thread copies whose halves
overlapped in time by at least 90 % (each half timed inside its thread): what two
threads give when they really do run together.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

clock = time.perf_counter


class Helper:
    """A persistent copy thread: copies (dst, src, n) when woken; times its copy."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.done = threading.Event()
        self.job = (0, 0, 0)
        self.span = (0.0, 0.0)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            dst, src, n = self.job
            start = clock()
            ctypes.memmove(dst, src, n)
            self.span = (start, clock())
            self.done.set()

    def start(self, dst: int, src: int, n: int) -> None:
        self.job = (dst, src, n)
        self.done.clear()
        self.go.set()


class Sharer:
    """A helper thread that takes chunks of the current copy while the caller copies."""

    CHUNK = 1 << 20

    def __init__(self) -> None:
        self.go = threading.Event()
        # (dst, src, n, chunk offsets left, chunks done by [caller, helper]); read once
        # by the helper, so that it never mixes two copies (next() on it: the GIL)
        self.work: tuple[int, int, int, Iterator[int], list[int]] = (0, 0, 0, iter(()), [0, 0])
        self.helped: list[float] = []  # the helper's share of each copy
        threading.Thread(target=self.run, daemon=True).start()

    def take(self, who: int) -> None:
        dst, src, n, offsets, done = self.work
        for offset in offsets:
            ctypes.memmove(dst + offset, src + offset, min(self.CHUNK, n - offset))
            done[who] += 1

    def run(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            self.take(1)

    def copy(self, dst: int, src: int, n: int) -> None:
        done = [0, 0]
        self.work = (dst, src, n, iter(range(0, n, self.CHUNK)), done)
        self.go.set()
        self.take(0)
        total = -(-n // self.CHUNK)
        while done[0] + done[1] < total:  # the helper's last chunk, if it took one
            time.sleep(0)
        self.helped.append(done[1] / total)


def cases(nbytes: int) -> tuple[dict[str, Callable[[], object]], list[float],
                                Callable[[], bool], list[float]]:
    """The copies to compare, the overlapped two-thread times, a check of the data, and
    the helper's share of each shared-chunks copy."""
    src = np.arange(nbytes // 8, dtype=np.float64)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    dst = np.frombuffer(mm, dtype=np.uint8)
    dst[:] = 1  # faulted in, as a pooled block is
    dview, sview = memoryview(mm), memoryview(src).cast("B")
    daddr, saddr = ctypes.addressof(ctypes.c_char.from_buffer(mm)), src.ctypes.data
    helpers = [Helper(), Helper()]
    overlapped: list[float] = []

    def parts(k: int) -> None:
        step = nbytes // k
        for i, helper in enumerate(helpers[:k - 1], 1):
            helper.start(daddr + i * step, saddr + i * step,
                         nbytes - i * step if i == k - 1 else step)
        start = clock()
        ctypes.memmove(daddr, saddr, step)
        end = clock()
        for helper in helpers[:k - 1]:
            helper.done.wait()
        if k == 2:
            other = helpers[0].span
            if min(end, other[1]) - max(start, other[0]) >= 0.9 * max(
                    end - start, other[1] - other[0]):
                overlapped.append(max(end, other[1]) - min(start, other[0]))

    sharer = Sharer()

    def shared() -> None:
        sharer.copy(daddr, saddr, nbytes)

    def check() -> bool:
        good = bool((dst.view(np.float64) == src).all())
        dst[:] = 1  # the next copy's bytes must be its own
        return good

    shares = sharer.helped
    return {
        "1 thread, ctypes.memmove": lambda: ctypes.memmove(daddr, saddr, nbytes),
        "1 thread, numpy.copyto": lambda: np.copyto(dst, sview),
        "1 thread, memoryview slice": lambda: dview.__setitem__(slice(None), sview),
        "2 threads, halves": lambda: parts(2),
        "3 threads, thirds": lambda: parts(3),
        "2 threads, shared chunks": shared,
        **actorq_copies(dst, sview),
    }, overlapped, check, shares


def actorq_copies(dst: np.ndarray, src: memoryview) -> dict[str, Callable[[], object]]:
    """actorq's own ``copy_into`` (streaming stores), alone and sharing its chunks with
    its helper thread (``_copy.c``); none without the C helpers."""
    from actorq._native import _copy

    if _copy is None:
        return {}

    def with_threads(threads: int) -> Callable[[], object]:
        def copy() -> object:
            _copy.set_copy_threads(threads)
            return _copy.copy_into(dst, 0, src)
        return copy

    return {"actorq copy_into, 1 thread": with_threads(1),
            "actorq copy_into, 2 threads": with_threads(2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--mib", type=int, default=8)
    args = parser.parse_args()
    nbytes = args.mib << 20
    copies, overlapped, check, shares = cases(nbytes)
    times: dict[str, list[float]] = {name: [] for name in copies}
    for name, copy in copies.items():
        copy()
        if not check():
            msg = f"{name} did not copy the bytes"
            raise RuntimeError(msg)
    loads = []
    for i in range(args.rounds):
        order = list(copies.items())
        for name, copy in order if i % 2 == 0 else order[::-1]:
            for _ in range(3):
                start = clock()
                copy()
                times[name].append(clock() - start)
        loads.append(os.getloadavg()[0])
    if not check():
        msg = "the copies did not copy"
        raise RuntimeError(msg)

    def gbs(seconds: float) -> float:
        return nbytes / seconds / 1e9

    print(f"{args.mib} MiB into faulted-in shared memory, {args.rounds} rounds x 3, "
          f"load {min(loads):.1f} .. {max(loads):.1f}; GB/s median (p10 .. p90)")
    for name, unsorted in times.items():
        each = sorted(unsorted)
        print(f"  {name:28s} {gbs(statistics.median(each)):5.2f} "
              f"({gbs(each[len(each) * 9 // 10]):.2f} .. {gbs(each[len(each) // 10]):.2f})")
    name = "2 threads, shared chunks"
    helped = sorted(t for t, share in zip(times[name], shares[-len(times[name]):],
                                          strict=True) if share >= 0.375)
    if helped:
        print(f"  {name}, the helper copying >= 3/8 ({len(helped)} of {len(times[name])}): "
              f"{gbs(statistics.median(helped)):.2f} (best {gbs(helped[0]):.2f})")
    if overlapped:
        overlapped.sort()
        print(f"  2 threads, halves overlapping >= 90 % ({len(overlapped)} of "
              f"{len(times['2 threads, halves'])}): {gbs(statistics.median(overlapped)):.2f} "
              f"(best {gbs(overlapped[0]):.2f})")
    else:
        print("  2 threads, halves: never ran at the same time")


if __name__ == "__main__":
    main()
