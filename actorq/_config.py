"""System configuration: timeouts, mailbox sizes and limits, with ``ACTORQ_*`` overrides.

Every tunable a user may need is a field of :class:`SystemConfig`; its default can be
overridden through the environment variable ``ACTORQ_<FIELD>`` (upper case), and an
explicit keyword to :class:`actorq.ActorSystem` wins over both.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

START_METHODS = ("forkserver", "fork", "spawn")


def _env(name: str, default: Any) -> Any:
    var = f"ACTORQ_{name.upper()}"
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        return type(default)(raw)
    except ValueError:
        kind = "an integer (plain digits)" if isinstance(default, int) else (
            "a number" if isinstance(default, float) else "a string")
        msg = f"environment variable {var} must be {kind}, not {raw!r}"
        raise ValueError(msg) from None


# Lower bounds of the numeric fields: (minimum, inclusive?). Timeouts and periods must be
# positive; counts may be 0 where 0 means "none" (no spares, no parking, no restarts).
_BOUNDS: dict[str, tuple[float, bool]] = {
    "call_timeout": (0, False), "send_timeout": (0, False), "start_timeout": (0, False),
    "stop_timeout": (0, False), "park_timeout": (0, False), "monitor_interval": (0, False),
    "root_within": (0, False), "spin_seconds": (0, True), "window": (1, True),
    "oob_threshold": (1, True), "outbox_messages": (1, True), "max_parked": (0, True),
    "warm_spares": (0, True), "root_max_restarts": (0, True), "dead_letters": (0, True),
    "actor_gc_gen0": (0, True), "ring_size": (4096, True),
}


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """Tunables of one :class:`actorq.ActorSystem`.

    Attributes:
        start_method: ``"forkserver"`` (default: fast, no fork-with-threads hazard),
            ``"fork"`` or ``"spawn"``.
        call_timeout: seconds a ``Reply.result()`` without a timeout waits.
        send_timeout: seconds a synchronous send waits for mailbox credit before
            raising ``Backpressure``.
        start_timeout: seconds an actor process may take to start.
        stop_timeout: seconds a graceful stop may take before SIGKILL.
        ring_size: bytes of each shared-memory ring (one per sender process and actor).
            A record may use at most half of it; larger ones take the spill path.
        window: credit window in messages per channel (sent but not yet handled).
        oob_threshold: buffers (numpy arrays, bytearrays) at least this large travel
            out of band in their own shared-memory block and are read without a copy.
        spin_seconds: how long a consumer polls before parking on its doorbell (an actor
            spins that long only while recent gaps between bursts were shorter; a
            synchronous caller waiting for a reply spins four times that).
        park_timeout: a parked consumer re-checks its rings after this long, as a
            safety net; a wake-up found this way is counted as ``lost_wakeups``. An
            idle actor's re-check backs off while nothing comes, and stops where it
            would reach 100 times this; the system then re-checks it at that pace.
        outbox_messages: a burst is flushed as one record once it holds this many
            messages (or at the end of the loop iteration, or before a wait).
        max_parked: messages sent from a running event loop may wait ("park") for
            credit, at most this many per channel; past it they raise ``Backpressure``.
        warm_spares: processes kept started and idle, to take a crashed actor's place
            (a restart then costs no process start).
        root_max_restarts: the root supervisor gives up on an actor restarted more
            than this many times ...
        root_within: ... within this many seconds (the actor is then stopped for good).
        monitor_interval: how often hang timeouts and memory limits are checked.
        dead_letters: how many dead letters are kept (oldest dropped first).
        stopped_kept: how many actors stopped for good (or failed) the system keeps
            reporting in ``metrics()["actors"]`` (oldest forgotten first, with their
            shared memory), so that a long-running service that restarts parents does
            not grow.
        actor_gc_gen0: the garbage collector's generation-0 threshold in actor
            processes (Python's default is 700; 0 keeps it). Each actor also freezes
            (``gc.freeze()``) what exists once it is built, so full collections scan
            only what it made since: they took 30-50 ms per run here otherwise.
    """

    start_method: str = field(default_factory=lambda: _env("start_method", "forkserver"))
    call_timeout: float = field(default_factory=lambda: _env("call_timeout", 60.0))
    send_timeout: float = field(default_factory=lambda: _env("send_timeout", 10.0))
    start_timeout: float = field(default_factory=lambda: _env("start_timeout", 30.0))
    stop_timeout: float = field(default_factory=lambda: _env("stop_timeout", 3.0))
    ring_size: int = field(default_factory=lambda: _env("ring_size", 1 << 20))
    window: int = field(default_factory=lambda: _env("window", 8192))
    oob_threshold: int = field(default_factory=lambda: _env("oob_threshold", 64 * 1024))
    spin_seconds: float = field(default_factory=lambda: _env("spin_seconds", 200e-6))
    park_timeout: float = field(default_factory=lambda: _env("park_timeout", 0.1))
    outbox_messages: int = field(default_factory=lambda: _env("outbox_messages", 256))
    max_parked: int = field(default_factory=lambda: _env("max_parked", 8192))
    warm_spares: int = field(default_factory=lambda: _env("warm_spares", 1))
    root_max_restarts: int = field(default_factory=lambda: _env("root_max_restarts", 3))
    root_within: float = field(default_factory=lambda: _env("root_within", 5.0))
    monitor_interval: float = field(default_factory=lambda: _env("monitor_interval", 0.05))
    dead_letters: int = field(default_factory=lambda: _env("dead_letters", 1000))
    stopped_kept: int = field(default_factory=lambda: _env("stopped_kept", 1000))
    actor_gc_gen0: int = field(default_factory=lambda: _env("actor_gc_gen0", 10_000))

    def __post_init__(self) -> None:
        if self.start_method not in START_METHODS:
            msg = f"start_method must be one of {START_METHODS}, not {self.start_method!r}"
            raise ValueError(msg)
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name, (low, inclusive) in _BOUNDS.items():
            value = getattr(self, name)
            whole = types[name] in ("int", int)
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                msg = f"{name} must be {'an integer' if whole else 'a number'}, not {value!r}"
                raise TypeError(msg)
            if value != value or value < low or (value == low and not inclusive):  # NaN too
                bound = f"at least {low}" if inclusive else "positive"
                msg = f"{name} must be {bound}, not {value!r}"
                raise ValueError(msg)
        if self.ring_size & 7:
            msg = f"ring_size must be a multiple of 8 and at least 4096, not {self.ring_size}"
            raise ValueError(msg)

    def replace(self, **changes: Any) -> SystemConfig:
        """Return a copy with *changes* applied (unknown names raise ``TypeError``)."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = set(changes) - set(known)
        if unknown:
            words = []
            for name in sorted(unknown):
                close = difflib.get_close_matches(name, known, n=1)
                words.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            msg = (f"unknown ActorSystem option(s): {', '.join(words)}; the options are the "
                   "fields of actorq.SystemConfig")
            raise TypeError(msg)
        return dataclasses.replace(self, **changes)

