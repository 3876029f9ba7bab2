"""Monotonic deadlines: public methods take ``timeout=`` once, inner layers take a deadline."""

from __future__ import annotations

import time

_monotonic = time.monotonic


class Deadline:
    """An absolute point on ``time.monotonic()``'s clock.

    A plain slotted class, not a frozen dataclass: one is built for every synchronous
    call, and a frozen dataclass's ``__init__`` costs a microsecond here.
    """

    __slots__ = ("at", "timeout")

    def __init__(self, at: float, timeout: float) -> None:
        self.at = at
        self.timeout = timeout

    @classmethod
    def after(cls, timeout: float) -> Deadline:
        """Return the deadline *timeout* seconds from now."""
        return cls(_monotonic() + timeout, timeout)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return time.monotonic() >= self.at
