"""Retry policy and retry budget: which failures are retried, when, and how many in all.

Pure decisions (the caller does the waiting): ``Retry.decide`` looks at an attempt's
outcome, the attempt number, the deadline and the expected duration of one more attempt,
and answers with the delay before the next attempt, or None (give up: raise the error).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from actorq._errors import ActorCrashed, CallTimeout
from actorq._resilience.backoff import Backoff

BUCKETS = 10  # a budget's window is counted in this many buckets


class RetryBudget:
    """Retries may be at most a share of calls over a sliding window (a storm breaker).

    A retry is allowed while ``retries < max(ratio * calls, min_per_second * window)``
    over the last *window* seconds. Without it, a failing dependency turns every call into
    ``max_attempts`` calls exactly when it can least take them.

    Args:
        ratio: retries allowed per first attempt (0.1: one retry per ten calls).
        window: seconds of history counted.
        min_per_second: retries always allowed per second, so that a quiet pool can retry.
        clock: the time source (inject a fake one in tests).
    """

    def __init__(self, ratio: float = 0.1, window: float = 10.0, min_per_second: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ratio >= 0:
            msg = f"RetryBudget ratio must be >= 0, not {ratio!r}"
            raise ValueError(msg)
        if not window > 0:
            msg = f"RetryBudget window must be positive seconds, not {window!r}"
            raise ValueError(msg)
        if not min_per_second >= 0:
            msg = f"RetryBudget min_per_second must be >= 0, not {min_per_second!r}"
            raise ValueError(msg)
        self.ratio = float(ratio)
        self.window = float(window)
        self.min_per_second = float(min_per_second)
        self.clock = clock
        self._lock = threading.Lock()
        # calls counted in BUCKETS buckets of window / BUCKETS seconds (O(1) per call);
        # retries kept as times (there are few of them, by construction)
        self._width = self.window / BUCKETS
        self._buckets = [0] * BUCKETS
        self._bucket_start = [0.0] * BUCKETS
        self._retries: deque[float] = deque()
        self.refused = 0  #: retries refused since creation

    def fresh(self) -> RetryBudget:
        """A new budget with the same settings and no history (one per pool)."""
        return RetryBudget(self.ratio, self.window, self.min_per_second, self.clock)

    def record_call(self, n: int = 1) -> None:
        """A first attempt was made (it earns ``ratio`` of a retry); *n*: that many."""
        now = self.clock()
        slot = int(now / self._width)
        i = slot % BUCKETS
        start = slot * self._width
        buckets = self._buckets
        if self._bucket_start[i] != start:  # a new period for this bucket: reset it
            with self._lock:
                if self._bucket_start[i] != start:
                    self._bucket_start[i] = start
                    buckets[i] = 0
        buckets[i] += n  # a lost increment under a race only lowers the budget a little

    def calls_in_window(self) -> int:
        """First attempts counted over the last window (to the bucket)."""
        edge = self.clock() - self.window
        return sum(n for n, start in zip(self._buckets, self._bucket_start, strict=True)
                   if start > edge)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (counted in ``refused``) if none is left."""
        now = self.clock()
        with self._lock:
            retries = self._retries
            while retries and retries[0] < now - self.window:
                retries.popleft()
            allowed = max(self.ratio * self.calls_in_window(),
                          self.min_per_second * self.window)
            if len(retries) + 1 > allowed:
                self.refused += 1
                return False
            retries.append(now)
            return True

    def __getstate__(self) -> dict[str, float]:
        return {"ratio": self.ratio, "window": self.window, "min_per_second": self.min_per_second}

    def __setstate__(self, state: dict[str, float]) -> None:
        self.__init__(state["ratio"], state["window"], state["min_per_second"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"RetryBudget(ratio={self.ratio:g}, window={self.window:g}, "
                f"min_per_second={self.min_per_second:g})")


def _default_backoff() -> Backoff:
    return Backoff(initial=0.01, maximum=1.0)


def _default_budget() -> RetryBudget:
    return RetryBudget()


@dataclass(frozen=True)
class Retry:
    """Retry transient failures with exponential backoff and full jitter.

    Args:
        max_attempts: attempts in all, the first one included (>= 1; 1 = never retry).
        backoff: the delays between attempts (``Backoff``: full jitter by default).
        retry_on: exception types retried besides crashes (``ActorCrashed``) and timeouts
            (``CallTimeout``), which always are. Anything else is permanent: raised at once.
        budget: a ``RetryBudget`` shared by every call of the pool (default: 10 % of the
            calls over 10 s, at least 1 retry a second), or None for no budget.

    A retry that could not finish before the call's deadline (its delay plus the expected
    duration of an attempt) is not started: the call fails with the last error instead.
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=_default_backoff)
    retry_on: tuple[type[BaseException], ...] = ()
    budget: RetryBudget | None = field(default_factory=_default_budget, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            msg = f"max_attempts must be an int >= 1, not {self.max_attempts!r}"
            raise ValueError(msg)
        if not isinstance(self.backoff, Backoff):
            msg = f"backoff must be an actorq.Backoff, not {self.backoff!r}"
            raise TypeError(msg)
        kinds = tuple(self.retry_on) if isinstance(self.retry_on, Iterable) else (self.retry_on,)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                msg = f"retry_on must hold exception types, not {kind!r}"
                raise TypeError(msg)
        object.__setattr__(self, "retry_on", kinds)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            msg = f"budget must be an actorq.RetryBudget or None, not {self.budget!r}"
            raise TypeError(msg)

    def is_transient(self, exc: BaseException) -> bool:
        """True for crashes, timeouts and the ``retry_on`` types."""
        return isinstance(exc, (ActorCrashed, CallTimeout, *self.retry_on))

    def decide(self, exc: BaseException, attempt: int, *, now: float,
               deadline: float | None, expected: float = 0.0,
               budget: RetryBudget | None = None) -> float | None:
        """After attempt number *attempt* (1-based) failed with *exc*: the delay before the
        next attempt, or None to give up.

        Gives up on a permanent error, after ``max_attempts``, when the next attempt
        (delay + *expected* seconds) cannot finish by *deadline*, or when *budget* (the
        pool's copy of ``self.budget``) refuses: checked last, so that only retries that
        would really happen spend it.
        """
        if not self.is_transient(exc) or attempt >= self.max_attempts:
            return None
        delay = self.backoff.delay(attempt - 1)
        if deadline is not None and now + delay + expected >= deadline:
            return None
        if budget is not None and not budget.try_spend():
            return None
        return delay


Retry.__module__ = "actorq"
RetryBudget.__module__ = "actorq"
