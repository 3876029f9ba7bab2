"""The overload suite's parameters (full and ``--quick``), its bounds on every wait,
and the names of its cases (the verdicts, the plot and the tests refer to them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIB = 2**20
REPLY_TIMEOUT = 60.0  # every wait is bounded: a wedged consumer fails the run, never hangs it
JOIN_TIMEOUT = 5.0
MIN_SLEEP = 0.001  # a paced producer ahead of schedule sleeps at least this long

FULL: dict[str, Any] = {
    "cost_us": 200.0, "offered_x": 10.0, "overload_s": 20.0, "interval_s": 0.25,
    "warmup_s": 1.0, "threads": 4, "producer_procs": 2, "unloaded_s": 1.5,
    "unloaded_repeats": 3, "adaptive_target_s": 0.05, "window": None,
    "rss_growth_mib": 5.0, "tells": 200_000, "tell_warmup": 20_000, "fast_repeats": 7,
    "drain_timeout_s": 120.0, "ray_max_pending": 1024, "open_channels_first": True,
}
# Seconds, for CI and a first look: a 1.5 s overload shows the shape, not the figures.
QUICK: dict[str, Any] = {
    **FULL, "overload_s": 1.5, "warmup_s": 0.3, "interval_s": 0.1, "unloaded_s": 0.3,
    "unloaded_repeats": 1, "tells": 10_000, "tell_warmup": 1000, "fast_repeats": 2,
    "drain_timeout_s": 60.0,
}
REPEAT_KEYS = ("unloaded_repeats", "fast_repeats")

# The cases; verdicts and the plot refer to them by these names.
FIXED = "actorq fixed window"
ADAPTIVE = "actorq adaptive window"
MPQ = "mp.Queue (unbounded)"
RAY = "Ray max_pending_calls"
CASES = (FIXED, ADAPTIVE, MPQ, RAY)
UNLOADED_ACTORQ = "actorq consumer unloaded"
UNLOADED_MPQ = "mp.Queue consumer unloaded"
FAST_ON = "tell, flow control on"
FAST_OFF = "tell, flow control off"
COLORS = {FIXED: "tab:blue", ADAPTIVE: "tab:green", MPQ: "tab:red", RAY: "tab:purple"}


def system_options(p: Mapping[str, Any]) -> dict[str, Any]:
    """No warm spare (its start would compete for the CPUs during a run)."""
    options: dict[str, Any] = {"warm_spares": 0, "call_timeout": REPLY_TIMEOUT}
    if p.get("window") is not None:
        options["window"] = p["window"]
    return options
