"""The caller's instructions per call: a pool call against a direct ref call (callgrind).

    python benchmarks/callgrind_pool_call.py --count [MODE...]   # runs callgrind itself
    python benchmarks/callgrind_pool_call.py MODE N              # N calls, once

Deterministic: the pool and its one member are driven in one thread over real
shared-memory rings (``msgpath_harness.Harness``), with the real user-process hub
(``SystemHub``: its ``wait_reply`` and ``wait_spin`` read the reply, as a synchronous
caller does) and no loop thread. Each call is::

    reply = target.echo(i)      # counted: the call, routing, the send
    <the member reads the call, runs echo, writes the reply>    # not counted
    reply.result()              # counted: the wait, reading the reply, done-callbacks

The counted parts run inside ``operator.call`` (a C function nothing else calls here),
and callgrind collects only there (``--toggle-collect=_operator_call``): what is counted
is exactly the calling thread's share of a call, which in the running system is split
between the caller and the hub's loop thread in proportions that change run to run (the
reason counts of a whole process were not repeatable). Two runs, of 200 and 1,200 calls;
their difference per call removes the set-up and the first calls.

Modes: ref (the member's ref), default (a pool with no retry, no circuit), retry,
circuit_retry, least_loaded, fastest, hash (``key=`` per call, a new int each
time), hash_repeat (the keys cycle through ``REPEAT_KEYS`` ints), timeout (a pool with a
deadline per call), ref_token (the member's ref, each call carrying a token as a pool's
first attempt does: ``call_with(token=...)``, the kernel's share of a retry pool's cost).
``MODE@actor`` (e.g. ``--count ref@actor retry@actor``) counts the member's side of each
call instead (reading the call, running ``echo``, writing the reply), which the wall
clock of a pool call includes.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

from msgpath_harness import READ_AHEAD, Harness
from msgpath_harness import callgrind_total as harness_total

import actorq
from actorq._routing.pool import _rebuild_pool
from actorq._runtime.systemhub import SystemHub
from actorq.bench.suites.pool import REPEAT_KEYS  # hash_repeat's keys, as the suite's

MODES = ("ref", "default", "retry", "circuit_retry", "least_loaded", "fastest", "hash",
         "timeout", "ref_token", "hash_repeat")
SIZES = (200, 1200)


def make_system_hub(prefix: str, config: Any, ctl: Any, efd: int) -> SystemHub:
    """The user process's hub, without its loop thread."""
    return SystemHub(prefix, config, ctl, efd, lambda actor_id: None)


class TokenRef:
    """``echo`` through ``ref.call_with`` with a token, as a pool's first attempt sends."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self.n = 0

    def echo(self, x: Any) -> Any:
        self.n += 1
        return self.ref.call_with("echo", (x,), token=f"bench/1234/{self.n}")


def target_of(h: Harness, mode: str) -> Any:
    """The ref, or a pool whose one member is the harness's actor."""
    if mode == "ref":
        return h.ref
    if mode == "ref_token":
        return TokenRef(h.ref)
    options: dict[str, Any] = {
        "default": {}, "least_loaded": {"routing": "least_loaded"},
        "fastest": {"routing": "fastest"}, "hash": {"routing": "hash"},
        "hash_repeat": {"routing": "hash"},
        "retry": {"retry": actorq.Retry()},
        "circuit_retry": {"circuit": actorq.CircuitBreaker(), "retry": actorq.Retry()},
        "timeout": {"timeout": 600.0}}[mode]
    return _rebuild_pool("bench", "Sink", h.ref.handlers, [h.ref],
                         options.get("routing", "round_robin"), options.get("circuit"),
                         options.get("retry"), options.get("timeout"))


def member_side(receiver: Any) -> None:
    """The member reads the call, runs ``echo`` and writes the reply."""
    receiver.drain(READ_AHEAD)
    if receiver.queue:
        receiver.pump()
    receiver.flush_dirty()


def _direct(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def calls(h: Harness, target: Any, n: int, start: int, keyed: int,
          actor: bool = False) -> None:
    """*n* calls; *keyed*: with ``key=`` (1: a new key each call, n: the keys cycle
    through n ints). Counted (inside ``operator.call``): the caller's parts, or with
    *actor* the member's part instead."""
    call, member = (_direct, operator.call) if actor else (operator.call, _direct)
    echo = target.echo
    receiver = h.receiver
    for i in range(start, start + n):
        reply = call(echo, i, key=i % keyed if keyed > 1 else i) if keyed else call(echo, i)
        member(member_side, receiver)
        value = call(reply.result, 10.0)
        if value != i:
            msg = f"call {i} answered {value!r}"
            raise RuntimeError(msg)


def run(mode: str, n: int) -> None:
    """*n* calls of *mode*; ``MODE@actor``: the member's side is counted instead."""
    mode, _, side = mode.partition("@")
    actor = side == "actor"
    h = Harness(make_system_hub)
    try:
        target = target_of(h, mode)
        keyed = {"hash": 1, "hash_repeat": REPEAT_KEYS}.get(mode, 0)
        calls(h, target, 50, 0, keyed, actor)  # warm: caches filled, methods bound
        calls(h, target, n, 50, keyed, actor)
        if hasattr(target, "halt"):
            target.halt()
    finally:
        h.close()


def callgrind_total(mode: str, n: int) -> int:
    """Instructions the counted parts of *n* calls took."""
    return harness_total(mode, n, script=__file__)


def count(mode: str) -> float:
    """The caller's instructions per call in *mode*."""
    small, large = SIZES
    return (callgrind_total(mode, large) - callgrind_total(mode, small)) / (large - small)


if __name__ == "__main__":
    if sys.argv[1] == "--count":
        modes = sys.argv[2:] or list(MODES[1:])
        base = "ref@actor" if modes[0].endswith("@actor") else "ref"
        ref = count(base)
        print(f"{base:14s} {ref:8.0f} instructions/call  1.000x ref", flush=True)
        for m in modes:
            ins = count(m)
            print(f"{m:14s} {ins:8.0f} instructions/call  {ins / ref:.3f}x ref", flush=True)
    else:
        run(sys.argv[1], int(sys.argv[2]))
