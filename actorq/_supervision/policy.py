"""What counts as a crash, how it is classified, and per-actor options.

Causes of death (``ActorCrashed.cause``, logs, metrics, ``restart_on``):

    signal      killed by a signal (SIGKILL, SIGSEGV, ...) that actorq did not send
    exit        the process exited (os._exit, sys.exit from outside a handler, ...)
    exception   an exception escaped every handler (a BaseException such as SystemExit)
    hang        a handler ran past ``hang_timeout``: actorq killed the process
    oom         the process went over ``max_rss``: actorq killed it
    start       the constructor or ``on_start`` raised
    lost        the process vanished without an exit status
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, get_args


class CrashCause(StrEnum):
    """Why an actor's process died (the table above). Compares equal to its string."""

    SIGNAL = "signal"
    EXIT = "exit"
    EXCEPTION = "exception"
    HANG = "hang"
    OOM = "oom"
    START = "start"
    LOST = "lost"


#: ``restart=`` of spawn: always restarted, only after an abnormal end, never.
RestartType = Literal["permanent", "transient", "temporary"]
#: A supervisor's strategy: which siblings restart with a crashed child.
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
#: What a supervisor decided about a failed child (reported through ``SupervisorOps``).
SupervisorDecision = Literal["restarted", "gave_up", "escalated"]

CAUSES = frozenset(cause.value for cause in CrashCause)
RESTART_TYPES: tuple[str, ...] = get_args(RestartType)
STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass(frozen=True)
class ActorOptions:
    """Per-actor runtime options: set ``actor_options`` on the class, or pass it to spawn.

    Args:
        hang_timeout: seconds a single handler may run; past it the process is killed and
            restarted (cause ``"hang"``). None: no limit.
        max_rss: bytes of resident memory the process may use; past it the process is
            killed and restarted (cause ``"oom"``). None: no limit.
        restart_on: causes after which a permanent or transient actor is restarted
            (default: all but ``"start"``: a constructor that raised would raise again).
        redeliver: give the message being handled at a crash to the restarted instance
            (instead of failing its caller with ``ActorCrashed``).
        poison_after: with ``redeliver``, a message that crashed the actor this many times
            in a row goes to the dead letters and its caller gets ``ActorCrashed``.
        window_target: turn the adaptive credit window on, with this target (seconds)
            for the p99 of the time a message spends in the actor (read to handled):
            above it the window halves, under it the window grows by ``window_step``.
            None (default): the window is fixed at the system's ``window``.
        window_min: the adaptive window never goes below this.
        window_max: ... nor above this (default: the system's ``window``).
        window_step: additive increase per healthy period.
    """

    hang_timeout: float | None = None
    max_rss: int | None = None
    restart_on: frozenset[str] = field(default=CAUSES - {"start"})
    redeliver: bool = False
    poison_after: int = 3
    window_target: float | None = None
    window_min: int = 8
    window_max: int | None = None
    window_step: int = 16

    def __post_init__(self) -> None:
        if self.window_target is not None and self.window_target <= 0:
            msg = f"window_target must be positive seconds, not {self.window_target}"
            raise ValueError(msg)
        if self.window_min < 1 or (self.window_max is not None
                                   and self.window_max < self.window_min):
            msg = f"need 1 <= window_min <= window_max (got {self.window_min}, {self.window_max})"
            raise ValueError(msg)
        unknown = set(self.restart_on) - CAUSES
        if unknown:
            msg = f"restart_on has unknown causes {sorted(unknown)}; known: {sorted(CAUSES)}"
            raise ValueError(msg)
        object.__setattr__(self, "restart_on", frozenset(self.restart_on))
        if self.hang_timeout is not None and self.hang_timeout <= 0:
            msg = f"hang_timeout must be positive, not {self.hang_timeout}"
            raise ValueError(msg)
        if self.max_rss is not None and self.max_rss <= 0:
            msg = f"max_rss must be positive, not {self.max_rss}"
            raise ValueError(msg)
        if self.poison_after < 1:
            msg = f"poison_after must be at least 1, not {self.poison_after}"
            raise ValueError(msg)


def classify_exit(code: int | None, killed_for: str | None,
                  reported: str | None) -> CrashCause:
    """Return the cause of a death from the exit code and what we know of it.

    *killed_for* is set when actorq itself killed the process (``"hang"``, ``"oom"``);
    *reported* when the process said why before dying (``"exception"``, ``"start"``).
    """
    if killed_for is not None:
        return CrashCause(killed_for)
    if reported is not None:
        return CrashCause(reported)
    if code is None:
        return CrashCause.LOST
    return CrashCause.SIGNAL if code < 0 else CrashCause.EXIT


def describe_exit(code: int | None) -> str:
    """Words for an exit code: ``"was killed by SIGKILL"``, ``"exited with code 3"``."""
    if code is None:
        return "vanished (no exit status)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def should_restart(restart: str, cause: str, code: int | None, options: ActorOptions) -> bool:
    """Decide, by restart type and cause, whether a dead actor is started again."""
    if restart == "temporary" or cause not in options.restart_on:
        return False
    if restart == "transient":
        return not (cause == "exit" and code == 0)
    return True


ActorOptions.__module__ = "actorq"
