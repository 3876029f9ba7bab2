"""The dead letters store is bounded: the most recent ``dead_letters`` are kept."""

from __future__ import annotations

import os
import time

import actorq
from actorq.testing import wait_until


class Gate(actorq.Actor):
    def receive(self, message):
        if message == "block":
            with open(self.marker + ".started", "w"):
                pass
            while os.path.exists(self.marker):
                time.sleep(0.001)

    def set_marker(self, marker):
        self.marker = marker


def test_only_the_most_recent_dead_letters_are_kept_and_all_are_counted(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem(dead_letters=5, stop_timeout=0.3) as s:
        a = s.spawn(Gate, name="g")
        a.set_marker(str(marker)).result()
        a.tell("block")
        wait_until(lambda: (tmp_path / "hold.started").exists())
        for i in range(20):
            a.tell(i)
        s.stop(a)  # killed in its handler: 21 messages never handled
        letters = s.dead_letters()
        assert [d.message for d in letters] == [(i,) for i in range(15, 20)]  # oldest dropped
        assert all(d.target == "g" and d.method == "receive" for d in letters)
        assert s.metrics()["system"]["dead_letters"] == 21
        times = [d.time for d in letters]
        assert times == sorted(times)


def test_dead_letters_zero_keeps_none_but_counts_them(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem(dead_letters=0, stop_timeout=0.3) as s:
        a = s.spawn(Gate)
        a.set_marker(str(marker)).result()
        a.tell("block")
        wait_until(lambda: (tmp_path / "hold.started").exists())
        a.tell(1)
        s.stop(a)
        assert s.dead_letters() == []
        assert s.metrics()["system"]["dead_letters"] == 2


def test_messages_parked_for_credit_become_dead_letters_when_their_actor_stops(tmp_path):
    """Messages that never reached the ring (parked for credit) are queued all the same:
    when their actor stops for good they go to the dead letters, as those in its ring do,
    and their callers get ActorStopped."""
    import asyncio

    import pytest

    marker = tmp_path / "hold"
    marker.write_text("x")

    async def main(s, a):
        a.tell("block")  # takes the only credit, and holds the actor
        await asyncio.to_thread(wait_until, lambda: (tmp_path / "hold.started").exists())
        parked = a.ask("parked")  # no credit: parked on the loop, not in the ring
        await asyncio.to_thread(s.stop, a)
        with pytest.raises(actorq.ActorStopped):
            await parked

    with actorq.ActorSystem(window=1, stop_timeout=0.3) as s:
        a = s.spawn(Gate, name="g")
        a.set_marker(str(marker)).result()
        asyncio.run(main(s, a))
        letters = [(d.method, d.message, d.reason.split(":")[0]) for d in s.dead_letters()]
        assert ("receive", ("parked",), "not delivered") in letters


def test_a_call_that_fails_because_its_actor_stopped_finds_its_dead_letter(tmp_path):
    """Dead letters are recorded before the callers are failed: seen from the moment the
    reply fails (a done-callback runs right then), the message is already a dead letter."""
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem(stop_timeout=0.3) as s:
        a = s.spawn(Gate, name="g")
        a.set_marker(str(marker)).result()
        a.tell("block")
        wait_until(lambda: (tmp_path / "hold.started").exists())
        queued = a.ask("queued")
        seen = []
        queued.add_done_callback(
            lambda _r: seen.append([d.message for d in s.dead_letters()]))
        s.stop(a)
        wait_until(lambda: seen)
        assert ("queued",) in seen[0]
