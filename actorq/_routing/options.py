"""A pool's options: their validation (before anything starts) and the members' options."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry
from actorq._routing.routers import ROUTINGS
from actorq._supervision.policy import ActorOptions

SCALE_TARGET = 1e9  # seconds: the adaptive window of an autoscaling pool's members never shrinks
SCALE_WINDOW = 8  # default credit window of an autoscaling pool's members

# Reserved keywords of a pool call (not passed to the handler; see ``Pool.call``).
RESERVED = ("key", "timeout", "idempotency_key")


def hang_options(cls: type, timeout: float | None, hang_margin: float,
                 kwargs: dict[str, Any], scale_window: int | None = None) -> Any:
    """The members' ``ActorOptions``: a hang timeout of *timeout* + *hang_margin* when
    the pool has a timeout, and a credit window of *scale_window* messages for an
    autoscaling pool (calls beyond it wait for credit: the signal to grow); None when
    neither applies, or the caller passed ``actor_options``. A class's own hang timeout
    or adaptive window is kept."""
    if not (isinstance(hang_margin, (int, float)) and hang_margin > 0):
        msg = f"hang_margin must be positive seconds, not {hang_margin!r}"
        raise ValueError(msg)
    if scale_window is not None and (isinstance(scale_window, bool) or not isinstance(
            scale_window, int) or scale_window < 1):
        msg = f"scale_window must be an int >= 1, not {scale_window!r}"
        raise ValueError(msg)
    if "actor_options" in kwargs:
        return None
    base = getattr(cls, "actor_options", None) or ActorOptions()
    changes: dict[str, Any] = {}
    if timeout is not None and base.hang_timeout is None:
        changes["hang_timeout"] = timeout + hang_margin
    if scale_window is not None and base.window_target is None:
        # a fixed window: the adaptive one pinned (its target is never exceeded)
        changes.update(window_target=SCALE_TARGET, window_min=scale_window,
                       window_max=scale_window)
    return dataclasses.replace(base, **changes) if changes else None



def validate_options(size: int | tuple[int, int] | None, routing: str,
                     circuit: CircuitBreaker | None, retry: Retry | None,
                     timeout: float | None, idle_timeout: float, oversubscribe: bool) -> None:
    """Raise ``ValueError``/``TypeError`` for bad pool options, before anything starts."""
    if routing not in ROUTINGS:
        msg = f"routing must be one of {', '.join(ROUTINGS)}; not {routing!r}"
        raise ValueError(msg)
    if circuit is not None and not isinstance(circuit, CircuitBreaker):
        msg = f"circuit must be an actorq.CircuitBreaker or None, not {circuit!r}"
        raise TypeError(msg)
    if retry is not None and not isinstance(retry, Retry):
        msg = f"retry must be an actorq.Retry or None, not {retry!r}"
        raise TypeError(msg)
    check_timeout(timeout, "timeout")
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) \
            or not idle_timeout > 0:
        msg = f"idle_timeout must be positive seconds, not {idle_timeout!r}"
        raise ValueError(msg)
    parse_size(size, oversubscribe)



def check_timeout(timeout: float | None, what: str) -> None:
    """``ValueError`` for a timeout that is not positive seconds (None is fine)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        msg = f"{what} must be positive seconds, not {timeout!r}"
        raise ValueError(msg)


def parse_size(size: int | tuple[int, int] | None, oversubscribe: bool) -> tuple[int, int]:
    """``(min, max)`` from an int, a pair, or None (the cores)."""
    cores = os.cpu_count() or 1
    if size is None:
        return cores, cores
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            msg = f"a pool's size must be >= 1, not {size}"
            raise ValueError(msg)
        return size, size
    if isinstance(size, tuple) and len(size) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in size):
        lo, hi = size
        if not 1 <= lo <= hi:
            msg = f"a pool's size (min, max) needs 1 <= min <= max, not {size}"
            raise ValueError(msg)
        if not oversubscribe and hi > cores:
            hi = max(lo, cores)  # never beyond the cores unless asked
        return lo, hi
    msg = f"a pool's size must be an int or a (min, max) pair of ints, not {size!r}"
    raise TypeError(msg) if not isinstance(size, (int, tuple)) else ValueError(msg)

