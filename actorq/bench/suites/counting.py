"""An actor that counts what it is told: the receiving end of the tell benchmarks
(the messaging suite's ``Sink``, the overload suite's fast path).

A module of its own that imports nothing beyond actorq: an actor process unpickling a
subclass imports it, and the idle actor's memory and the restart times must not count
more than that.
"""

from __future__ import annotations

from typing import Any

import actorq


class CountingSink(actorq.Actor):
    """Counts what it is told."""

    def __init__(self) -> None:
        self.received = 0

    def receive(self, message: Any) -> None:
        self.received += 1

    def count(self) -> int:
        """How many messages arrived since the last count; start again."""
        n, self.received = self.received, 0
        return n
