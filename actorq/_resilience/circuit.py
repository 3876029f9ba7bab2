"""CircuitBreaker: a per-target state machine that stops calls to a failing target.

::

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(reset_timeout passed; the next allow())──▶ half_open
    half_open ──(a probe succeeds)──▶ closed
    half_open ──(a probe fails)──▶ open (the reset timer starts again)

We count *consecutive* failures, not a failure rate over a window: it needs no window
to size, it reacts within ``failure_threshold`` calls to a member that fails every call
(a crashed or wedged process), and a member that fails now and then (a bad input) never
opens, which is what a rate threshold tuned low would get wrong. A success resets the
count.

Pure: no threads, no I/O; the clock is injected, so tests drive it. A lock makes every
method atomic, because a pool completes calls on the system's loop thread while users
call from theirs. Two attributes, ``closed`` and ``settled``, are racy snapshots kept
beside the state for a caller's hot path to read without the lock (a pool's, per call).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from actorq._errors import ActorCrashed, CallTimeout

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    """Stops calls to a target that keeps failing, and probes it again later.

    Args:
        failure_threshold: consecutive failures that open the circuit (>= 1).
        reset_timeout: seconds the circuit stays open before letting probes through (> 0).
        half_open_max_calls: probe calls allowed at once while half open (>= 1).
        failure_on: exception types that count as failures besides crashes
            (``ActorCrashed``) and timeouts (``CallTimeout``), which always do. Other
            exceptions raised by the handler are the caller's problem, not the target's:
            they count as successes (the target answered).
        clock: the time source (``time.monotonic``; inject a fake one in tests).

    A pool takes one breaker as a template and gives each member a fresh copy of it
    (``fresh()``).
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 10.0,
                 half_open_max_calls: int = 1,
                 failure_on: Iterable[type[BaseException]] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) \
                or failure_threshold < 1:
            msg = f"failure_threshold must be an int >= 1, not {failure_threshold!r}"
            raise ValueError(msg)
        if not isinstance(reset_timeout, (int, float)) or not reset_timeout > 0:
            msg = f"reset_timeout must be positive seconds, not {reset_timeout!r}"
            raise ValueError(msg)
        if isinstance(half_open_max_calls, bool) or not isinstance(half_open_max_calls, int) \
                or half_open_max_calls < 1:
            msg = f"half_open_max_calls must be an int >= 1, not {half_open_max_calls!r}"
            raise ValueError(msg)
        kinds = tuple(failure_on)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                msg = f"failure_on must hold exception types, not {kind!r}"
                raise TypeError(msg)
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.half_open_max_calls = half_open_max_calls
        self.failure_on: tuple[type[BaseException], ...] = kinds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probes = 0  # probe calls in flight while half open
        #: how many times each transition happened: ``"closed->open"`` etc.
        self.transitions: dict[str, int] = {}
        #: A racy snapshot, read without the lock: True while the state is closed (no
        #: open -> half open due by time is seen here; ``state`` and ``allow`` see it).
        #: Written only under the lock, with the state; read it as a hint (a call that
        #: reads a stale True is let through, as it would have been a moment earlier).
        self.closed = True
        #: A racy snapshot, read without the lock: True while closed with no failure
        #: counted, so that ``record_success`` would change nothing (a caller may skip it).
        self.settled = True

    def fresh(self) -> CircuitBreaker:
        """A new breaker with the same settings and no history (one per pool member)."""
        return CircuitBreaker(self.failure_threshold, self.reset_timeout,
                              self.half_open_max_calls, self.failure_on, self.clock)

    # -- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open turns half open once due)."""
        with self._lock:
            self._tick()
            return self._state

    def next_probe_at(self) -> float:
        """When an open circuit lets its next probe through (clock time); now if not open."""
        with self._lock:
            self._tick()
            return self._opened_at + self.reset_timeout if self._state == OPEN else self.clock()

    def available(self) -> bool:
        """True if ``allow()`` would let a call through now (without taking a probe slot)."""
        with self._lock:
            self._tick()
            if self._state == CLOSED:
                return True
            return self._state == HALF_OPEN and self._probes < self.half_open_max_calls

    def is_failure(self, exc: BaseException | None) -> bool:
        """Does this outcome count against the target? (None: a success.)"""
        if exc is None:
            return False
        return isinstance(exc, (ActorCrashed, CallTimeout, *self.failure_on))

    # -- the protocol: allow, then record the outcome -----------------------------------------

    def allow(self) -> bool:
        """Ask to send one call; True if it may go (a half-open probe takes a slot)."""
        with self._lock:
            self._tick()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and self._probes < self.half_open_max_calls:
                self._probes += 1
                return True
            return False

    def cancel(self) -> None:
        """A call ``allow()`` let through was not made after all: give back its probe slot
        (half open); no outcome is recorded."""
        with self._lock:
            if self._state == HALF_OPEN and self._probes > 0:
                self._probes -= 1

    def record(self, exc: BaseException | None) -> None:
        """Record the outcome of a call that ``allow()`` let through."""
        if self.is_failure(exc):
            self.record_failure()
        else:
            self.record_success()

    def record_success(self) -> None:
        """The target answered: a half-open circuit closes, the failure count resets."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                self._move(CLOSED)
            self._failures = 0
            self.settled = self._state == CLOSED

    def record_failure(self) -> None:
        """The target failed (crash, timeout, or a ``failure_on`` type)."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                self._open()
            elif self._state == CLOSED:
                self._failures += 1
                self.settled = False
                if self._failures >= self.failure_threshold:
                    self._open()
            # already open: a late outcome of a call sent before it opened; nothing to do

    def trip(self) -> None:
        """The target is gone (a pool member its supervisor gave up on): open now,
        whatever the count, until ``probe_now`` or the reset timeout."""
        with self._lock:
            if self._state != OPEN:
                self._open()
            else:
                self._opened_at = self.clock()

    def probe_now(self) -> None:
        """A new target took the place of the old one (a replacement member): half open
        at once, so that the next calls probe it instead of waiting for the reset timeout."""
        with self._lock:
            if self._state == OPEN:
                self._probes = 0
                self._move(HALF_OPEN)

    # -- internals (lock held) ------------------------------------------------------------------

    def _tick(self) -> None:
        if self._state == OPEN and self.clock() >= self._opened_at + self.reset_timeout:
            self._probes = 0
            self._move(HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._failures = 0
        self._move(OPEN)

    def _move(self, state: str) -> None:
        key = f"{self._state}->{state}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self._state = state
        self.closed = state == CLOSED
        self.settled = self.closed and self._failures == 0

    def __getstate__(self) -> dict[str, Any]:
        # pickles as its settings (a pool shipped to an actor starts with fresh circuits)
        return {"args": (self.failure_threshold, self.reset_timeout,
                         self.half_open_max_calls, self.failure_on)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["args"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"<CircuitBreaker {self.state} threshold={self.failure_threshold} "
                f"reset_timeout={self.reset_timeout:g}s>")


CircuitBreaker.__module__ = "actorq"
