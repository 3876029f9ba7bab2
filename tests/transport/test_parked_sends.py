"""Sends from a running event loop park in line; past ``send_timeout`` a parked call's
``Reply`` fails with ``Backpressure`` and a parked tell is dropped and logged."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

import actorq
from actorq.testing import wait_until


class Sink(actorq.Actor):
    def __init__(self):
        self.seen = []
        self.gate = None

    def hold(self, path):
        self.gate = path

    def receive(self, message):
        while self.gate and os.path.exists(self.gate):
            time.sleep(0.0005)
        self.seen.append(message)

    def put(self, message):
        self.receive(message)
        return message

    def log(self):
        return list(self.seen)


async def _parked_past_the_timeout(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    async with actorq.ActorSystem(window=2, send_timeout=0.3) as s:
        sink = s.spawn(Sink)
        await sink.hold(str(marker))
        sink.tell(1)  # handled until the marker goes: holds a credit
        sink.tell(2)  # the window's second credit
        call = sink.put(3)  # no credit: parked, and the loop is not blocked
        sink.tell(4)  # parked too
        # (not `assert not call.done()`: the system's loop expires it 0.3 s on, and a loaded
        # machine can hold this thread that long; the text below says it was parked)
        with pytest.raises(actorq.Backpressure, match="the message was parked"):
            await call
        for _ in range(2000):  # the parked tell expires at the same time: let it
            m = s.metrics()["actors"][sink.name]
            if m["backpressure"] == 2:
                break
            await asyncio.sleep(0.005)
        marker.unlink()
        # the two tells' credits back before the next call: else that call parks too,
        # and fails as well if a loaded machine takes over 0.3 s to hand them back
        for _ in range(12000):
            if s.metrics()["actors"][sink.name]["in_flight"] == 0:
                break
            await asyncio.sleep(0.005)
        seen = await sink.log()
        return m, seen, s.dead_letters()


def test_parked_sends_fail_or_are_dropped_after_send_timeout(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="actorq"):
        m, seen, letters = asyncio.run(_parked_past_the_timeout(tmp_path))
        wait_until(lambda: any("dropped a told message" in r.getMessage()
                               for r in caplog.records))
    dropped = [r.getMessage() for r in caplog.records if "dropped a told message" in r.getMessage()]
    assert len(dropped) == 1
    assert "mailbox stayed full for 0.3s" in dropped[0]
    assert seen == [1, 2]  # neither parked message was ever sent
    assert letters == []  # a dropped parked tell is logged, not a dead letter
    assert m["backpressure"] == 2
    assert m["waiting_producers"] == 0  # both left the line


async def _past_max_parked(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    async with actorq.ActorSystem(window=1, max_parked=3, send_timeout=30) as s:
        sink = s.spawn(Sink)
        await sink.hold(str(marker))
        sink.tell(0)
        parked = [sink.put(i) for i in range(1, 4)]
        with pytest.raises(actorq.Backpressure, match="max_parked=3"):
            sink.tell(99)  # raised by the send itself, nothing queued
        marker.unlink()
        results = await asyncio.gather(*parked)
        return results, await sink.log()


def test_a_send_past_max_parked_raises_and_the_parked_ones_go_out_in_order(tmp_path):
    results, seen = asyncio.run(_past_max_parked(tmp_path))
    assert results == [1, 2, 3]
    assert seen == [0, 1, 2, 3]
