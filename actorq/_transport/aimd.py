"""Adaptive credit window: AIMD on the tail of the time messages spend in an actor.

The receiver measures, per message, the time from reading its record to finishing its
handler (queueing inside the actor plus handling: what a bigger window makes longer).
Every ``period`` samples it takes the p99: above the target, the window is halved
(multiplicative decrease); at or under it, the window grows by ``increase`` (additive
increase), always within [minimum, maximum]. TCP's AIMD, with latency as the signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AIMDWindow:
    """The controller; feed it with ``observe(seconds)``; read ``window``."""

    target: float  # p99 seconds
    minimum: int = 8
    maximum: int = 8192
    increase: int = 16
    decrease: float = 0.5
    period: int = 128
    window: int = 0
    _samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            msg = f"need 1 <= minimum <= maximum (got {self.minimum}, {self.maximum})"
            raise ValueError(msg)
        if self.target <= 0 or not 0 < self.decrease < 1:
            msg = f"need target > 0 and 0 < decrease < 1 (got {self.target}, {self.decrease})"
            raise ValueError(msg)
        if not self.window:
            # Start low and grow: a window starting at the maximum lets the first burst
            # queue a maximum's worth of messages that no later decrease takes back.
            self.window = min(self.maximum, max(self.minimum, 4 * self.increase))

    def observe(self, seconds: float) -> bool:
        """Record one message's time; True when the window changed."""
        samples = self._samples
        samples.append(seconds)
        if len(samples) < self.period:
            return False
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        samples.clear()
        old = self.window
        if p99 > self.target:
            self.window = max(self.minimum, int(self.window * self.decrease))
        else:
            self.window = min(self.maximum, self.window + self.increase)
        return self.window != old
