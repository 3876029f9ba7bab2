"""Fairness between sender processes, negative priorities, and priority across pickling."""

from __future__ import annotations

import collections
import os
import threading
import time

import actorq
from actorq.testing import wait_until


class Sink(actorq.Actor):
    def __init__(self):
        self.seen = []
        self.gate = None

    def hold(self, path):
        self.gate = path

    def receive(self, message):
        if self.gate and message in ("block", "fill"):
            with open(self.gate + ".started", "w"):
                pass
        while self.gate and os.path.exists(self.gate):
            time.sleep(0.0005)
        self.seen.append(message)

    def log(self):
        return list(self.seen)

    def count(self):
        return len(self.seen)


class Producer(actorq.Actor):
    def connect(self, target):
        return target.count().result()  # the sink learns of this ring (a control message)

    def flood(self, target, tag, n):
        for i in range(n):
            target.tell((tag, i))
        return n


class Echo(actorq.Actor):
    def back(self, ref):
        return ref


def _hold(tmp_path, sink):
    marker = tmp_path / "hold"
    marker.write_text("x")
    sink.hold(str(marker)).result()
    sink.tell("block")  # handled first, until the marker goes
    wait_until(lambda: (tmp_path / "hold.started").exists())
    return marker


def test_senders_with_standing_backlogs_get_equal_turns(tmp_path):
    n = 1000
    with actorq.ActorSystem() as s:
        sink = s.spawn(Sink)
        producers = [s.spawn(Producer) for _ in range(3)]
        for p in producers:
            p.connect(sink).result(timeout=30)  # every sender's ring exists before the gate
        marker = _hold(tmp_path, sink)
        floods = [p.flood(sink, f"actor{i}", n) for i, p in enumerate(producers)]
        for i in range(n):
            sink.tell(("user", i))
        assert [f.result(timeout=60) for f in floods] == [n] * 3
        wait_until(lambda: s.metrics()["actors"][sink.name]["in_flight"] >= 4 * n)
        marker.unlink()
        wait_until(lambda: sink.count().result() == 4 * n + 1, timeout=60)
        log = sink.log().result()[1:]
        # every sender's backlog was there from the start: they take turns (deficit
        # round robin, 256 a turn), so none waits for another's whole backlog
        first = collections.Counter(tag for tag, _ in log[:1200])
        assert set(first) == {"user", "actor0", "actor1", "actor2"}, first
        assert min(first.values()) >= 200, first
        for tag in first:  # and each sender's messages stay in order
            assert [i for t, i in log if t == tag] == list(range(n))


def _priority_race(s, tmp_path, first_ref, second_ref):
    """*first_ref* queues for credit, then *second_ref*; return the sink's log."""
    sink_ref = first_ref
    marker = tmp_path / "hold"
    marker.write_text("x")
    sink_ref.hold(str(marker)).result()
    sink_ref.tell("fill")  # handled until the marker goes, holding the only credit
    wait_until(lambda: (tmp_path / "hold.started").exists())
    t1 = threading.Thread(target=lambda: [first_ref.tell(("first", i)) for i in range(3)])
    t1.start()
    wait_until(lambda: s.metrics()["actors"][sink_ref.name]["waiting_producers"] >= 1)
    t2 = threading.Thread(target=lambda: second_ref.tell(("second", 0)))
    t2.start()
    wait_until(lambda: s.metrics()["actors"][sink_ref.name]["waiting_producers"] >= 2)
    marker.unlink()
    t1.join(30)
    t2.join(30)
    wait_until(lambda: sink_ref.count().result() == 5, timeout=30)
    return sink_ref.log().result()


def test_a_negative_priority_waits_behind_the_default(tmp_path):
    with actorq.ActorSystem(window=1, send_timeout=30) as s:
        sink = s.spawn(Sink)
        log = _priority_race(s, tmp_path, sink.with_priority(-5), sink)
        # the default (0) arrived second but goes before the -5 waiting in line
        assert log.index(("second", 0)) < log.index(("first", 1)), log


def test_a_ref_keeps_its_priority_through_another_actor(tmp_path):
    with actorq.ActorSystem(window=1, send_timeout=30) as s:
        sink = s.spawn(Sink)
        echo = s.spawn(Echo)
        urgent = echo.back(sink.with_priority(10)).result()  # pickled there and back
        assert urgent == sink
        log = _priority_race(s, tmp_path, sink, urgent)
        assert log.index(("second", 0)) < log.index(("first", 1)), log
