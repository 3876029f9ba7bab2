"""The consumers and producers: actorq actors (consumer, producer, fast-path sink) and
Ray's consumer. The package ships them by value (see its end), so that an actor process
does not import the suite first."""

from __future__ import annotations

import os
import time

import actorq
from actorq.bench.cpuwork import burn
from actorq.bench.suites.counting import CountingSink
from actorq.bench.suites.overload.record import Recorder, paced_send


class RayConsumer:
    """Burns *cost* seconds of CPU per told message; records it in the shared file.

    A plain class: Ray's consumer as it is; actorq's (``Consumer``) is the same work."""

    def __init__(self, path: str, cost: float) -> None:
        self.recorder = Recorder(path)
        self.recorder.touch()
        self.cost = cost

    def receive(self, message: tuple[int, int, float]) -> None:
        producer, seq, stamp = message
        burn(self.cost)
        self.recorder.record(producer, seq, stamp)

    def pid(self) -> int:
        return os.getpid()


class Consumer(RayConsumer, actorq.Actor):
    """actorq's consumer: the same work and records as ``RayConsumer``."""


class Producer(actorq.Actor):
    """Tells a target paced messages for a while (a sync handler: it waits for credit)."""

    def open(self, target: actorq.ActorRef[Consumer], producer: int) -> None:
        """Tell one message, which opens this process's channel to *target*."""
        target.tell((producer, 0, time.time()))

    def produce(self, target: actorq.ActorRef[Consumer], producer: int, rate: float,
                duration: float) -> dict[str, float]:
        tell = target.tell
        return paced_send(lambda seq: tell((producer, seq, time.time())), rate, duration)

    def pid(self) -> int:
        return os.getpid()


class Sink(CountingSink):
    """Counts what it is told (the fast-path benchmark)."""
