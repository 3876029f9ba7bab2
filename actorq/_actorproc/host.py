"""The actor's side: the main function of an actor process, and its hub.

    main(ctrl)                      the process target (forkserver preloads this module)
      └─ Host.boot()                read the start message, map rings, build the actor
      └─ loop: on_wake()            doorbell or spin: run_batch()
              run_batch()          drain → pump (handle calls in order) → flush → spin → park
              on_ctrl()            stop, new inbound ring, peer gone
              watchdog()           park timeout: count lost wake-ups (must stay 0)

Messages are handled one at a time; an ``async def`` handler holds the actor until it
returns, while replies to calls it awaits keep flowing. A call is committed (its ring
space and credit given back) once handled, and its reply is flushed before the next
handler starts, so a later crash never swallows an earlier reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import inspect
import json
import logging
import marshal
import math
import multiprocessing

# Imported here, in the fork server (which preloads this module), not in each actor: a
# socket handed to a forkserver child unpickles as popen_forkserver._DupFd, and every
# actor imported these two modules on its way to main(): ≈ 2.5 ms of CPU and 275
# copy-on-write page faults (1.1 MiB of its unique memory) per start (issue 15).
import multiprocessing.popen_forkserver
import multiprocessing.spawn
import operator
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

# Imported here, not in main(): under fork, a child made while another thread held the
# import lock would deadlock on its first import.
import uvloop

from actorq import _serialization
from actorq._clock import Deadline
from actorq._core.actor import ActorContext, handler_names
from actorq._core.hub import BadMessage, Hub
from actorq._core.protocol import (
    C_BUSY,
    C_HANDLED,
    C_HELD,
    C_HELD_RUNG,
    C_REPLY_TO,
    C_SEQ,
    C_SINCE,
    C_STOP,
    C_TOKEN,
    C_WATCH_MS,
    OP_CALL,
    OP_DCALL,
    OP_REPLY,
    OP_TELL,
    Boot,
    Ctl,
)
from actorq._core.ref import ActorRef, register_hub
from actorq._core.reply import Reply
from actorq._errors import (
    ActorStopped,
    CallTimeout,
    NoSuchActor,
    StartTimeout,
    format_remote,
    raised_at,
)
from actorq._process import deathsig, lifelock, spawn
from actorq._process.deathsig import Lineage
from actorq._serialization import SAFE_TYPES
from actorq._transport import control
from actorq._transport.aimd import AIMDWindow
from actorq._transport.channel import (
    C_WAKEUPS,
    C_WINDOW,
    ControlBlock,
    InChannel,
    OpenRecord,
    OutChannel,
)
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_HEAD,
    H_READER,
    H_TAIL,
    READER_EXPECTED,
    READER_SPINNING,
)
from actorq._transport.shm import SHM_DIR, Segment

logger = logging.getLogger(__name__)

# Messages read ahead of the handler at most (replies are read regardless while a sync
# handler waits): more only moves the backlog from the ring into the heap.
READ_AHEAD = int(os.environ.get("ACTORQ_READ_AHEAD", 1024))

_marshal = marshal.dumps
_op_of = operator.itemgetter(0)  # a wire message's op

# Result types that are never awaitable (checked before the costlier inspect.isawaitable).
_PLAIN = frozenset({type(None), int, float, str, bytes, bool, tuple, list, dict, set,
                    frozenset, complex, bytearray})

# A busy actor returns to its loop at least this often (seconds).
TIME_SLICE = 0.01
# How long the reply to a lone call may hold back its doorbell (seconds) when its caller
# said it would spin on it (``READER_EXPECTED``): the caller comes within a few µs and
# reads it itself; rung unread after this (or before the actor does anything else).
REPLY_GRACE = 15e-6

EXIT_FAILED_START = 3
EXIT_SYSTEM_GONE = 4
EXIT_UNCAUGHT = 5
EXIT_MAIN_UNGUARDED = spawn.EXIT_MAIN_UNGUARDED  # the main script, imported here, made a system


def exit_if_importing_main() -> None:
    """Called by ``ActorSystem()``. In an actor process that is importing the user's main
    script again (spawn does, before the actor boots; forkserver once, in the fork
    server itself, to preload it), a system created at
    import time means the script has no ``if __name__ == "__main__":`` guard: exit at once,
    quietly, with ``EXIT_MAIN_UNGUARDED``. The system says it once, in the user's process
    (a traceback from every child, and restarts of a failure that repeats, only hid it)."""
    proc = multiprocessing.current_process()
    if getattr(proc, "_inheriting", False) and (
            proc.name.startswith("actorq:") or proc.name == "MainProcess"):
        # "MainProcess": the fork server, importing the main script to preload it
        # (actorq._process.spawn); the system reads its exit status
        os._exit(EXIT_MAIN_UNGUARDED)


def preload_main() -> None:
    """In the fork server, at its preload: import the user's main script once, as
    ``__mp_main__``, so that the processes it forks need not (``actorq._process.spawn``).
    A script that fails to import here is left to each child, as before."""
    given = os.environ.pop(spawn.PRELOAD_MAIN_ENV, None)
    if not given:
        return
    path, argv = json.loads(given)
    proc = multiprocessing.current_process()
    proc._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing's preload
    sys.argv = argv  # each child gets the user's argv too (multiprocessing's prepare)
    try:
        multiprocessing.spawn.import_main_path(path)
    except BaseException:  # each child imports it again, and says why
        pass
    finally:
        del proc._inheriting  # type: ignore[attr-defined]


def adopt_parent_path() -> bool:
    """In the fork server, at its preload: take the user's process's ``sys.path``, and put
    back the variables it was started with (``actorq._process.spawn``); warn if actorq
    came from elsewhere than the user's (``python -E`` ignores the variables)."""
    given = os.environ.pop(spawn.PARENT_PATH_ENV, None)
    if not given:
        return False
    data = json.loads(given)
    sys.path[:] = data["sys_path"]
    for name, value in data["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    here = spawn.actorq_root()
    if os.path.realpath(here) != os.path.realpath(data["root"]):
        # (nobody configured logging in the fork server: straight to stderr)
        sys.stderr.write(f"actorq: the fork server imported actorq from {here}, the "
                         f"program from {data['root']}: actors run the fork server's copy\n")
    return True


class ActorHub(Hub):
    """The hub of an actor process: runs handlers, and opens channels through the system."""

    may_deadlock = True
    idle_backoff = True
    swept = True  # the system's idle sweep (_runtime/idle.py) watches it once idle

    def __init__(self, host: Host, info: Boot, ctl: ControlBlock, efd: int):
        super().__init__(info.id, info.run_id, info.config, ctl, efd)
        self.host = host
        self.busy = False
        self.tell_errors: dict[tuple[str, str], int] = {}
        self.gap_ewma = 0.0  # recent idle stretches, seconds (adaptive spinning)
        self.parked_at = 0.0
        self.sync_depth = 0  # > 0 while sync user code runs (it may wait; async code may not)
        # (kernel token, deadline, call token) of the last call that carried them (OP_DCALL)
        self.deadline: tuple[int, float, Any] = (0, 0.0, None)
        self.expired_drops = 0  # calls dropped unrun: their deadline passed while queued
        self.stamp_start = info.hang_timeout is not None  # hang detection is on
        # the lone call serve_alone is handling (its ring, record, unlink list), and its
        # entry once track_alone() had to open it
        self.alone: tuple[InChannel, Any, list[Any]] | None = None
        self.alone_entry: OpenRecord | None = None
        # a reply whose doorbell is held back for its caller (``hold_doorbell``): its
        # channel, the ring's tail just past it, and when to ring after all
        self.held: tuple[OutChannel, int, float] | None = None
        self.aimd: AIMDWindow | None = None
        target = info.window_target
        if target is not None:
            self.aimd = AIMDWindow(target=target, minimum=info.window_min,
                                   maximum=info.window_max or self.config.window,
                                   increase=info.window_step)

    def take_over(self) -> None:
        """Start where the dead predecessor stopped: read every inbound ring from its
        head (what was committed), and publish our window. Done at boot, not before: a
        spare prepared ahead (``Host.prepare``) must not touch what the live actor owns."""
        for chan in self.inbound.values():
            chan.cursor = chan.ring.head()
        self.ctl.slots[C_WINDOW] = self.aimd.window if self.aimd is not None else 0

    def release(self) -> None:
        """Unmap every ring and the control block, close the doorbells (a spare prepared
        for another actor than the one it boots as)."""
        fds = {self.efd}
        for chan in self.outbound.values():
            chan.close()
            chan.ctl.close()
            fds.add(chan.efd)
        for inchan in self.inbound.values():
            inchan.close()
            fds.add(inchan.producer_efd)
        self.outbound.clear()
        self.inbound.clear()
        self.ctl.close()
        for fd in fds - {-1}:
            try:
                os.close(fd)
            except OSError:
                pass

    # -- channels through the system ----------------------------------------------------

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:
        """Ask the system for a direct channel to *ref* (once per target)."""
        answer, fds = self.host.request((Ctl.CONNECT, ref.actor_id))
        if answer[0] == Ctl.GONE:
            self.gone[ref.actor_id] = answer[2]
            msg = f"{ref._describe()} is stopped: {answer[2]}"
            raise ActorStopped(msg)
        _kind, target, ring_name, ctl_name = answer
        try:
            return self.attach_outbound(target, ring_name, ctl_name, fds[0])
        except FileNotFoundError:
            # its segments were unlinked between the answer and now: the system is
            # closing, or forgot the target (stopped for good, past ``stopped_kept``)
            os.close(fds[0])
            why = "its mailbox is gone (the system is closing or forgot it)"
            self.gone[ref.actor_id] = why
            msg = f"{ref._describe()} is stopped: {why}"
            raise ActorStopped(msg) from None

    def attach_outbound(self, target: int, ring_name: str, ctl_name: str, efd: int) -> OutChannel:
        """Map the ring to *target* and remember it."""
        chan = self.outbound.get(target)
        if chan is None:
            ctl = ControlBlock(Segment.attach(ctl_name))
            try:
                ring = Segment.attach(ring_name, prefault=False)
            except FileNotFoundError:
                ctl.close()
                raise
            chan = OutChannel(target, ring, ctl, efd, self.config.window)
            self.outbound[target] = chan
        return chan

    def attach_inbound(self, sender: int, ring_name: str, producer_efd: int) -> None:
        """Map a ring some peer writes to us (its eventfd: to ring when credit comes back)."""
        if sender not in self.inbound:
            self.inbound[sender] = InChannel(sender, Segment.attach(ring_name, prefault=False),
                                            producer_efd)

    # -- waiting ------------------------------------------------------------------------

    def may_block(self) -> bool:
        """Sync handlers may wait (the actor is busy anyway); async ones may not."""
        return self.sync_depth > 0 or _current_task() is None

    def run_sync(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call user code that is synchronous until it returns (it may wait on replies)."""
        self.sync_depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            self.sync_depth -= 1

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        """Waiting on a call to ourselves while handling a message never ends."""
        return reply.target_id == self.id and self.busy

    def timeout_hint(self, reply: Reply[Any]) -> str:
        """Say why a call from inside a handler may have timed out."""
        if self.busy:
            return (f"; this actor ({self.host.name!r}) handles one message at a time and "
                    "was blocked waiting: if the target (directly or through others) calls "
                    "back into it, that is a deadlock")
        return ""

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Wait inside a sync handler: keep reading replies (calls queue) until done."""
        if not self.may_block():
            msg = f"{reply.describe}: use 'await' for replies inside an async handler"
            raise RuntimeError(msg)
        self.track_alone()
        while not reply.done():
            self.flush_dirty()
            self.drain()
            self.host.poll_ctrl()
            if reply.done() or deadline.expired():
                return
            if self.spin(lambda: reply.done()):
                continue
            if self.park():
                timeout = min(deadline.remaining(), self.config.park_timeout)
                select.select([self.efd, self.host.ctrl.fileno()], [], [], timeout)
                self.clear_doorbell()
                self.unpark()

    def idle_wait(self, event: Any, seconds: float) -> None:
        """While waiting for credit, keep reading replies and control messages."""
        self.track_alone()
        self.drain()
        self.host.poll_ctrl()
        if not event.is_set():
            select.select([self.efd, self.host.ctrl.fileno()], [], [], seconds)
            self.clear_doorbell()

    def spin(self, stop: Any = None) -> bool:
        """Poll the rings a while before parking; True if data (or *stop*) turned up.

        Adaptive: the full ``spin_seconds`` only while recent gaps between bursts were
        shorter than that (a spin then saves a doorbell and a wake-up, ≈ 4 µs + 30 µs
        here); after longer gaps a tenth of it, so that an actor fed now and then does
        not burn a core its neighbours need.
        """
        budget = self.config.spin_seconds
        if self.gap_ewma > budget:
            budget *= 0.1
        clock = time.perf_counter
        start = clock()
        end = start + budget
        now = start
        if self.held is not None and not self.wait_for_reader(end, stop):
            end = 0.0  # the caller is late: do not spin on (see wait_for_reader)
        chans = tuple(self.inbound.values())  # no ring is added while we spin (the loop
        if len(chans) == 1 and stop is None:  # adds them, and this is the loop)
            chan = chans[0]
            hdr = chan.ring.hdr
            while now < end:
                if hdr[H_TAIL] != chan.cursor:
                    self.note_gap(now - start)
                    return True
                now = clock()
        else:
            while now < end:
                if self.has_unread() or (stop is not None and stop()):
                    self.note_gap(now - start)
                    return True
                now = clock()
        self.parked_at = now
        return False

    def wait_for_reader(self, end: float, stop: Any) -> bool:
        """The first part of a spin while a reply's doorbell is held back: until its
        caller reads it (or spins on its ring), data comes, the grace or the spin ends;
        the doorbell is rung then unless the reply was read.

        False if the caller did not come within the grace: it is most likely off the
        CPU, possibly this one (a woken actor often runs where its caller ran), so the
        spin ends here and the actor parks rather than keep the CPU from it.
        """
        chan, past, due = self.held  # type: ignore[misc]
        clock = time.perf_counter
        now = clock()
        try:
            hdr = chan.ring.hdr
            while now < due:
                if hdr[H_HEAD] >= past or hdr[H_READER] == READER_SPINNING:
                    self.held = None  # read, or it will be: the spinner sees it
                    return True
                if now >= end or self.has_unread() or (stop is not None and stop()):
                    break
                now = clock()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            self.held = None
            return True
        self.ring_held()
        return now < due

    def hold_doorbell(self, chan: OutChannel) -> None:
        """A lone call's reply was just written and its caller said it would spin on it
        (``READER_EXPECTED``): ring its doorbell only if the caller does not read it
        within ``REPLY_GRACE``, or before this actor does anything else. Otherwise the
        caller's loop thread would wake for a reply its spinning thread reads anyway,
        and then wait for that thread's GIL (issue 15: the round-trip tail)."""
        if self.held is not None:  # pragma: no cover - rung before any other handler
            self.ring_held()
        self.held = (chan, chan.ring.hdr[H_TAIL], time.perf_counter() + REPLY_GRACE)
        self.ctl.slots[C_HELD] += 1

    def ring_held(self) -> None:
        """Ring the doorbell held back for a reply, unless its caller read it already."""
        chan, past, _due = self.held  # type: ignore[misc]
        self.held = None
        try:
            hdr = chan.ring.hdr
            if hdr[H_HEAD] < past and hdr[H_READER] != READER_SPINNING:
                self.ctl.slots[C_HELD_RUNG] += 1
                chan.ring_doorbell()
        except ValueError:  # pragma: no cover - the channel was closed (its peer is gone)
            pass

    def note_gap(self, seconds: float) -> None:
        """Feed the spin heuristic with the time the last idle stretch lasted."""
        self.gap_ewma += 0.25 * (seconds - self.gap_ewma)

    # -- handling -----------------------------------------------------------------------

    def serve_alone(self, chan: InChannel, rec: Any, unlink: list[Any],
                    msgs: Any) -> bool:
        """The latency path: a record of one call, read while idle, is handled right here.

        What ``pump`` would do for it, without queueing it or tracking the record: the
        crash attribution slots are set the same way, and the record is committed once
        the handler returned, before the reply goes out. Anything unusual (a backlog, a
        handler running, a stop asked, a message a predecessor already handled, adaptive
        windows or hang detection on) leaves it to the general path. A handler that turns
        out to be async, or raises, gets its record tracked then, as in ``pump``.

        The call's arguments are let go of before its reply goes out (a list *msgs* is
        emptied): an array that viewed an out-of-band block frees the block then, so
        that the caller's next array reuses the same block (warm in the cache), not
        another one.
        """
        msg = msgs[0]
        if (msg[0] != OP_CALL or self.queue or self.busy or self.host.stopping
                or self.aimd is not None or self.stamp_start):
            return False
        if self.held is not None:  # the previous reply's caller has not read it yet
            self.ring_held()
        _op, token, reply_to, method, args, kwargs = msg
        fn = self.host.handlers.get(method)
        slots = self.ctl.slots
        hdr = chan.ring.hdr  # skip_count(rec.pos) != 0, inlined: a predecessor handled it
        if fn is None or slots[C_STOP] or (hdr[H_CUR_REC] == rec.pos and hdr[H_CUR_SUB]):
            return False
        if type(msgs) is list:  # (a marshalled tuple holds plain data: no buffers)
            msgs.clear()
        del msg
        if self.dirty:
            self.flush_dirty()  # earlier replies out before the next handler runs
        slots[C_TOKEN] = token
        if token:
            slots[C_REPLY_TO] = reply_to + 1
        slots[C_SEQ] = hdr[H_HANDLED]  # the head record's first message
        slots[C_BUSY] = chan.sender_id + 1
        self.busy = True
        self.sync_depth += 1
        self.alone = (chan, rec, unlink)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.busy = False
            del args, kwargs
            self.finish(self._end_alone() or chan.open(rec, unlink), 0, token, reply_to,
                        False, exc, format_remote(exc))
            return True
        finally:
            self.sync_depth -= 1
        del args, kwargs
        entry = self._end_alone()
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry or chan.open(rec, unlink), 0, token, reply_to)
            return True
        self.busy = False
        slots[C_HANDLED] += 1
        # committed: its credit is back before the reply is
        if entry is None:
            chan.commit_now(rec, unlink)
        else:  # tracked while the handler waited (it read its rings): commit in order
            entry.done_one(0)
        slots[C_BUSY] = 0  # after the commit: a crash in between must not redeliver it
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""), True)  # hold
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        return True

    def track_alone(self) -> None:
        """A handler run by ``serve_alone`` is about to read its rings (it waits on a
        reply, or for credit): track its record from now on, so that a record read
        meanwhile from the same ring (an error reply the system sends on a dead actor's
        behalf) is committed after it, never before it."""
        if self.alone is not None and self.alone_entry is None:
            chan, rec, unlink = self.alone
            self.alone_entry = chan.open(rec, unlink)

    def _end_alone(self) -> OpenRecord | None:
        """The lone call's handler returned: its record's entry if it had to be tracked."""
        entry = self.alone_entry
        self.alone = self.alone_entry = None
        return entry

    def _no_receive(self, message: Any) -> None:
        """Stands in for ``receive`` until the actor is built (nothing is pumped before)."""
        msg = f"{self.host.describe()} has no handler 'receive'"
        raise AttributeError(msg)

    def hold(self, result: Any, entry: OpenRecord, index: int, token: int,
             reply_to: int) -> None:
        """An async handler returned *result* (awaitable): it holds the actor until done."""
        task = asyncio.ensure_future(result)
        task.add_done_callback(functools.partial(self._async_done, entry=entry, index=index,
                                                 token=token, reply_to=reply_to))

    def dispatch_all(self, msgs: Any, entry: OpenRecord) -> None:
        """Replies resolve at once; the record's calls and tells wait their turn in the queue.

        Overrides ``Hub.dispatch_all``: the record itself is queued (``pump`` takes its
        messages in order), so nothing is built or queued per message; only a record
        that holds replies (one C-speed scan tells; a marshalled burst, a tuple, holds
        none) is walked here.
        """
        if type(msgs) is list and OP_REPLY in map(_op_of, msgs):
            done = entry.done
            for index, msg in enumerate(msgs):
                if msg[0] == OP_REPLY and not done[index]:
                    self.resolve(msg)
                    entry.done_one(index)  # may commit the record: all of it was replies
            if entry.prefix >= len(msgs):
                return
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def dispatch_tells(self, msgs: tuple[Any, ...], entry: OpenRecord) -> None:
        """A record of told messages only, bare (``Hub.encode``): queued as it is; ``pump``
        hands each message to ``receive`` without a wire tuple to look into."""
        entry.tells = True
        entry.msgs = msgs
        entry.next = entry.prefix  # what a predecessor handled is skipped
        entry.queued = len(msgs) - entry.prefix
        self.queued += entry.queued
        self.queue.append(entry)

    def pump(self) -> None:
        """Handle queued messages in order until one is async (it holds the actor), a stop
        is asked, or none remain.

        This is the hot path of every message, so ``handle`` and (for tells) the
        progress step of ``OpenRecord.done_one`` are inlined here, and a record's messages
        are taken up one after the other without leaving this loop. Per message, in this
        order: ``C_SEQ`` and ``C_BUSY`` (crash attribution) set, the handler run, the
        progress published (``cur_sub``, then ``cur_rec``; the record committed after its
        last message), ``C_BUSY`` cleared; so a crash at any point attributes and
        redelivers exactly one message (tests/faults).
        """
        if self.held is not None:  # rung before a handler runs (it may take long)
            self.ring_held()
        queue = self.queue
        slots = self.ctl.slots
        host = self.host
        handlers = host.handlers
        receive = handlers.get("receive", self._no_receive)
        stamp = self.stamp_start
        aimd = self.aimd
        handled = 0
        self.sync_depth += 1
        try:
            while queue and not self.busy and not host.stopping:
                entry = queue[0]
                msgs, done, hdr, busy = entry.msgs, entry.done, entry.hdr, entry.busy
                tells = entry.tells  # bare told messages (dispatch_tells)
                count = len(msgs)
                index = entry.next
                # The ring's handled count moves only when this record (the head: all
                # before it are handled, so committed) is committed, after its last message.
                seq = hdr[H_HANDLED]
                # C_BUSY (and ``busy``) stay set from one tell to the next (one store per
                # run, not two per message): between two, C_SEQ names a message already
                # handled, which a crash there attributes to nobody (crashes.committed),
                # as if C_BUSY were 0. Both are cleared whenever the run ends.
                marked = False
                # only the head record publishes its progress (OpenRecord.done_one), so
                # cur_rec, once it names this record, stays so until it is committed
                published = hdr[H_CUR_REC] == entry.rec.pos
                while index < count:
                    # asked to stop: seen between messages, even when busy
                    if slots[C_STOP] or host.stopping:
                        host.stopping = True
                        entry.next = index
                        if marked:
                            slots[C_BUSY] = 0
                            self.busy = False
                        return
                    if self.dirty:
                        self.flush_dirty()  # earlier replies out before the next handler runs
                    if done[index]:  # a reply, resolved when read
                        index += 1
                        continue
                    msg = msgs[index]
                    if tells or msg[0] == OP_TELL:  # one-way traffic: its own, shorter path
                        if stamp:
                            slots[C_SINCE] = time.monotonic_ns()
                        # C_TOKEN is already 0: every message clears it once its reply is out
                        slots[C_SEQ] = seq + index
                        if not marked:
                            slots[C_BUSY] = busy  # crash attribution slot
                            self.busy = marked = True
                        try:
                            result = receive(msg if tells else msg[2])
                        except Exception as exc:
                            self.busy = marked = False  # finish() clears C_BUSY
                            entry.next = index = index + 1
                            self.finish(entry, index - 1, 0, 0, False, exc, format_remote(exc))
                            continue
                        if result is not None and inspect.isawaitable(result):
                            entry.next = index + 1
                            self.hold(result, entry, index, 0, 0)
                            return
                        if aimd is not None and aimd.observe(time.perf_counter() - entry.t_read):
                            slots[C_WINDOW] = aimd.window
                        handled += 1
                        index += 1
                        # entry.done_one(index - 1), inlined for the in-order case (always,
                        # here; ``done`` is not set: nothing looks behind the prefix)
                        if index - 1 == entry.prefix:
                            prefix = index
                            while prefix < count and done[prefix]:
                                prefix += 1
                            entry.prefix = prefix
                            if prefix < count:
                                hdr[H_CUR_SUB] = prefix  # cur_sub first, then cur_rec
                                if not published:
                                    hdr[H_CUR_REC] = entry.rec.pos
                                    published = True
                            else:
                                entry.chan.commit_ready()
                        else:  # pragma: no cover - out of order: a handled prefix has a gap
                            entry.done_one(index - 1)
                        continue
                    if marked:  # a call: it sets and clears C_BUSY itself
                        slots[C_BUSY] = 0
                        self.busy = marked = False
                    entry.next = index = index + 1  # taken up (a handler may return here)
                    if msg[0] == OP_DCALL:  # a call with a deadline (plain calls: one compare)
                        if msg[6] <= time.monotonic():
                            self.drop_expired(entry, index - 1, msg)
                            continue
                        self.deadline = (msg[1], msg[6], msg[7] if len(msg) > 7 else None)
                        msg = msg[:6]
                    if self.handle_call(entry, index - 1, msg, handlers):
                        handled += 1
                    if self.busy:
                        return  # an async handler holds the actor
                if marked:
                    slots[C_BUSY] = 0  # after the commit (see C_SEQ)
                    self.busy = False
                entry.next = count
                queue.popleft()
                self.queued -= entry.queued
        finally:
            self.sync_depth -= 1
            slots[C_HANDLED] += handled

    def handle_call(self, entry: OpenRecord, index: int, msg: tuple[Any, ...],
                    handlers: dict[str, Any]) -> bool:
        """Run one call (``pump``); True if it ran to completion and was committed."""
        slots = self.ctl.slots
        _op, token, reply_to, method, args, kwargs = msg
        slots[C_TOKEN] = token  # 0: a crash then fails no caller
        if token:
            slots[C_REPLY_TO] = reply_to + 1
        if self.stamp_start:
            slots[C_SINCE] = time.monotonic_ns()
        slots[C_SEQ] = entry.hdr[H_HANDLED] + index
        slots[C_BUSY] = entry.busy  # crash attribution slot
        fn = handlers.get(method)
        if fn is None:
            err: Exception
            if type(method) is BadMessage:  # it did not unpickle here (sort_out)
                err = method.error()
            else:
                err = AttributeError(f"{self.host.describe()} has no handler {method!r}")
            self.finish(entry, index, token, reply_to, False, err, "")
            return False
        self.busy = True
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.busy = False
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
            return False
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            self.hold(result, entry, index, token, reply_to)
            return False
        self.busy = False
        if self.aimd is not None and self.aimd.observe(time.perf_counter() - entry.t_read):
            slots[C_WINDOW] = self.aimd.window
        entry.done_one(index)  # committed: its credit is back before the reply is
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, True, result, ""))
            slots[C_TOKEN] = 0  # the reply is out: a crash now fails no caller
        return True

    def drop_expired(self, entry: OpenRecord, index: int, msg: tuple[Any, ...]) -> None:
        """A call whose deadline passed while it was queued: not run; its caller gets
        ``CallTimeout`` (reason ``"expired"``)."""
        self.expired_drops += 1
        late = time.monotonic() - msg[6]
        err = CallTimeout(f"{self.host.describe()}.{msg[3]}: dropped unrun, its deadline "
                          f"passed {late:.3f}s before its turn came", "expired")
        self.ctl.slots[C_TOKEN] = msg[1]
        if msg[1]:
            self.ctl.slots[C_REPLY_TO] = msg[2] + 1
        self.finish(entry, index, msg[1], msg[2], False, err, "")

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled; None if it has none."""
        token, deadline, _carried = self.deadline
        if not token or token != self.ctl.slots[C_TOKEN] or deadline == math.inf:
            return None
        return deadline - time.monotonic()

    def call_token(self) -> Any:
        """The token the call being handled carries (a pool call's, kept across its
        retries); None if it carries none."""
        token, _deadline, carried = self.deadline
        if not token or token != self.ctl.slots[C_TOKEN]:
            return None
        return carried

    def _async_done(self, task: asyncio.Future[Any], *, entry: OpenRecord, index: int,
                    token: int, reply_to: int) -> None:
        self.busy = False
        if task.cancelled():
            err = ActorStopped(f"{self.host.describe()}: the handler was cancelled")
            self.finish(entry, index, token, reply_to, False, err, "")
        elif (exc := task.exception()) is not None:
            self.finish(entry, index, token, reply_to, False, exc, format_remote(exc))
        else:
            self.finish(entry, index, token, reply_to, True, task.result(), "")
        self.host.run_batch()

    def finish(self, entry: OpenRecord, index: int, token: int, reply_to: int, ok: bool,
               value: Any, tb: str) -> None:
        """Count the message handled and commit it, then send the reply (or log a tell's
        error). Until the reply is out, ``C_TOKEN`` names the call whose caller a crash
        must fail."""
        slots = self.ctl.slots
        slots[C_HANDLED] += 1
        entry.done_one(index)
        slots[C_BUSY] = 0  # after the commit (see C_SEQ)
        if token:
            self.send_reply(reply_to, (OP_REPLY, token, ok, value, tb))
            slots[C_TOKEN] = 0
        elif not ok:
            self.log_tell_error(value, tb)

    def log_tell_error(self, exc: BaseException, tb: str) -> None:
        """A told message raised: nobody waits for it, so log it. The first of each kind
        (exception type and the line that raised it) with its traceback; the rest only
        counted, at 10, 100, 1000 and 10000, so that a flood does not drown the log, even
        when each message has a text of its own."""
        file, line = raised_at(exc)
        kind = (type(exc).__name__, f"{file}:{line}")
        seen = self.tell_errors.get(kind, 0)
        self.tell_errors[kind] = seen + 1
        if seen == 0:
            logger.error("%s: a told message raised (later %s raised at %s are counted, "
                         "not logged):\n%s", self.host.describe(), kind[0],
                         f"{os.path.basename(file)}:{line}", tb or exc)
        elif seen + 1 in (10, 100, 1000, 10000):
            logger.error("%s: %d told messages raised %s at %s (the last: %s)",
                         self.host.describe(), seen + 1, kind[0], kind[1],
                         str(exc)[:200])

    def send_reply(self, reply_to: int, msg: tuple[Any, ...], hold: bool = False) -> None:
        """Append a reply to the caller's channel (opened through the system if new).

        *hold*: a lone call's reply (``serve_alone``), written at once, may hold its
        doorbell back for a caller that said it would spin on it (``hold_doorbell``).
        """
        chan = self.outbound.get(reply_to)
        if chan is None:
            try:
                chan = self.open_channel(ActorRef(self, self.run_id, reply_to, "caller",
                                                  frozenset(), "actor"))
            except ActorStopped:
                return  # the caller is gone: nobody is waiting for this reply
        with chan.lock:
            if not chan.outbox and not chan.encoded:
                # The common case: written now, as its own record (the caller may be
                # spinning on it); the call itself was committed just before.
                if type(msg[3]) in SAFE_TYPES:  # plain data: marshalled (oob.load_payload)
                    body, count = _marshal([msg]), 1
                    if len(body) > self.max_inline:
                        body, count = self.encode([msg])
                else:  # an unpicklable value becomes an error reply
                    body, count = self.encode([msg])
                if chan.ring.try_write(body, count):
                    if hold and chan.ring.hdr[H_READER] == READER_EXPECTED:
                        self.hold_doorbell(chan)
                    else:
                        chan.ring_doorbell()
                    return
                chan.encoded.append((body, count))
                chan.encoded_count += count
            else:
                self.wrap_bare(chan).append(msg)
        self.dirty.add(chan)

    def describe_self(self) -> str:
        """This actor, in error messages."""
        return self.host.describe()

    def record_dead(self, method: str, reason: str) -> None:
        """Dead letters are kept by the system: tell it."""
        try:
            control.send(self.host.ctrl, (Ctl.DEAD_LETTER, method, reason[-4000:]))
        except OSError:
            logger.error("%s: %s", self.host.describe(), reason)

    def unpicklable(self, msg: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...] | None:
        """Replace a reply that cannot be pickled by an error the caller can read."""
        if msg[0] == OP_REPLY and not msg[2]:
            err = RuntimeError(f"{type(msg[3]).__name__}: {msg[3]} (the exception itself "
                               f"could not be pickled: {exc})")
            return (OP_REPLY, msg[1], False, err, msg[4])
        return super().unpicklable(msg, exc)


def tune_gc(gen0: int) -> None:
    """An actor is built: exempt what exists now from the cyclic collector, and collect
    generation 0 less often (*gen0*; 0 keeps Python's threshold).

    Handling messages allocates and frees objects all the time; with Python's defaults
    the actor ran a young collection every few hundred messages (the read-ahead queue
    alive each time) and a full one, over every module and class, of 30-50 ms every few
    hundred thousand. Frozen objects are still freed when their count drops to zero;
    only cycles among them are never collected.
    """
    if not os.environ.get("NOFREEZE"):
        gc.freeze()
    if gen0:
        _old, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0, gen1, gen2)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class Host:
    """Everything one actor process runs: boot, the loop's callbacks, stop."""

    def __init__(self, ctrl: socket.socket) -> None:
        self.ctrl = ctrl
        self.stopping = False
        self.name = "?"
        self.cls_name = "?"
        self.handlers: dict[str, Any] = {}
        self.instance: Any = None
        self.hub: ActorHub
        self.loop: asyncio.AbstractEventLoop
        self.done: asyncio.Future[None]
        self._answers: dict[int, tuple[Any, list[int]]] = {}
        self._req = 0
        self.info: Boot
        self.spec: tuple[Any, tuple[Any, ...], dict[str, Any], frozenset[str]] | None = None
        self.life: lifelock.Held | None = None  # its life lock, mapped by attach()

    def describe(self) -> str:
        """``"Counter 'c'"``."""
        return f"{self.cls_name} {self.name!r}"

    # -- boot ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Read the start message and map the control block and rings.

        A spare may first be told to prepare (``Ctl.PREPARE``, a boot message ahead of
        time, for the actor most likely to restart next): it maps everything and imports
        the class now, and takes over on ``Ctl.GO``, when that actor died; told to boot
        as another actor instead, it lets its preparation go.
        """
        prepared = False
        while True:
            got = control.recv(self.ctrl)
            if got is None:
                os._exit(EXIT_SYSTEM_GONE)
            msg, fds = got
            kind = msg[0]
            if kind == Ctl.GO and prepared:
                self.info = dataclasses.replace(self.info, restarts=msg[1])
                break
            if prepared:
                self.hub.release()
                if self.life is not None:
                    self.life.close()
                self.spec = None
                prepared = False
            assert kind in (Ctl.BOOT, Ctl.PREPARE), kind
            self.attach(msg[1], fds)
            if kind == Ctl.BOOT:
                break
            try:
                self.spec = self.read_spec()
            except Exception:  # read again at boot, where a failure is reported
                self.spec = None
            prepared = True
        self.hub.take_over()

    def attach(self, info: Boot, fds: list[int]) -> None:
        """Map the control block and the rings of the actor *info* describes."""
        self.name = info.name
        self.info = info
        multiprocessing.current_process().name = f"actorq:{self.name}"
        ctl = ControlBlock(Segment.attach(info.ctl))
        self.life = lifelock.mapped(os.path.join(SHM_DIR, info.ctl))
        self.hub = ActorHub(self, info, ctl, fds[0])
        register_hub(info.run_id, self.hub)
        for sender, (ring_name, fd_index) in info.inbound.items():
            self.hub.attach_inbound(sender, ring_name, fds[fd_index])
        for target, (ring_name, ctl_name, fd_index) in info.outbound.items():
            try:
                self.hub.attach_outbound(target, ring_name, ctl_name, fds[fd_index])
            except FileNotFoundError:
                # the target was forgotten meanwhile: the first send asks the system
                # again and hears that it is gone
                os.close(fds[fd_index])

    def read_spec(self) -> tuple[Any, tuple[Any, ...], dict[str, Any], frozenset[str]]:
        """The actor's class (imported), its arguments, and its handler names."""
        info = self.info
        spec = Segment.attach(info.spec)
        try:
            cls, args, kwargs = _serialization.loads(spec.buf[: info.spec_size])
        finally:
            spec.close()
        return cls, args, kwargs, handler_names(cls)  # ≈ 60 µs (inspect.getmembers)

    async def start_actor(self) -> None:
        """Build the actor (constructor, then ``on_start``) in this process."""
        info = self.info
        cls, args, kwargs, names = self.spec or self.read_spec()
        self.spec = None
        self.cls_name = cls.__name__
        obj = cls.__new__(cls)
        obj._actorq_ref = ActorRef(self.hub, info.run_id, info.id, self.name, names,
                                   cls.__name__)
        obj._actorq_context = ActorContext(self, self.name, info.restarts)
        self.hub.run_sync(obj.__init__, *args, **kwargs)
        started = self.hub.run_sync(obj.on_start)
        if inspect.isawaitable(started):
            await started
        self.instance = obj
        self.handlers = {name: getattr(obj, name) for name in names}
        self.handlers["receive"] = obj.receive
        tune_gc(self.hub.config.actor_gc_gen0)

    async def run(self) -> int:
        """Run the actor until it is told to stop (or the system goes away)."""
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.boot()
        # held by this (the main) thread until the process dies: the system's early
        # notice of that death (_process/lifelock.py); mapped already (attach)
        if self.life is not None:
            self.life.lock()
        hub = self.hub
        hub.loop = self.loop
        hub.loop_thread_id = _thread_id()
        self.ctrl.setblocking(False)
        try:
            await self.start_actor()
        except Exception as exc:
            self.report_failed_start(exc)
            return EXIT_FAILED_START
        self.loop.add_reader(hub.efd, self.on_wake)
        self.loop.add_reader(self.ctrl, self.on_ctrl)
        hub.ctl.slots[C_WATCH_MS] = round(hub.config.park_timeout * 1e3)  # watching
        self.loop.call_later(hub.config.park_timeout, hub.watchdog, lambda: hub.busy,
                             self.serve_lost, lambda: not self.done.done())
        control.send(self.ctrl, (Ctl.READY, os.getpid()))
        self.run_batch()
        await self.done
        await self.stop_actor()
        return 0

    def report_failed_start(self, exc: BaseException) -> None:
        """Tell the system that the constructor or ``on_start`` raised."""
        tb = format_remote(exc)
        try:
            payload: Any = exc
            _serialization.loads(_serialization.dumps_code(exc))
        except Exception:
            payload = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            control.send(self.ctrl, (Ctl.FAILED, payload, tb[-16000:]))
        except (OSError, ValueError):
            pass

    async def stop_actor(self) -> None:
        """Graceful stop: run ``on_stop``, flush what is queued to go out."""
        try:
            stopped = self.hub.run_sync(self.instance.on_stop)
            if inspect.isawaitable(stopped):
                await stopped
        except Exception:
            logger.exception("%s: on_stop raised", self.describe())
        self.hub.flush_dirty()

    # -- loop callbacks -----------------------------------------------------------------

    def on_wake(self) -> None:
        """The doorbell rang: read and handle everything there is."""
        self.hub.clear_doorbell()
        self.hub.ctl.slots[C_WAKEUPS] += 1
        if self.hub.watch_interval > self.hub.config.park_timeout:
            self.hub.watch_sooner()  # busy again after a quiet stretch
        if self.hub.parked_at:
            self.hub.note_gap(time.perf_counter() - self.hub.parked_at)
            self.hub.parked_at = 0.0
        self.hub.unpark()
        self.run_batch()

    def run_batch(self) -> None:
        """Drain, handle, flush; spin briefly for more; park when idle."""
        hub = self.hub
        slice_end = time.perf_counter() + TIME_SLICE
        while True:
            if time.perf_counter() > slice_end:
                # A busy actor still gives the loop a turn now and then: control messages
                # (a new sender's ring, stop), timers and other callbacks must run.
                if hub.held is not None:
                    hub.ring_held()
                self.loop.call_soon(self.run_batch)
                return
            if hub.waiting_chans:
                hub.grant_all()
            hub.drain(READ_AHEAD)
            if hub.queue:
                hub.pump()
            if hub.dirty:
                hub.flush_or_retry()
            if self.stopping:
                if hub.held is not None:
                    hub.ring_held()
                if not hub.busy and not self.done.done():
                    self.done.set_result(None)
                return
            if hub.busy:
                # An async handler holds the actor and its end calls us again; until
                # then park, so that the replies it awaits ring the doorbell.
                if not hub.park():
                    self.loop.call_soon(self.run_batch)
                return
            if hub.spin():
                continue
            if hub.park():
                return

    def serve_lost(self) -> None:
        """The watchdog found data nobody rang for: read it now."""
        self.hub.unpark()
        self.run_batch()

    def on_ctrl(self) -> None:
        """Control messages from the system (or EOF: the system is gone)."""
        self.poll_ctrl()

    def poll_ctrl(self) -> None:
        """Handle every control message waiting on the socket (non-blocking)."""
        while True:
            try:
                got = control.recv(self.ctrl)
            except BlockingIOError:
                return
            if got is None:
                os._exit(EXIT_SYSTEM_GONE)  # the system died: so do we, at once
            self.handle_ctrl(*got)

    def handle_ctrl(self, msg: tuple[Any, ...], fds: list[int]) -> None:
        """Act on one control message."""
        kind = msg[0]
        if kind == Ctl.STOP:
            self.stopping = True
            if not self.hub.busy and not self.done.done():
                self.done.set_result(None)
        elif kind == Ctl.INBOUND:
            self.hub.attach_inbound(msg[1], msg[2], fds[0] if fds else -1)
            self.loop.call_soon(self.run_batch)
        elif kind == Ctl.GONE:
            target, reason = msg[1], msg[2]
            self.hub.gone[target] = reason
            chan = self.hub.outbound.pop(target, None)
            if chan is not None:
                self.hub.close_channel(chan, reason)
            self.hub.fail_pending(target, lambda r: ActorStopped(f"{r.describe}: {reason}"))
        elif kind == Ctl.ANSWER:
            self._answers[msg[1]] = (msg[2], fds)
        elif kind == Ctl.WATCH:  # the system's idle sweep: the watchdog looks again now
            self.hub.watch_sooner()
        else:  # pragma: no cover
            logger.warning("unknown control message %r", kind)

    def request(self, msg: tuple[Any, ...]) -> tuple[Any, list[int]]:
        """Send a request to the system and wait for its answer (other messages meanwhile)."""
        self._req += 1
        req = self._req
        control.send(self.ctrl, (*msg[:1], req, *msg[1:]))
        deadline = Deadline.after(self.hub.config.start_timeout)
        while req not in self._answers:
            if deadline.expired():
                msg_ = f"the actor system did not answer {msg[0]!r} in {deadline.timeout:g}s"
                raise StartTimeout(msg_)
            select.select([self.ctrl], [], [], deadline.remaining())
            self.poll_ctrl()
        return self._answers.pop(req)

    # -- ContextOps ---------------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[Any]:
        """Find an actor by name through the system."""
        answer, _fds = self.request((Ctl.LOOKUP, name))
        if answer[0] != "ref":
            msg = f"no actor named {name!r}"
            raise NoSuchActor(msg)
        _kind, actor_id, handlers, cls_name = answer
        return ActorRef(self.hub, self.hub.run_id, actor_id, name, handlers, cls_name)

    def time_left(self) -> float | None:
        """Seconds until the deadline of the call being handled (None: it has none)."""
        return self.hub.time_left()

    def call_token(self) -> Any:
        """The token of the call being handled (None: it carries none)."""
        return self.hub.call_token()

    def stop_child(self, ref: ActorRef[Any]) -> None:
        """Ask the system to stop one of this actor's children for good (returns at once)."""
        answer, _fds = self.request((Ctl.STOP_CHILD, ref.actor_id))
        if answer[0] == "error":
            raise answer[1]

    def system_config(self) -> Any:
        """The system's configuration (as sent at boot)."""
        return self.hub.config

    def spawn_child(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None, restart: str,
                    group: tuple[str, int, float] | None = None) -> ActorRef[Any]:
        """Spawn a child actor through the system, supervised on this actor's behalf
        (*group*: under its supervisor ``(name, max_restarts, within)``, e.g. a pool's)."""
        options = kwargs.pop("actor_options", None)
        blob = _serialization.dumps_code((cls, args, kwargs))
        answer, _fds = self.request((Ctl.SPAWN, blob, name, restart, options, group))
        if answer[0] == "error":
            raise answer[1]
        _kind, actor_id, child_name, handlers, cls_name = answer
        return ActorRef(self.hub, self.hub.run_id, actor_id, child_name, handlers, cls_name)


def _thread_id() -> int:
    return threading.get_ident()


def _log_to_stderr_unless_configured() -> None:
    """Make actorq's warnings from this process visible when nobody configured logging.

    The library's NullHandler would otherwise swallow them (it also stops Python's
    last-resort handler); an actor process is ours, so we choose stderr, with the pid.
    """
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("actorq[%(process)d] %(levelname)s %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("actorq").addHandler(handler)


def main(ctrl: socket.socket, lineage: Lineage) -> None:
    """Entry point of every actor process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the system's to handle
    delay = float(os.environ.get("ACTORQ_TEST_START_DELAY") or 0)
    if delay:  # tests only: widen the window before the death signal is armed
        time.sleep(delay)
    deathsig.arm(lineage)  # first of all: never outlive the owner
    _log_to_stderr_unless_configured()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    host = Host(ctrl)
    profile_dir = os.environ.get("ACTORQ_PROFILE_DIR")  # debugging aid: cProfile per actor
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        code = loop.run_until_complete(host.run())
    except BaseException as exc:  # escaped every handler: say so, then die (a crash)
        try:
            control.send(ctrl, (Ctl.CRASHING, format_remote(exc)[-16000:]))
        except (OSError, ValueError):
            pass
        code = EXIT_UNCAUGHT
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"actor-{os.getpid()}.prof"))
        sys.stdout.flush()
        sys.stderr.flush()
    if code:
        os._exit(code)


if adopt_parent_path():  # in the fork server, while it starts (as actorq starts it)
    preload_main()
