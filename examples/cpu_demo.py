"""CPU-bound work on every core: count (and sum) the primes below a limit with actors.

One actor per core (``os.cpu_count()``), each in its own process, so pure-Python work
runs in parallel with no GIL in the way. The range is cut into chunks that are dealt out
to the actors; every call is sent before any reply is awaited (pipelined), so each
actor's mailbox holds its whole share at once. The same chunks are then counted again in this
one process, to compare the wall times, and the total is checked against values known
independently (pi(x) tables, Project Euler #10) and against a sieve (another algorithm).

    python examples/cpu_demo.py                 # primes below 3,000,000, one actor per core
    python examples/cpu_demo.py --limit 10000000 --actors 4
    actorq demo                                 # the same, through the command line tool
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import actorq

# Known values, independent of any code here: pi(x) (the number of primes below x) and,
# for 2,000,000, the sum of those primes (Project Euler problem 10).
KNOWN_COUNTS = {
    1_000_000: 78_498,
    2_000_000: 148_933,
    3_000_000: 216_816,
    4_000_000: 283_146,
    5_000_000: 348_513,
    10_000_000: 664_579,
}
KNOWN_SUMS = {2_000_000: 142_913_828_922}


def small_primes(limit: int) -> list[int]:
    """Return the primes <= *limit* (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    flags = bytearray([1]) * (limit + 1)
    flags[0:2] = b"\0\0"
    for i in range(2, math.isqrt(limit) + 1):
        if flags[i]:
            flags[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
    return [i for i, is_prime in enumerate(flags) if is_prime]


def count_primes(lo: int, hi: int, odd_divisors: list[int]) -> tuple[int, int]:
    """Return (count, sum) of the primes in [lo, hi) by trial division: real CPU work.

    *odd_divisors* are the odd primes up to at least sqrt(hi - 1).
    """
    count = total = 0
    if lo <= 2 < hi:
        count, total = 1, 2
    for n in range(max(lo, 3) | 1, hi, 2):  # odd numbers only
        for p in odd_divisors:
            if p * p > n:
                count += 1
                total += n
                break
            if n % p == 0:
                break
        else:
            count += 1
            total += n
    return count, total


class PrimeCounter(actorq.Actor):
    """Counts the primes in the ranges it is given; remembers what it did."""

    def __init__(self, odd_divisors: list[int]) -> None:
        self.odd_divisors = odd_divisors
        self.chunks = 0

    def count(self, lo: int, hi: int) -> dict[str, float | int]:
        cpu = time.process_time()
        found, total = count_primes(lo, hi, self.odd_divisors)
        self.chunks += 1
        return {"lo": lo, "hi": hi, "count": found, "sum": total,
                "cpu": time.process_time() - cpu, "pid": os.getpid()}


def split(limit: int, parts: int) -> list[tuple[int, int]]:
    """Cut [0, limit) into *parts* contiguous chunks of (nearly) equal length."""
    bounds = [limit * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def deal(n_chunks: int, n_actors: int) -> list[int]:
    """Return the actor for each chunk, dealt in a snake order (0 1 1 0 0 1 ...).

    Chunk cost grows with n, so a plain round-robin would always give the last actor
    the largest chunk of each round; the snake evens the totals out.
    """
    order = []
    for i in range(n_chunks):
        rnd, pos = divmod(i, n_actors)
        order.append(pos if rnd % 2 == 0 else n_actors - 1 - pos)
    return order


def run_on_actors(chunks: list[tuple[int, int]], n_actors: int,
                  odd_divisors: list[int]) -> tuple[list[list[dict]], dict[str, float]]:
    """Count every chunk on *n_actors* actors; return the replies per actor and timings."""
    t0 = time.perf_counter()
    with actorq.ActorSystem() as system:
        actors = [system.spawn(PrimeCounter, odd_divisors, name=f"primes-{i}")
                  for i in range(n_actors)]
        for ref in actors:  # only to time the start-up apart from the work
            system.wait_ready(ref, timeout=60)
        t1 = time.perf_counter()
        # Send every call before waiting on any: each actor's mailbox holds its share.
        replies = [(who, actors[who].count(lo, hi))
                   for who, (lo, hi) in zip(deal(len(chunks), n_actors), chunks, strict=True)]
        per_actor: list[list[dict]] = [[] for _ in range(n_actors)]
        for who, reply in replies:
            per_actor[who].append(reply.result(timeout=120))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    return per_actor, {"start": t1 - t0, "work": t2 - t1, "total": t3 - t0}


def merge(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Add two (count, sum) pairs: one step of the reduction tree."""
    return a[0] + b[0], a[1] + b[1]


def run_as_graph(chunks: list[tuple[int, int]], n_workers: int,
                 odd_divisors: list[int]) -> tuple[int, int, float, actorq.GraphStats]:
    """The same chunks as a job graph: one task per chunk, then a tree of merges."""
    g = actorq.Graph()
    level = [g.task(count_primes, lo, hi, odd_divisors) for lo, hi in chunks]
    while len(level) > 1:  # pairwise merges, log2(chunks) levels deep
        level = [g.task(merge, *level[i:i + 2]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    start = time.perf_counter()
    with actorq.ActorSystem() as system:
        result = system.run(g, workers=n_workers)
    count, total = result[level[0]]
    return count, total, time.perf_counter() - start, result.stats


def run_in_one_process(chunks: list[tuple[int, int]],
                       odd_divisors: list[int]) -> tuple[int, int, float]:
    """Count the same chunks here, one after the other; return (count, sum, wall time)."""
    start = time.perf_counter()
    count = total = 0
    for lo, hi in chunks:
        c, s = count_primes(lo, hi, odd_divisors)
        count += c
        total += s
    return count, total, time.perf_counter() - start


def verify(limit: int, count: int, total: int) -> list[str]:
    """Compare (count, sum) with known values and with a sieve; return the problems."""
    problems = []
    sieve = small_primes(limit - 1)
    if (count, total) != (len(sieve), sum(sieve)):
        problems.append(f"sieve says {len(sieve):,} primes summing to {sum(sieve):,}")
    if limit in KNOWN_COUNTS and count != KNOWN_COUNTS[limit]:
        problems.append(f"pi({limit:,}) is {KNOWN_COUNTS[limit]:,}")
    if limit in KNOWN_SUMS and total != KNOWN_SUMS[limit]:
        problems.append(f"the primes below {limit:,} sum to {KNOWN_SUMS[limit]:,}")
    return problems


def main(argv: list[str] | None = None) -> int:
    # (the example tests run it smaller: the same code, a smaller range)
    quick = bool(os.environ.get("ACTORQ_EXAMPLES_QUICK"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1_000_000 if quick else 3_000_000,
                        help="count the primes below this (default: 3,000,000)")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1,
                        help="number of actors (default: one per core)")
    parser.add_argument("--chunks-per-actor", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the single-process run")
    args = parser.parse_args(argv)
    if args.limit < 3 or args.actors < 1 or args.chunks_per_actor < 1:
        parser.error("--limit must be at least 3, --actors and --chunks-per-actor at least 1")

    limit, n_actors = args.limit, args.actors
    odd_divisors = small_primes(math.isqrt(limit - 1))[1:]
    chunks = split(limit, n_actors * args.chunks_per_actor)
    print(f"counting the primes below {limit:,}: {len(chunks)} chunks on {n_actors} actors "
          f"({os.cpu_count()} cores), every call sent before any reply is awaited")

    per_actor, times = run_on_actors(chunks, n_actors, odd_divisors)
    count = total = 0
    for i, results in enumerate(per_actor):
        found = sum(r["count"] for r in results)
        cpu = sum(r["cpu"] for r in results)
        pids = sorted({r["pid"] for r in results})
        count += found
        total += sum(r["sum"] for r in results)
        print(f"  primes-{i} (pid {', '.join(map(str, pids))}): {len(results)} chunks, "
              f"{found:,} primes, {cpu:.2f} s CPU")
    print(f"total: {count:,} primes below {limit:,}, summing to {total:,}")

    problems = verify(limit, count, total)
    if problems:
        print("CHECK FAILED: " + "; ".join(problems))
        return 1
    known = f"pi({limit:,}) = {KNOWN_COUNTS[limit]:,}, " if limit in KNOWN_COUNTS else ""
    print(f"check: OK ({known}matches a sieve computed in this process)")

    g_count, g_total, g_wall, g_stats = run_as_graph(chunks, n_actors, odd_divisors)
    if (g_count, g_total) != (count, total):
        print(f"CHECK FAILED: the job graph found {g_count:,} primes summing to {g_total:,}")
        return 1
    print(f"job graph: {len(g_stats.tasks)} tasks ({len(chunks)} chunks, then a tree of "
          f"merges) on {g_stats.workers} workers: the same {g_count:,} primes, "
          f"{g_wall:.2f} s in all, utilisation {g_stats.utilisation:.0%}")

    label = f"wall time, {n_actors} actors:"
    print(f"{label:<24}{times['work']:6.2f} s of work, {times['total']:.2f} s in all "
          f"(start-up {times['start']:.2f} s, shutdown included)")
    if not args.no_baseline:
        c1, s1, t_single = run_in_one_process(chunks, odd_divisors)
        if (c1, s1) != (count, total):
            print(f"CHECK FAILED: the single-process run found {c1:,} primes")
            return 1
        print(f"{'wall time, one process:':<24}{t_single:6.2f} s (same chunks, same code)")
        print(f"speed-up on {os.cpu_count()} cores: {t_single / times['work']:.2f}x on the "
              f"work, {t_single / times['total']:.2f}x in all")
    return 0

if __name__ == "__main__":
    sys.exit(main())
