"""What counts as a crash, how it is classified, and whether it is restarted.

Causes of death (``CrashCause``: ``ActorCrashed.cause``, events, metrics, ``restart_on``):

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
from typing import Literal, get_args

from actorq._core.actor import ActorOptions
from actorq._core.events import CAUSES, CrashCause

#: ``restart=`` of spawn: always restarted, only after an abnormal end, never.
RestartType = Literal["permanent", "transient", "temporary"]
#: A supervisor's strategy: which siblings restart with a crashed child.
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
#: What a supervisor decided about a failed child (reported through ``SupervisorOps``).
SupervisorDecision = Literal["restarted", "gave_up", "escalated"]

RESTART_TYPES: tuple[str, ...] = get_args(RestartType)
STRATEGIES: tuple[str, ...] = get_args(Strategy)


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


__all__ = ["CAUSES", "RESTART_TYPES", "STRATEGIES", "ActorOptions", "CrashCause", "RestartType",
           "Strategy", "SupervisorDecision", "classify_exit", "describe_exit", "should_restart"]
