"""What every part of a hub shares: its state, its flags, and its subclasses' hooks.

``Hub`` (``_core/hub.py``) is put together from the parts that work on this state, one
class and module each, every one a ``HubState``: ``sending.py``, ``creditline.py``,
``outbox.py``, ``receiving.py`` and ``parking.py`` (the map is in ``hub.py``). A part
uses only this state, these hooks and the parts it derives from, so each can be read,
and type-checked, on its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from actorq._clock import Deadline
from actorq._config import SystemConfig
from actorq._core.reply import Reply
from actorq._transport.channel import ControlBlock, InChannel, OpenRecord, OutChannel, SegmentNamer
from actorq._transport.oob import BlockPool

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef

_NO_KWARGS: dict[str, Any] = {}  # shared, never mutated: for messages without keywords


class InboundChannels(dict[int, InChannel]):
    """A hub's inbound channels by sender id, with ``all``: a tuple of them, kept up to
    date by every change, for the paths that look at each ring on every wake-up and
    every message (``drain``, ``spin``, ``has_unread``): ``tuple(d.values())`` costs
    about 1.1k instructions, an attribute read a few dozen. Changes are rare (a sender's
    first message, a stop)."""

    __slots__ = ("all",)

    def __init__(self) -> None:
        super().__init__()
        self.all: tuple[InChannel, ...] = ()

    def __setitem__(self, sender: int, chan: InChannel) -> None:
        super().__setitem__(sender, chan)
        self.all = tuple(self.values())

    def __delitem__(self, sender: int) -> None:
        super().__delitem__(sender)
        self.all = tuple(self.values())

    def pop(self, sender: int, *default: Any) -> Any:
        """``dict.pop``, keeping ``all`` up to date."""
        try:
            return super().pop(sender, *default)
        finally:
            self.all = tuple(self.values())

    def clear(self) -> None:
        """``dict.clear``, keeping ``all`` up to date."""
        super().clear()
        self.all = ()

    def _unsupported(self, *_args: Any, **_kwargs: Any) -> Any:
        msg = "InboundChannels: change it with [] =, del, pop() or clear()"
        raise TypeError(msg)

    update = setdefault = popitem = __ior__ = _unsupported


class HubState:
    """The state of one process's channels, and the hooks that ``SystemHub`` and
    ``ActorHub`` fill in (the parts of ``Hub`` call them)."""

    may_deadlock = False  # True where waiting on a reply can be a self-wait (actors)
    spins = False  # True: a sync wait starts with wait_spin (the user's process)
    idle_backoff = False  # True: an idle hub's watchdog looks less often (actors)
    busy_backoff = False  # True: a woken hub's watchdog looks less often (the system's)
    # True: a thread that sends a lone call spins on the reply's ring next, and says so
    # beforehand (``READER_EXPECTED``: the user's process; an actor waits differently)
    expects_readers = False
    swept = False  # True: the system's idle sweep watches it (actors): backed off, it stops
    times_reads = False  # True: drain stamps each record it queues (an adaptive window)

    def __init__(self, hub_id: int, run_id: str, config: SystemConfig, ctl: ControlBlock,
                 efd: int) -> None:
        # the class's flags that every call reads (``Reply.result``, ``_send_now``), as
        # the instance's own: read through an instance, a class attribute is a lookup
        # the interpreter does not specialise (~150 instructions each)
        self.may_deadlock = self.may_deadlock
        self.spins = self.spins
        self.expects_readers = self.expects_readers
        self.id = hub_id
        self.run_id = run_id
        self.config = config
        self.ctl = ctl
        self.efd = efd
        self.namer = SegmentNamer(run_id)
        self.pool = BlockPool(self.namer)  # reused blocks for out-of-band buffers
        self.inbound = InboundChannels()
        self.outbound: dict[int, OutChannel] = {}
        self.pending: dict[int, Reply[Any]] = {}
        self.burst = 0  # calls that tried the latency path since a caller last waited
        self.gone: dict[int, str] = {}  # actor id -> why it is gone for good
        self.dirty: set[OutChannel] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread_id: int | None = None
        self.flush_scheduled = False
        self.drain_lock = threading.Lock()
        self.waiting_chans: set[OutChannel] = set()  # channels with producers in line
        self._rr = 0  # where the next drain starts
        # records whose calls and tells wait to be handled, in order (only actors handle
        # calls; each record knows the next of its messages to take up), and how many
        # messages they held when queued (the read-ahead bound, ``drain(limit)``)
        self.queue: deque[OpenRecord] = deque()
        self.queued = 0
        self._outbox_fast = config.outbox_messages - 1  # tell's fast path fills up to this
        self.unsettled = False  # the last settling flush skipped a growing outbox
        self.max_inline = config.ring_size // 2 - 8  # bigger records take the spill path
        # the lost wake-up watchdog (``watchdog``): its next look, and how far it backed off
        self.watch_handle: asyncio.TimerHandle | None = None
        self.watch_interval = config.park_timeout
        self.watch_seen = -1  # the wake-up count at its last look
        self.watch_busy = False  # the interval was lengthened because wake-ups came
        self.watch_args: tuple[Any, ...] = ()

    def open_channel(self, ref: ActorRef[Any]) -> OutChannel:
        """Return a channel to *ref*'s actor, creating it if needed."""
        raise NotImplementedError

    def may_block(self) -> bool:
        """True if the current thread may wait (not on a running event loop)."""
        raise NotImplementedError

    def wait_reply(self, reply: Reply[Any], deadline: Deadline) -> None:
        """Block until *reply* is done or *deadline* passes."""
        raise NotImplementedError

    def waiting_would_deadlock(self, reply: Reply[Any]) -> bool:
        """True if waiting on *reply* here can never end."""
        return False

    def timeout_hint(self, reply: Reply[Any]) -> str:
        """Extra words for a ``CallTimeout`` about *reply*."""
        return ""
