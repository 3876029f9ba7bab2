"""Dead letters: messages that could not be delivered or that poisoned their actor."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that was not handled: to whom, what, why and when (``time.time()``)."""

    target: str
    method: str
    reason: str
    time: float
    message: Any = None


class DeadLetters:
    """A bounded store (oldest dropped first); ``total`` counts every letter ever added."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._letters: deque[DeadLetter] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, target: str, method: str, reason: str, message: Any = None) -> None:
        """Keep a letter."""
        with self._lock:
            self._letters.append(DeadLetter(target, method, reason, time.time(), message))
            self.total += 1

    def snapshot(self) -> list[DeadLetter]:
        """The letters kept, oldest first."""
        with self._lock:
            return list(self._letters)


DeadLetter.__module__ = "actorq"
