"""A record that does not decode (neither a pickle nor marshalled data) on a real ring.

The reader reads marshalled records through ``Ring.read_plain`` (decoded in C where the
helpers are built, else by ``marshal.loads``): one that does not unmarshal comes back
as the raw record, and the hub drops it as before, logged and committed (its credit
returned), and goes on with the next call. Run with ``ACTORQ_NO_NATIVE=1`` too (the fallback).
"""

from __future__ import annotations

from typing import Any

import actorq
from actorq._transport.ring import H_HEAD, H_TAIL
from actorq.testing import wait_until


class Echo(actorq.Actor):
    def echo(self, x: Any) -> Any:
        return x


def test_an_undecodable_record_is_dropped_and_the_next_call_answered(
        system: actorq.ActorSystem) -> None:
    ref = system.spawn(Echo)
    assert ref.echo(1).result() == 1
    chan = system._runtime.hub.outbound[ref.actor_id]
    with chan.lock:
        # not a pickle (no PROTO byte first), and not marshal data either
        assert chan.ring.try_write(b"\x01\x02\x03 not an actorq record", 1)
    chan.ring_doorbell()
    # the actor is not stuck on it: the next call, behind it in the ring, is answered
    assert ref.echo(2).result() == 2
    hdr = chan.ring.hdr
    # the bad record was committed too, and its message counted as handled: the
    # credit it took comes back (it was lost before)
    wait_until(lambda: hdr[H_HEAD] == hdr[H_TAIL] and chan.ring.in_flight() == 0,
               timeout=30, message="the bad record committed and its credit returned")
    assert ref.echo("three").result() == "three"
    wait_until(lambda: chan.ring.in_flight() == 0, timeout=30,
               message="every credit back")
