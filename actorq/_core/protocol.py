"""The cross-process protocol, in one place: wire messages, control messages, the boot
record and the crash-attribution slots.

Wire messages (in ring records; a record is a pickled list of them, or one marshalled
message: ``_transport/oob.py``). Tuples, the cheapest to pickle; ``msg[0]`` is the op and
``msg[1]`` the call token in every form (0: nobody waits for an answer)::

    (OP_CALL,  token, reply_to, method, args, kwargs)   reply_to: the caller's hub id
    (OP_TELL,  0, message)                              a tell: ``receive(message)``
    (OP_REPLY, token, ok, value_or_exception, traceback_text)
    (OP_DCALL, token, reply_to, method, args, kwargs, deadline, call_token, prefix)
                        a call carrying its deadline (``time.monotonic()`` seconds: the
                        same clock in every process of the host; None or ``inf``: none); the
                        actor drops it unrun if the deadline passed while it was queued
                        (issue 10). ``call_token`` (or None): a pool call's token, the
                        same for each of its attempts (``context.token``). With a
                        ``prefix`` (or None; ``call_token`` None), the token is
                        ``f"{prefix}{token}"``, made by the actor only if read: a pool's
                        first attempt (its retries carry that string as ``call_token``)

Hub ids: ``SYSTEM_ID`` (0) is the user's process; an actor's hub id is its actor id.

Control messages (over each actor's Unix socket, ``_transport/control.py``; rare, never on
the message path): tuples whose first item is a :class:`Ctl` kind::

    system → actor   (BOOT, Boot)               fds: its doorbell, the system's, peers'
                     (PREPARE, Boot)   to a warm spare: map all, import the class, then
                                       wait for GO (or a BOOT, for another actor)
                     (GO, restarts)    the actor it prepared for died: take over now
                     (INBOUND, sender_id, ring_name)     fds: the sender's doorbell
                     (GONE, actor_id, why)
                     (STOP,)
                     (ANSWER, request_id, answer)        answers CONNECT/LOOKUP/SPAWN
                     (WATCH,)          the idle sweep saw data on a parked actor's ring
                                       whose watchdog had stopped: look again now
    actor → system   (READY, pid)
                     (FAILED, exception, traceback)      the constructor or on_start raised
                     (CRASHING, traceback)               about to die of an exception
                     (CONNECT, request_id, target_id)    open a direct channel
                     (LOOKUP, request_id, name)
                     (SPAWN, request_id, blob, name, restart, options, group)
                                         group: None, or (name, max_restarts, within) of a
                                         supervisor of its children to put it under
                     (STOP_CHILD, request_id, child_id)  stop one of its children (pools)
                     (DEAD_LETTER, method, reason)       a message it could not unpickle

    answers          CONNECT: ("channel", target_id, ring_name, target_ctl) + its doorbell fd,
                              or (GONE, target_id, why)
                     LOOKUP:  ("ref", actor_id, handlers, cls_name) or ("missing",)
                     SPAWN:   ("ref", actor_id, name, handlers, cls_name) or ("error", exc)
                     STOP_CHILD: ("ok",) or ("error", exc)

The actor's control block (a 4 KiB shared segment of u64 slots, ``ControlBlock``): the
transport owns slots 0 (parked), 16 (wake-ups), 17 (lost wake-ups) and 19 (adaptive
window); the actor kernel owns the slots below. The actor writes them, the system reads
them after a death to learn which message killed it (``_runtime.runtime``)::

    [8]  C_BUSY      sender hub id + 1 of the message being handled; 0 when idle
    [9]  C_TOKEN     its call token (0 for a tell)
    [10] C_REPLY_TO  hub id + 1 of the caller waiting for it
    [11] C_SINCE     CLOCK_MONOTONIC ns when it started (hang detection); 0 if off
    [12] C_SEQ       its place in its ring: messages handled on that ring before it (the
                     ring's handled count + its index in the head record). C_BUSY is
                     cleared only after the message is committed, so after a crash with
                     C_BUSY set, comparing C_SEQ with the ring tells whether it was.
    [18] C_HANDLED   messages handled, all channels
    [20] C_STOP      written by the system: stop after the current message
    [25] C_HELD      replies whose doorbell was held back for a caller that said it
                     would spin on them (``READER_EXPECTED``; issue 15)
    [26] C_HELD_RUNG of those, rung after all: not read within ``REPLY_GRACE``
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from actorq._config import SystemConfig

OP_CALL = 1
OP_REPLY = 2
OP_TELL = 3
OP_DCALL = 4  # a call carrying its deadline: its own op, so plain calls pay nothing
SYSTEM_ID = 0

C_BUSY = 8
C_TOKEN = 9
C_REPLY_TO = 10
C_SINCE = 11
C_SEQ = 12
C_HANDLED = 18
C_STOP = 20
C_WATCH_MS = 24  # the lost wake-up watchdog's interval now, ms (it backs off while idle)
C_HELD = 25  # replies whose doorbell waited for their spinning caller
C_HELD_RUNG = 26  # of those, rung after all


class Ctl(StrEnum):
    """Kinds of control messages (the table above)."""

    BOOT = "boot"
    PREPARE = "prepare"
    GO = "go"
    INBOUND = "inbound"
    GONE = "gone"
    STOP = "stop"
    ANSWER = "answer"
    READY = "ready"
    FAILED = "failed"
    CRASHING = "crashing"
    CONNECT = "connect"
    LOOKUP = "lookup"
    SPAWN = "spawn"
    STOP_CHILD = "stop_child"
    DEAD_LETTER = "dead_letter"
    WATCH = "watch"


@dataclass(frozen=True, slots=True)
class Boot:
    """What the system tells a new actor process (``(BOOT, Boot)``, with its fds).

    Ring tables map a peer's id to its ring's segment name and the index, in the fds sent
    along, of the doorbell to ring (outbound: of the receiver; inbound: of the sender).
    """

    id: int
    name: str
    run_id: str
    config: SystemConfig
    ctl: str  # the actor's control block segment
    spec: str  # segment holding (cls, args, kwargs), cloudpickled
    spec_size: int
    inbound: dict[int, tuple[str, int]]  # sender -> (ring, fd index)
    outbound: dict[int, tuple[str, str, int]]  # target -> (ring, target's ctl, fd index)
    restarts: int
    hang_timeout: float | None
    window_target: float | None
    window_min: int
    window_max: int | None
    window_step: int


def method_and_args(msg: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The handler a call or tell names, and its positional arguments (dead letters)."""
    if msg[0] == OP_TELL:
        return "receive", (msg[2],)
    return msg[3], msg[4]
