"""Backoff: exponential delays with full jitter, bounded; pure (rng injected).

``RestartAtOnce()`` is a supervisor's default (``backoff=None``): the first restart
within its window at once, the next ones after ``Backoff()``'s delays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (the AWS architecture blog's "full jitter").

    The n-th delay (n from 0) is drawn uniformly from ``[0, min(maximum, initial *
    multiplier**n)]``: spreading retries over the whole window keeps restarts and retries
    of many actors from arriving in lock-step.

    Args:
        initial: cap of the first delay, seconds.
        maximum: cap of every delay, seconds.
        multiplier: growth of the cap per attempt.
        jitter: ``"full"`` (uniform in [0, cap]) or ``"none"`` (exactly the cap).
        rng: source of randomness (inject a seeded ``random.Random`` in tests).
    """

    initial: float = 0.01
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: str = "full"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            msg = f"Backoff delays must be >= 0 (initial={self.initial}, maximum={self.maximum})"
            raise ValueError(msg)
        if self.multiplier < 1:
            msg = f"Backoff multiplier must be >= 1, not {self.multiplier}"
            raise ValueError(msg)
        if self.jitter not in ("full", "none"):
            msg = f"Backoff jitter must be 'full' or 'none', not {self.jitter!r}"
            raise ValueError(msg)

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay before attempt number *attempt* (0-based)."""
        if attempt < 0:
            msg = f"attempt must be >= 0, not {attempt}"
            raise ValueError(msg)
        # min() before pow overflow: past ~1000 doublings the float would be inf anyway
        exponent = min(attempt, 1000)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, attempt: int) -> float:
        """Draw the delay before attempt number *attempt* (0-based)."""
        cap = self.cap(attempt)
        return cap if self.jitter == "none" else self.rng.uniform(0.0, cap)


Backoff.__module__ = "actorq"


@dataclass(frozen=True)
class RestartAtOnce(Backoff):
    """No delay before the first attempt (*attempt* 0), then ``Backoff``'s delays from
    its start: attempt *n* waits ``Backoff.delay(n - 1)``.

    A supervisor's default. A first crash is not a crash loop, and a delay would only
    add to the restart (a default ``Backoff()`` drew it from [0, 10 ms]: about 5 ms on a
    median restart of 3.4 ms; OTP restarts at once); the delays, and their jitter, are
    for an actor that dies again within the supervisor's window.
    """

    def delay(self, attempt: int) -> float:
        """0 for *attempt* 0; else ``Backoff.delay(attempt - 1)``."""
        return 0.0 if attempt == 0 else super().delay(attempt - 1)
