"""Flow control: credit windows, Backpressure, waiting in line, priority, async parking.

    python examples/flow_control.py

A producer may have at most ``window`` messages sent to an actor and not yet handled by
it. What happens to the next one depends on how it is sent: ``tell_nowait`` raises
``Backpressure`` at once, synchronous code waits its turn (up to ``send_timeout``), and
code on a running event loop parks the message (up to ``max_parked`` per channel) without
blocking the loop. The consumer below is held still with a marker file, so that every
figure is exact. See docs/concepts.md, "Flow control".
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

import actorq
from actorq.testing import wait_until


def raises(kind, fn):
    """Call *fn*; return the exception of type *kind* it raised (fail if it did not)."""
    try:
        fn()
    except kind as exc:
        return exc
    msg = f"expected {kind.__name__}"
    raise AssertionError(msg)


class Sink(actorq.Actor):
    """Records what it receives; handles nothing while its marker file exists."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.marker = None
        self.seen = []

    def hold(self, marker):
        self.marker = marker

    def receive(self, message):
        while self.marker and os.path.exists(self.marker):
            time.sleep(0.0005)
        if self.delay:
            time.sleep(self.delay)
        self.seen.append(message)

    def put(self, message):
        self.receive(message)
        return len(self.seen)

    def log(self):
        return list(self.seen)


def hold(sink, directory, name="hold"):
    """Make *sink* stop handling (until the returned file is removed)."""
    marker = Path(directory) / name
    marker.write_text("x")
    sink.hold(str(marker)).result(timeout=20)
    return marker


def flow(system, sink):
    return system.metrics()["actors"][sink.name]


def window_and_backpressure(tmp):
    with actorq.ActorSystem(window=4, send_timeout=0.5) as system:
        sink = system.spawn(Sink, name="sink")
        marker = hold(sink, tmp)

        # tell_nowait never waits: the fifth message finds no credit.
        sent = []

        def fill():
            while True:
                sink.tell_nowait(len(sent))
                sent.append(len(sent))

        full = raises(actorq.Backpressure, fill)
        assert "no credit" in str(full)
        assert sent == [0, 1, 2, 3]
        wait_until(lambda: flow(system, sink)["in_flight"] == 4)
        assert flow(system, sink)["window"] == 4

        # A synchronous send waits in line for credit, up to send_timeout, then raises;
        # the message is not sent.
        start = time.monotonic()
        late = raises(actorq.Backpressure, lambda: sink.tell("late"))
        assert "stayed full" in str(late)
        assert time.monotonic() - start >= 0.45

        m = flow(system, sink)
        assert m["credits_in_use"] == m["in_flight"] == 4
        assert m["waiting_producers"] == 0  # the timed-out producer left the line
        assert m["waits"] == 1  # it had queued once...
        assert m["backpressure"] == 2  # ...and Backpressure was raised twice in all

        marker.unlink()  # the sink catches up: credit comes back
        assert sink.put("end").result(timeout=20) == 5
        assert sink.log().result(timeout=20) == [0, 1, 2, 3, "end"]


def waiting_in_line(tmp):
    with actorq.ActorSystem(window=1, send_timeout=30) as system:
        sink = system.spawn(Sink, name="sink")
        marker = hold(sink, tmp)
        sink.tell("first")  # takes the only credit

        # Two threads of this process wait for credit: first come, first served...
        def produce(ref, tag, n):
            for i in range(n):
                ref.tell((tag, i))

        low = threading.Thread(target=produce, args=(sink, "low", 3))
        low.start()
        wait_until(lambda: flow(system, sink)["waiting_producers"] == 1)
        # ...unless a later one has a higher priority: it gets the next credit back.
        urgent = sink.with_priority(10)
        high = threading.Thread(target=produce, args=(urgent, "high", 1))
        high.start()
        wait_until(lambda: flow(system, sink)["waiting_producers"] == 2)

        marker.unlink()
        low.join(30)
        high.join(30)
        wait_until(lambda: len(sink.log().result(timeout=20)) == 5, timeout=20)
        log = sink.log().result(timeout=20)
        assert log == ["first", ("high", 0), ("low", 0), ("low", 1), ("low", 2)], log
        assert flow(system, sink)["waits"] >= 2


async def async_parking(tmp):
    async with actorq.ActorSystem(window=4, max_parked=100) as system:
        sink = system.spawn(Sink, name="sink")
        marker = Path(tmp) / "hold-async"
        marker.write_text("x")
        await sink.hold(str(marker))

        # On a running event loop a send never blocks: 4 calls go out, 46 are parked in
        # line and go out, in order, as credit comes back.
        start = time.monotonic()
        replies = [sink.put(i) for i in range(50)]
        assert time.monotonic() - start < 1.0
        await asyncio.sleep(0.05)  # the loop is free meanwhile
        m = flow(system, sink)
        assert m["in_flight"] <= 4
        assert m["waiting_producers"] == 46

        # Parking is bounded too: past max_parked messages per channel, Backpressure.
        more = []

        def overfill():
            for i in range(100):
                reply = sink.put(("more", i))  # parked until max_parked is reached
                more.append(reply)

        too_many = raises(actorq.Backpressure, overfill)
        assert "max_parked" in str(too_many)
        assert len(more) == 100 - 46

        marker.unlink()
        assert await asyncio.gather(*replies) == list(range(1, 51))


def adaptive_window():
    # AIMD on the p99 of the time a message spends in the actor (read to handled):
    # above window_target the window halves, at or under it it grows by window_step.
    options = actorq.ActorOptions(window_target=0.002, window_min=4, window_max=256,
                                  window_step=8)
    with actorq.ActorSystem(window=256) as system:
        slow = system.spawn(Sink, 0.001, actor_options=options, name="slow")
        assert flow(system, slow)["window"] == 32  # it starts low: 4 x window_step
        for i in range(1000):
            slow.tell(i)  # 1 ms each: a full window would wait far longer than 2 ms
        assert slow.put("end").result(timeout=60) == 1001
        assert 4 <= flow(system, slow)["window"] < 256  # the window came down


if __name__ == "__main__":  # needed: actor processes re-import this module
    with tempfile.TemporaryDirectory() as tmp:
        window_and_backpressure(tmp)
        waiting_in_line(tmp)
        asyncio.run(async_parking(tmp))
    adaptive_window()
    print("flow control: all assertions passed")
