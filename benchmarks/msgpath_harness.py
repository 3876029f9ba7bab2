"""The message path in one process, for instruction counts (callgrind) and profiles.

    python benchmarks/msgpath_harness.py {tell,tell-sender,call,call-held,array} N
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        python benchmarks/msgpath_harness.py tell 20000
    python benchmarks/msgpath_harness.py --count tell     # runs callgrind itself, twice

Drives the real sending code (``Hub.tell``/``Hub.call``, the outbox, ``encode``, the
ring) and the real receiving code (``ActorHub.drain``/``pump``, commit, the reply) over
real shared-memory rings, in one thread, so that an instruction count is repeatable on a
busy machine (wall-clock figures are not: see docs/benchmarks.md). What it leaves out:
the other process (a second core), the loop thread of the user's process (its flushes
are done here by the sending thread at the end of each burst, which is what a busy
sender's loop iteration amounts to) and doorbells (nobody is parked).

Modes:
    tell         N tells in bursts of ``BURST``, each burst then drained and handled
    tell-sender  the same tells; the receiver only commits records unread (the
                 sender's share alone)
    call         N sequential calls, each answered (``serve_alone``) and resolved
    call-held    the same, the caller saying it will spin on the reply's ring (as the
                 user's process does): the actor answers first here, so every reply
                 holds its doorbell (``ActorHub.hold_doorbell``), read before the next
    call-real    the whole of both sides' paths as they run in a steady stream of
                 sequential calls: the caller is the user's process hub
                 (``SystemHub``) and waits with ``reply.result()`` (``wait_reply``, its
                 spin on the reply's ring: the reply is there at its first look); the
                 actor finds each call in its idle spin (``ActorHub.spin``: the held
                 doorbell of the previous reply seen read first), then runs one turn of
                 ``Host.run_batch``'s loop
    array        N sequential calls of ``nbytes(a)``, ``a`` a numpy array of ``ARRAY_BYTES``
                 (8 MiB: out of band, through the sender's pooled block)

``--count MODE...`` runs callgrind on two sizes (2,000 and 12,000 messages; 200 and
1,200 calls; 20 and 120 arrays) and prints the difference per message.
"""

from __future__ import annotations

import operator
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from actorq._actorproc.actorhub import READ_AHEAD, ActorHub
from actorq._actorproc.host import Host
from actorq._config import SystemConfig
from actorq._core.hub import Hub
from actorq._core.protocol import Boot
from actorq._core.ref import ActorRef
from actorq._ids import new_run_prefix
from actorq._runtime.systemhub import SystemHub
from actorq._transport.channel import CTL_SIZE, ControlBlock, InChannel, OutChannel
from actorq._transport.ring import H_HANDLED, H_HEAD, H_SENT, H_TAIL, Ring
from actorq._transport.shm import Segment, unlink_prefix

BURST = 1000  # tells between two drains of the receiver (below the credit window)
ARRAY_BYTES = 8 * 1024 * 1024  # the messaging suite's array (actorq.bench.suites.messaging)
ACTOR_ID = 1


class Sink:
    """The handlers of the harness's actor."""

    def __init__(self) -> None:
        self.received = 0

    def receive(self, message: Any) -> None:
        self.received += 1

    def echo(self, x: Any) -> Any:
        return x

    def nbytes(self, arr: Any) -> int:
        return int(arr[:4].sum() * 0) + int(arr.nbytes)  # reads it, as the suite's Sink


class SenderHub(Hub):
    """A sending hub with no loop thread (its flushes are explicit)."""

    def may_block(self) -> bool:
        return True

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:  # pragma: no cover
        raise AssertionError(ref)


class Harness:
    """Two hubs joined by two rings: the user's side and one actor's side."""

    def __init__(self, make_sender: Any = None) -> None:
        """*make_sender(prefix, config, ctl, efd)*: the user's side hub (default: a
        ``SenderHub``)."""
        self.prefix = new_run_prefix()
        config = SystemConfig()
        self.config = config
        segs = []

        def seg(kind: str, size: int) -> Segment:
            s = Segment.create(self.prefix + kind, size)
            segs.append(s)
            return s

        self.segs = segs
        to_actor, from_actor = seg("ra", Ring.size_for(config.ring_size)), seg(
            "rs", Ring.size_for(config.ring_size))
        for s in (to_actor, from_actor):
            Ring(s.buf, init=True).release()
        sys_ctl, actor_ctl = seg("c0", CTL_SIZE), seg("c1", CTL_SIZE)
        self.efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        if make_sender is None:
            self.sender: Hub = SenderHub(0, self.prefix, config, ControlBlock(sys_ctl),
                                         self.efds[0])
        else:
            self.sender = make_sender(self.prefix, config, ControlBlock(sys_ctl), self.efds[0])
        self.sender.outbound[ACTOR_ID] = OutChannel(
            ACTOR_ID, Segment.attach(to_actor.name), ControlBlock(Segment.attach(actor_ctl.name)),
            self.efds[1], config.window)
        self.sender.inbound[ACTOR_ID] = InChannel(ACTOR_ID, Segment.attach(from_actor.name))
        self.sock = socket.socketpair()
        host = Host(self.sock[0])
        host.name = host.cls_name = "sink"
        info = Boot(ACTOR_ID, "sink", self.prefix, config, actor_ctl.name, "", 0, {}, {}, 0,
                    None, None, 1, None, 1)
        self.receiver = ActorHub(host, info, ControlBlock(Segment.attach(actor_ctl.name)),
                                 self.efds[1])
        host.hub = self.receiver
        self.sink = Sink()
        host.handlers = {"receive": self.sink.receive, "echo": self.sink.echo,
                         "nbytes": self.sink.nbytes}
        self.receiver.inbound[0] = InChannel(0, Segment.attach(to_actor.name), self.efds[0])
        self.receiver.outbound[0] = OutChannel(
            0, Segment.attach(from_actor.name), ControlBlock(Segment.attach(sys_ctl.name)),
            self.efds[0], config.window)
        self.ref: ActorRef[Any] = ActorRef(self.sender, self.prefix, ACTOR_ID, "sink",
                                           frozenset({"echo", "nbytes"}), "Sink")

    def receive_all(self) -> None:
        hub = self.receiver
        while hub.has_unread() or hub.queue:
            hub.drain(READ_AHEAD)
            hub.pump()
            hub.flush_dirty()

    def skip_all(self) -> None:
        """Commit every published record unread (the tell-sender mode)."""
        ring = self.receiver.inbound[0].ring
        hdr = ring.hdr
        hdr[H_HANDLED] = hdr[H_SENT]
        hdr[H_HEAD] = hdr[H_TAIL]

    def tells(self, n: int, *, read: bool = True) -> None:
        tell = self.ref.tell
        sender = self.sender
        done = 0
        while done < n:
            k = min(BURST, n - done)
            for i in range(done, done + k):
                tell(("small", i, 1.5))
            sender.flush_dirty()
            done += k
            if read:
                self.receive_all()
            else:
                self.skip_all()
        if read and self.sink.received != n:
            msg = f"the sink got {self.sink.received} of {n} tells"
            raise RuntimeError(msg)

    def calls(self, n: int, arr: Any = None) -> None:
        """N calls answered one by one: ``echo(i)``, or ``nbytes(arr)`` given *arr*."""
        call = self.ref.echo if arr is None else self.ref.nbytes
        want = None if arr is None else arr.nbytes
        sender, receiver = self.sender, self.receiver
        chan = sender.inbound[ACTOR_ID]
        for i in range(n):
            reply = call(i if arr is None else arr)
            receiver.drain(READ_AHEAD)
            if receiver.queue:
                receiver.pump()
            receiver.flush_dirty()
            while not reply.done():
                rec = chan.read_next()
                if rec is None:
                    msg = "no reply"
                    raise RuntimeError(msg)
                sender._take_record(chan, rec, 0.0)
            if reply.result() != (i if want is None else want):
                msg = "wrong answer"
                raise RuntimeError(msg)

    def calls_real(self, n: int) -> None:
        """N calls ``echo(i)``, each side's path whole (the ``call-real`` mode)."""
        call = self.ref.echo
        receiver, host = self.receiver, self.receiver.host
        clock = time.perf_counter
        for i in range(n):
            reply = call(i)
            # the actor: its idle spin finds the call, then a turn of Host.run_batch
            if not receiver.spin():
                msg = "the actor's spin found no call"
                raise RuntimeError(msg)
            if clock() > 1e300:  # pragma: no cover - run_batch's time-slice look
                break
            if receiver.waiting_chans:
                receiver.grant_all()
            receiver.drain(READ_AHEAD)
            if receiver.queue:
                receiver.pump()
            if receiver.dirty:
                receiver.flush_or_retry()
            if host.stopping or receiver.busy:  # pragma: no cover
                msg = "the actor stopped or is busy"
                raise RuntimeError(msg)
            if reply.result(timeout=5.0) != i:
                msg = "wrong answer"
                raise RuntimeError(msg)

    def close(self) -> None:
        for hub in (self.sender, self.receiver):
            for chan in [*hub.outbound.values(), *hub.inbound.values()]:
                chan.close()
                if isinstance(chan, OutChannel):
                    chan.ctl.close()
            hub.ctl.close()
            hub.pool.close()
        for s in self.segs:
            s.close()
        unlink_prefix(self.prefix)
        for fd in self.efds:
            os.close(fd)
        for s in self.sock:
            s.close()


def _system_hub(prefix: str, config: SystemConfig, ctl: ControlBlock, efd: int) -> Hub:
    """The user's process hub (no loop thread: nothing is flushed or read by one)."""
    return SystemHub(prefix, config, ctl, efd, lambda _actor_id: None)


def run(mode: str, n: int) -> None:
    """Run *mode* N times; the work itself runs inside ``operator.call``, a C function
    nothing else here calls: ``--toggle-collect=_operator_call`` counts only the work."""
    h = Harness(_system_hub if mode == "call-real" else None)
    try:
        if mode == "tell":
            operator.call(h.tells, n)
        elif mode == "tell-sender":
            operator.call(h.tells, n, read=False)
        elif mode == "call":
            operator.call(h.calls, n)
        elif mode == "call-held":
            h.sender.expects_readers = True
            operator.call(h.calls, n)
        elif mode == "call-real":
            operator.call(h.calls_real, n)
        elif mode == "array":
            import numpy as np  # only here: the other modes run without numpy

            operator.call(h.calls, n, np.arange(ARRAY_BYTES // 8, dtype=np.float64))
        else:
            msg = (f"unknown mode {mode!r}: tell, tell-sender, call, call-held, call-real "
                   "or array")
            raise SystemExit(msg)
    finally:
        h.close()


def callgrind_total(mode: str, n: int, script: str = __file__) -> int:
    """Instructions the work of *mode* took in ``python script mode n`` (counted only
    inside ``operator.call``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--toggle-collect=_operator_call", sys.executable, script, mode,
                        str(n)], check=True, capture_output=True)
        with open(out) as f:
            text = f.read()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        msg = "no total in the callgrind output"
        raise RuntimeError(msg)
    return int(found.group(1))


def count(mode: str) -> float:
    """Instructions per message in *mode* (the difference of two runs: the set-up and
    the first, unrepresentative messages cancel out)."""
    small, large = {"call": (200, 1200), "call-held": (200, 1200), "call-real": (200, 1200),
                    "array": (20, 120)}.get(mode, (2000, 12000))
    return (callgrind_total(mode, large) - callgrind_total(mode, small)) / (large - small)


if __name__ == "__main__":
    if sys.argv[1] == "--count":
        for m in sys.argv[2:] or ["tell", "tell-sender", "call"]:
            print(f"{m:12s} {count(m):10.0f} instructions per message", flush=True)
    else:
        run(sys.argv[1], int(sys.argv[2]))
