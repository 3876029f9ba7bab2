"""Hub: one process's end of every channel it has (the system's, or one actor's).

A hub owns its inbound rings (it is their only consumer), the producer side of its
outbound rings (with their outboxes), its doorbell eventfd and control block, and the
replies it is waiting for. The system process and every actor process each run one;
what differs (how a channel to a new peer is opened, what is done with a call, how a
synchronous wait is served) is in the subclasses ``SystemHub`` (``_runtime/systemhub.py``)
and ``ActorHub`` (``_actorproc/actorhub.py``).

Wire records are lists of small tuples, laid out in ``_core/protocol.py``. A tell has its
own short form: half the bytes of the general one, and it pickles and unpickles in half
the time. ``msg[1]`` is the token in every form (0: nobody waits).

``Hub`` is put together from one class per part, each in its own module, all built on
``HubState``:

    hubstate.py    HubState     the state, the flags, the hooks the subclasses fill in
    sending.py     Sending      call, call_deadline, tell (bind_tell), send
    creditline.py  CreditLine   producers waiting for credit; grant; close_channel
    outbox.py      Outboxes     the outboxes: append, flush, encode
    receiving.py   Receiving    drain, decode, dispatch; replies resolved; BadMessage
    parking.py     Parking      park, unpark, the lost wake-up watchdog

Sending derives from CreditLine, which derives from Outboxes (each uses the next);
Receiving and Parking stand alone. The parts cost the hot paths nothing: a method or
attribute is found through the type's caches whatever the depth of its base classes
(benchmarks/msgpath_harness.py counts the same instructions per tell, call and array as
the single class did, within 0.2 %; docs/benchmark-history.md, "The hub split").
"""

from __future__ import annotations

from actorq._core.parking import Parking
from actorq._core.receiving import Receiving
from actorq._core.ref import ChannelStatistics
from actorq._core.sending import Sending


class Hub(Sending, Receiving, Parking):
    """The channels of one process. Subclasses: ``SystemHub``, ``ActorHub``."""

    def channel_statistics(self, target: int) -> ChannelStatistics:
        """The figures of the channel to actor *target* (zeros if none is open)."""
        chan = self.outbound.get(target)
        if chan is None:
            return ChannelStatistics(self.config.window, 0, 0, 0, 0.0, 0)
        gate = chan.gate
        queued = len(chan.outbox) + chan.encoded_count
        return ChannelStatistics(chan.limit(), chan.ring.in_flight() + queued, gate.waiting,
                                 gate.waits, gate.wait_seconds, gate.backpressure)
