"""Word frequencies as a map/reduce job graph over generated text.

Map tasks each generate a chunk of text (seeded, Zipf-like word frequencies) and count
its words; reduce tasks merge the counts pairwise up a tree. The ten most common words
are printed, and the whole count is checked against one made here in one process, whose
wall time the graph's is compared with.

    python examples/graph_word_count.py                  # 48 chunks x 60,000 words
    python examples/graph_word_count.py --chunks 96 --words 100000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter

import actorq

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "an", "el"]


def vocabulary(size: int = 2000) -> list[str]:
    rng = random.Random(0)
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def generate(seed: int, words: int) -> str:
    """A chunk of text: *words* words drawn with Zipf-like weights."""
    vocab = vocabulary()
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    rng = random.Random(seed)
    return " ".join(rng.choices(vocab, weights, k=words))


def count(seed: int, words: int) -> Counter[str]:
    """The map step: generate a chunk and count its words."""
    return Counter(generate(seed, words).split())


def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    """The reduce step."""
    a.update(b)
    return a


def build(chunks: int, words: int) -> tuple[actorq.Graph, actorq.Node]:
    g = actorq.Graph()
    level = [g.task(count, seed, words) for seed in range(chunks)]
    while len(level) > 1:
        level = [g.task(merge, level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return g, level[0]


def main(argv: list[str] | None = None) -> int:
    quick = bool(os.environ.get("ACTORQ_EXAMPLES_QUICK"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8 if quick else 48)
    parser.add_argument("--words", type=int, default=5_000 if quick else 60_000)
    args = parser.parse_args(argv)
    g, top = build(args.chunks, args.words)
    print(f"counting {args.chunks * args.words:,} words: {args.chunks} map tasks and a "
          f"reduction tree ({len(g)} tasks) on {os.cpu_count()} cores")

    start = time.perf_counter()
    with actorq.ActorSystem() as system:
        counts = system.run(g)[top]
    parallel = time.perf_counter() - start
    for word, n in counts.most_common(10):
        print(f"  {word:<12}{n:>9,}")

    start = time.perf_counter()
    serial: Counter[str] = Counter()
    for seed in range(args.chunks):
        serial.update(generate(seed, args.words).split())
    one = time.perf_counter() - start
    if serial != counts:
        print("CHECK FAILED: the graph's counts differ from one process's")
        return 1
    print(f"check: OK ({len(counts):,} distinct words, {sum(counts.values()):,} in all, "
          "as counted in one process)")
    print(f"wall time: job graph {parallel:.2f} s (start-up included), one process {one:.2f} s:"
          f" {one / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
