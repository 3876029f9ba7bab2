"""A pool's figures: per member and per pool (``pool.statistics()``, ``system.metrics()``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actorq._errors import ActorCrashed, ActorStopped, CallTimeout

STAT_NAMES = ("calls", "succeeded", "failed", "retries", "budget_refusals",
              "circuit_open_rejections", "expired_drops", "deadline_timeouts",
              "idempotent_joins", "idempotent_hits", "grown", "shrunk", "lost", "replaced")


@dataclass(frozen=True)
class MemberStatistics:
    """One member's figures: calls sent, successes, failures by kind, circuit."""

    name: str
    actor_id: int
    calls: int
    ok: int
    failures: dict[str, int]
    in_flight: int
    latency_ewma: float
    circuit: str
    circuit_transitions: dict[str, int]


@dataclass(frozen=True)
class PoolStatistics:
    """A pool's figures (``pool.statistics()``, and ``system.metrics()["pools"]``)."""

    name: str
    size: int
    routing: str
    calls: int
    succeeded: int
    failed: int
    retries: int
    budget_refusals: int
    circuit_open_rejections: int
    expired_drops: int
    deadline_timeouts: int
    idempotent_joins: int
    idempotent_hits: int
    grown: int
    shrunk: int
    lost: int
    replaced: int
    replacing: int
    members: list[MemberStatistics] = field(default_factory=list)


def failure_kind(exc: BaseException) -> str:
    """``"crash:signal"``, ``"timeout"``, ``"stopped"``, or the exception's type name."""
    if isinstance(exc, ActorCrashed):
        return f"crash:{exc.cause}"
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, ActorStopped):
        return "stopped"
    return type(exc).__name__
