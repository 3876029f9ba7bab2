"""The shared record: counters and per-message latencies in a file mapping that a
consumer writes and this process reads; and the helpers consumers and producers share
(CPU burn, bounded polling, paced sending)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import actorq
from actorq.bench.mapped import MappedFile
from actorq.bench.suites.overload.params import MIN_SLEEP

# int64 slots at the start of the mapping
COUNT = 0  # messages handled with their work done (one record each)
ANOMALIES = 1  # messages whose sequence number was not the next of their producer
DISCARDED = 2  # messages drained without work (mp.Queue after the overload)
READY = 3  # the consumer mapped and touched everything
HANDLED = 8  # + producer id: messages of that producer handled or discarded
SENT = 64  # + producer id: messages that producer process sent (mp.Queue producers)
MAX_PRODUCERS = SENT - HANDLED
OPENER = 32  # producer ids from here on: the messages that open actorq's channels
SLOTS = 128
RECORD_CAPACITY = 1 << 18  # records kept, a ring
FIELDS = 3  # per record: handled_at (time.time()), latency (s), producer id


class Recorder(MappedFile):
    """Counters and per-message records of one consumer, in a file mapping.

    One consumer writes (``record``); any process that maps the same path reads.
    A message's record is written before ``COUNT`` moves past it (x86 keeps stores in
    order), so a reader sees complete records below ``COUNT``.
    """

    def __init__(self, path: str, capacity: int = RECORD_CAPACITY) -> None:
        super().__init__(path, SLOTS * 8 + capacity * 8 * FIELDS)
        self.capacity = capacity
        self.slots = self.keep(self.buf[: SLOTS * 8].cast("q"))
        self.records = self.keep(self.buf[SLOTS * 8:].cast("d"))
        self._next: dict[int, int] = {}

    @classmethod
    def create(cls, capacity: int = RECORD_CAPACITY) -> Recorder:
        """Make a zero-filled mapping file and map it."""
        return cls(cls.make(SLOTS * 8 + capacity * 8 * FIELDS, "overload.rec"), capacity)

    def touch(self) -> None:
        """Write every page now, so that recording later does not grow this process's RSS."""
        chunk = 1 << 20
        for start in range(0, len(self.buf), chunk):
            end = min(start + chunk, len(self.buf))
            self.buf[start:end] = bytes(end - start)
        self.slots[READY] = 1

    def record(self, producer: int, seq: int, stamp: float, keep: bool = True) -> None:
        """Count one message of *producer*; with *keep*, record its latency too."""
        slots = self.slots
        expected = self._next.get(producer, 0)
        if seq != expected:
            slots[ANOMALIES] += 1
        self._next[producer] = seq + 1
        slots[HANDLED + producer] += 1
        if keep:
            now = time.time()
            i = slots[COUNT]
            j = (i % self.capacity) * FIELDS
            records = self.records
            records[j] = now
            records[j + 1] = now - stamp
            records[j + 2] = producer
            slots[COUNT] = i + 1
        else:
            slots[DISCARDED] += 1

    def count(self) -> int:
        """Messages handled with their work done so far."""
        return int(self.slots[COUNT])

    def read(self, start: int = 0, end: int | None = None,
             ) -> tuple[list[float], list[float], list[int]]:
        """(handled_at, latency, producer) of messages ``start .. end`` still in the ring."""
        end = self.count() if end is None else end
        start = max(start, end - self.capacity)
        flat = self.records.tolist()
        at: list[float] = []
        lat: list[float] = []
        who: list[int] = []
        for i in range(start, end):
            j = (i % self.capacity) * FIELDS
            at.append(flat[j])
            lat.append(flat[j + 1])
            who.append(int(flat[j + 2]))
        return at, lat, who

    def handled_by(self, ids: Sequence[int]) -> list[int]:
        """Messages handled (or discarded) so far, per producer in *ids*."""
        return [int(self.slots[HANDLED + i]) for i in ids]

@contextlib.contextmanager
def recorder() -> Iterator[Recorder]:
    rec = Recorder.create()
    try:
        yield rec
    finally:
        rec.unlink()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll *condition* every 2 ms; return the seconds it took; TimeoutError past *timeout*."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            msg = f"{what}: not done within {timeout:g} s"
            raise TimeoutError(msg)
        time.sleep(0.002)
    return time.monotonic() - start


def paced_send(send: Callable[[int], None], rate: float, duration: float,
               refused: type[BaseException] = actorq.Backpressure) -> dict[str, float]:
    """Offer messages at *rate* per second for *duration* seconds: ``send(seq)`` each.

    Message k is due at ``k / rate``; a producer that fell behind (it waited for
    credit) sends at once until it is on schedule again. A send that raises *refused*
    was not admitted: its sequence number is used again by the next message.
    """
    start = time.perf_counter()
    end = start + duration
    seq = attempts = refusals = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = start + attempts / rate
        if now < due:
            time.sleep(max(due - now, MIN_SLEEP))
            continue
        try:
            send(seq)
        except refused:
            refusals += 1
        else:
            seq += 1
        attempts += 1
    return {"sent": seq, "refused": refusals, "attempts": attempts,
            "scheduled": int(duration * rate), "elapsed": time.perf_counter() - start}
