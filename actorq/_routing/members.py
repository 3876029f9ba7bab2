"""A pool's members: picking one for a call (router and circuits), counting what each
was sent, and the membership changing under the calls (grow, shrink, lost, replaced).

``MemberSet`` is the state every part of a pool shares (its lock, members, figures) and
what changes it; the call path (``calls``), idempotency, autoscaling and the ref-like
surface (``pool``) are built on it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actorq._config import SystemConfig
from actorq._core.reply import Reply
from actorq._errors import ActorStopped, CallTimeout, CircuitOpen
from actorq._resilience.backoff import Backoff
from actorq._resilience.circuit import CircuitBreaker
from actorq._resilience.retry import Retry, RetryBudget
from actorq._routing.hosts import PoolHost
from actorq._routing.metrics import MemberStatistics, failure_kind
from actorq._routing.routers import Router
from actorq._routing.scheduler import SCHEDULER

if TYPE_CHECKING:
    from actorq._core.ref import ActorRef, Sender

logger = logging.getLogger("actorq")

EWMA_ALPHA = 0.2
REPLACE_QUIET = 60.0  # seconds without a lost member after which replacing starts afresh


def default_replace_backoff() -> Backoff:
    """Delays before replacing lost members: the n-th loss in a row waits up to
    ``min(30, 0.1 * 2**n)`` seconds (full jitter), so a member that always crashes at
    start costs a few spawns a minute, not a spin."""
    return Backoff(initial=0.1, maximum=30.0)


class PoolMember:
    """A pool member: its ref, circuit and the pool's own figures for it."""

    __slots__ = ("breaker", "calls", "ewma", "failures", "hub", "id", "in_flight", "lost",
                 "ref", "retired", "seen_waits", "slot")

    def __init__(self, ref: ActorRef[Any], slot: int, breaker: CircuitBreaker | None) -> None:
        self.ref = ref
        self.id = ref.actor_id
        self.slot = slot
        self.breaker = breaker
        self.in_flight = 0
        self.ewma = 0.0
        self.calls = 0  # sent to it: ok + failures + in flight
        self.failures: dict[str, int] = {}
        self.retired = False  # resized away
        self.lost = False  # its supervisor gave up on it: out of the routing, being replaced
        self.seen_waits = 0  # credit waits + backpressure on its channel at the last look
        # what its ref sends through (its process's hub), once known (``attach``): the
        # pool sends a routed call there itself, its method checked already
        self.hub: Sender | None = None

    def attach(self) -> Sender:
        """The hub its ref sends through (``ActorStopped`` if its system is not here)."""
        hub = self.hub = self.ref._get_hub()
        return hub

    def took(self, elapsed: float) -> None:
        """Fold a call's *elapsed* seconds into the latency EWMA (under the pool's lock)."""
        ewma = self.ewma
        self.ewma = elapsed if ewma == 0.0 else ewma + EWMA_ALPHA * (elapsed - ewma)

    @property
    def ok(self) -> int:
        """Calls it answered well: every call sent to it ends once, well or failed, and
        is in flight until then (counted from the others, not once more per call)."""
        return self.calls - self.in_flight - sum(self.failures.values())

    def stats(self) -> MemberStatistics:
        b = self.breaker
        return MemberStatistics(self.ref.name, self.id, self.calls, self.ok,
                                dict(self.failures), self.in_flight, self.ewma,
                                b.state if b is not None else "closed",
                                dict(b.transitions) if b is not None else {})


class MemberSet:
    """A pool's members and the state its parts share (set up by ``PoolCore``)."""

    # the state below, as slots: attribute reads on the call path are the cheapest kind
    __slots__ = ("_args", "_budget", "_budget_told", "_busy_ticks", "_calls", "_candidates",
                 "_closed",
                 "_config", "_due", "_due_at", "_expiring", "_host", "_idem_done",
                 "_idem_running", "_idem_size", "_idem_ttl",
                 "_idle_since", "_kwargs", "_lock", "_lost_at", "_lost_streak", "_make_hook",
                 "_members", "_owner", "_pick_first", "_replace_backoff", "_resize_lock",
                 "_retired_stats", "_router",
                 "_stats", "_stopped", "_succeeded", "_timers", "_token_prefix", "circuit",
                 "cls",
                 "idle_timeout", "max_size", "min_size", "name", "retry", "timeout")

    name: str
    cls: Any
    min_size: int
    max_size: int
    idle_timeout: float
    circuit: CircuitBreaker | None
    retry: Retry | None
    timeout: float | None
    _host: PoolHost
    _config: SystemConfig
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _router: Router
    _token_prefix: str
    _timers: object
    _budget: RetryBudget | None
    _budget_told: int  # calls the retry budget has been told of (``_count_call``)
    _lock: threading.Lock
    # a first attempt's pick and hook (calls.pick_first, and None: ``first_outcome`` bound
    # to its context), or the same in C (actorq/_native/_pool.c), chosen at construction
    _pick_first: Callable[[MemberSet, Any], PoolMember | None]
    _make_hook: Callable[..., Callable[[Reply[Any], Any, BaseException | None], bool]] | None
    _members: list[PoolMember]
    _candidates: list[PoolMember]
    _stopped: bool
    _owner: bool
    _stats: dict[str, int]  # the figures of PoolStatistics, but for these two:
    _calls: int  # calls made (first attempts): slots, not _stats entries, as they are
    _succeeded: int  # counted on every call (an attribute is read faster than a dict)
    _retired_stats: list[MemberStatistics]
    _idem_ttl: float
    _idem_size: int
    _idem_running: dict[Any, Reply[Any]]
    _idem_done: OrderedDict[Any, tuple[float, Reply[Any]]]
    _busy_ticks: int
    _idle_since: float
    _resize_lock: threading.Lock
    _replace_backoff: Backoff
    _lost_streak: int
    _lost_at: float
    # calls with a deadline, oldest first, and when the sweep's timer is set for
    # (deadlines.py); the CallTimeout its sweep is failing a reply with, now (or None)
    _due: deque[tuple[float, Reply[Any], str, float]]
    _due_at: float
    _expiring: BaseException | None
    # every member's circuit is closed (or there are none): the router sees them all.
    # Only the pool moves its breakers into and out of "closed" (record, trip), and it
    # refreshes this after each (``_circuits_changed``); open -> half open is by time,
    # between two states that are not closed.
    _closed: bool

    def resize(self, n: int) -> None:
        """Grow or shrink to *n* members now. Shrinking retires the least busy members,
        wherever they sit: lost ones (being replaced) first, then idle ones, then those
        with the fewest calls in flight; leaving members finish the calls they have
        (calls still queued for them are retried on the others). A ``(min, max)`` pool
        keeps scaling within its bounds afterwards."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            msg = f"a pool's size must be an int >= 1, not {n!r}"
            raise ValueError(msg)
        self._check_owner("resize")
        self._check_open()
        with self._resize_lock:
            have = len(self._members)
            if n > have:
                self._grow(n - have)
            elif n < have:
                self._shrink(self._least_busy(have - n))

    def retire(self, ref: ActorRef[Any]) -> None:
        """Take the member *ref* out of the pool: no new calls go to it, the calls it has
        finish, then it is stopped; the pool is one smaller (for a caller that routes
        itself, such as the job graph, and knows which member it no longer needs).

        ``ValueError`` if *ref* is not a member or is the last one, ``ActorStopped`` if
        the pool is stopped. Blocks until the member is gone."""
        self._check_owner("retire")
        self._check_open()
        with self._resize_lock:
            with self._lock:
                member = next((m for m in self._members if m.id == ref.actor_id), None)
                size = len(self._members)
            if member is None:
                msg = f"{ref!r} is not a member of pool {self.name!r}"
                raise ValueError(msg)
            if size == 1:
                msg = f"{ref!r} is the last member of pool {self.name!r}: stop the pool instead"
                raise ValueError(msg)
            self._shrink([member])

    def _least_busy(self, n: int) -> list[PoolMember]:
        """The *n* members a shrink retires: lost ones first (no process to wait for),
        then the fewest calls in flight (idle ones before busy ones), the last slots on a
        tie (as a pool shrank before it chose)."""
        with self._lock:
            order = sorted(self._members, key=lambda m: (not m.lost, m.in_flight, -m.slot))
        return order[:n]

    def _describe(self, method: str | None = None) -> str:
        """``"pool 'name'.method"``, for error messages (the outer replies' ``describe``)."""
        return f"pool {self.name!r}.{method}" if method else f"pool {self.name!r}"

    def _check_open(self) -> None:
        if self._stopped:
            msg = f"pool {self.name!r} is stopped"
            raise ActorStopped(msg)

    def _check_owner(self, what: str) -> None:
        if not self._owner:
            msg = (f"{what}() is for the process that created pool {self.name!r}; this is "
                   "a copy that was sent to another process (it can call the members)")
            raise RuntimeError(msg)


    def _uncount(self, member: PoolMember) -> None:
        """Take back the counts of a bare call that could not be sent."""
        with self._lock:
            member.in_flight -= 1
            member.calls -= 1
            self._calls -= 1

    def _bare_failed(self, member: PoolMember, exc: BaseException, elapsed: float) -> None:
        """A call without retry failed (``bare_outcome``, ``call_member``)."""
        self._finished(member, exc, elapsed)
        if isinstance(exc, CallTimeout) and exc.reason == "expired":
            self._stats_inc("expired_drops")
        elif isinstance(exc, ActorStopped) and not member.retired:
            self._member_lost(member)
        self._stats_inc("failed")

    def _pick(self, key: Any, avoid: PoolMember | None, *, first: bool = False
              ) -> PoolMember | None:
        """Choose a member whose circuit lets the call through; count it in flight.
        *first*: a call's first attempt, which is counted as a call, picked or not
        (as ``_count_call`` does, under the same lock)."""
        sync = False
        with self._lock:
            if first:
                calls = self._calls = self._calls + 1
                sync = not calls & 15 and self._budget is not None
            candidates = self._candidates
            if not self._closed:  # some circuit is not closed: ask each (one read if not)
                candidates = [m for m in candidates
                              if m.breaker is not None and m.breaker.available()]
            if avoid is not None and len(candidates) > 1 and not self._router.needs_key:
                candidates = [m for m in candidates if m is not avoid] or candidates
            member: PoolMember | None = None
            if candidates:
                member = self._router.choose(candidates, key)
                breaker = member.breaker
                if breaker is not None and not breaker.closed and not breaker.allow():
                    member = None  # pragma: no cover - raced for the last half-open probe
                else:
                    member.in_flight += 1
                    member.calls += 1
        if sync:
            self._budget_sync()
        return member

    def _release(self, member: PoolMember) -> None:
        """A member was picked but nothing came of it (bad input, or a tell): undo."""
        with self._lock:
            member.in_flight -= 1
            member.calls -= 1
        if member.breaker is not None:
            member.breaker.cancel()  # a half-open probe slot it took is given back

    def _finished(self, member: PoolMember, exc: BaseException | None,
                  elapsed: float | None) -> None:
        with self._lock:
            member.in_flight -= 1
            if elapsed is not None and (exc is None or not isinstance(exc, ActorStopped)):
                member.took(elapsed)
            if exc is not None:
                kind = failure_kind(exc)
                member.failures[kind] = member.failures.get(kind, 0) + 1
        if member.breaker is not None and not member.lost:  # a lost one's circuit stays open
            member.breaker.record(exc)
            self._circuits_changed()

    def _circuits_changed(self) -> None:
        """A breaker may have left or entered "closed": refresh ``_closed``."""
        self._closed = all_closed(self._candidates)

    def _count_call(self) -> None:
        """A call (its first attempt) is made. The retry budget is told of calls 16 at a
        time (and before each retry decision, ``_budget_sync``), not once per call: a
        pool call costs one count, and the budget sees every call by the time it decides
        (dated at most 15 calls late)."""
        with self._lock:
            calls = self._calls = self._calls + 1
        if not calls & 15 and self._budget is not None:
            self._budget_sync()

    def _budget_sync(self) -> None:
        """Tell the retry budget of the calls made since it was last told."""
        budget = self._budget
        if budget is None:
            return
        with self._lock:
            calls = self._calls
            n = calls - self._budget_told
            self._budget_told = calls
        if n > 0:
            budget.record_call(n)

    def _stats_inc(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def _circuit_open_error(self, method: str, last: BaseException | None = None
                            ) -> CircuitOpen:
        with self._lock:
            breakers = [m.breaker for m in self._candidates if m.breaker is not None]
        if not breakers:
            msg = f"pool {self.name!r}.{method}: no member can take the call"
            if last is not None:  # a retry found none: say why the last attempt failed
                msg += f" (its last attempt: {type(last).__name__}: {last})"
            err = CircuitOpen(msg)
            err.__cause__ = last
            return err
        due = min(b.next_probe_at() for b in breakers)
        wait = max(0.0, due - breakers[0].clock())
        msg = (f"pool {self.name!r}.{method}: the circuit of every member "
               f"({len(breakers)}) is open; the next probe is due in {wait:.2f}s")
        err = CircuitOpen(msg)
        err.__cause__ = last
        return err

    # -- membership ----------------------------------------------------------------------------

    def _member_lost(self, member: PoolMember) -> bool:
        """*member* is gone for good (its supervisor gave up on it, or it answered
        ``ActorStopped``): take it out of the routing, open its circuit, and replace it
        after a backoff. False if the pool or its host is stopped (nothing to replace)."""
        if self._stopped or not self._host.running():
            return False
        now = time.monotonic()
        with self._lock:
            if member.lost or member.retired or member not in self._members:
                return True
            member.lost = True
            self._candidates = [m for m in self._members if not (m.retired or m.lost)]
            if now - self._lost_at > REPLACE_QUIET:
                self._lost_streak = 0
            self._lost_at = now
            delay = self._replace_backoff.delay(self._lost_streak)
            self._lost_streak += 1
            self._stats["lost"] += 1
        if member.breaker is not None:
            member.breaker.trip()
            self._circuits_changed()
        logger.warning("pool %r: member %r is gone for good; replacing it in %.3fs",
                       self.name, member.ref.name, delay)
        ref = weakref.ref(self)

        def replace() -> None:
            pool = ref()
            if pool is not None:
                pool._replace(member)

        # spawning may wait (for an actor's loop, for the system): off the scheduler
        SCHEDULER.call_later(delay, lambda: threading.Thread(
            target=replace, name="actorq-pool-replace", daemon=True).start(), self._timers)
        return True

    def _replace(self, member: PoolMember) -> None:
        """Start a new member in *member*'s slot (scheduler thread). It keeps the slot's
        circuit, half open: its first calls are probes."""
        if self._stopped or not self._host.running():
            return
        with self._resize_lock:
            with self._lock:
                if member not in self._members:
                    return  # resized away meanwhile
            try:
                ref = self._host.spawn_member(self.cls, self._args, dict(self._kwargs),
                                              f"{self.name}-{member.slot}")
            except ActorStopped:
                return  # the host stopped meanwhile
            except Exception:
                logger.exception("pool %r: replacing member %r failed", self.name,
                                 member.ref.name)
                return
            new = PoolMember(ref, member.slot, member.breaker)
            with self._lock:
                self._members[self._members.index(member)] = new
                self._routing_changed()
                self._retired_stats.append(member.stats())
                self._stats["replaced"] += 1
        if new.breaker is not None:
            new.breaker.probe_now()

    def _grow(self, n: int) -> None:
        for _ in range(n):
            with self._lock:  # the first free slot: a shrink may have left a gap
                used = {m.slot for m in self._members}
                slot = next(i for i in range(len(used) + 1) if i not in used)
            ref = self._host.spawn_member(self.cls, self._args, dict(self._kwargs),
                                          f"{self.name}-{slot}")
            breaker = self.circuit.fresh() if self.circuit is not None else None
            with self._lock:
                self._members.append(PoolMember(ref, slot, breaker))
                self._members.sort(key=lambda m: m.slot)
                self._routing_changed()
        if self._members and n and len(self._members) > self.min_size:
            self._stats_inc("grown")

    def _shrink(self, leaving: list[PoolMember]) -> None:
        with self._lock:
            for m in leaving:
                m.retired = True
            self._members = [m for m in self._members if not m.retired]
            self._routing_changed()
            self._stats["shrunk"] += 1
        # Calls already sent to them are let finish first (no new ones come: they are
        # out of the routing), bounded by the stop timeout; then they are stopped.
        end = time.monotonic() + self._config.stop_timeout
        while any(m.in_flight for m in leaving) and time.monotonic() < end:
            time.sleep(0.005)
        for m in leaving:
            try:
                self._host.stop_member(m.ref)
            except ActorStopped:
                if not m.lost:
                    raise  # a lost member is gone already: nothing to stop
            with self._lock:
                self._retired_stats.append(m.stats())

    def _routing_changed(self) -> None:
        """The members changed (under the lock): the router and the candidates follow."""
        self._candidates = [m for m in self._members if not (m.retired or m.lost)]
        self._router.resized([m.id for m in self._members], [m.slot for m in self._members])

def on_lost_weakly(pool: MemberSet) -> Callable[[int], None]:
    """``on_lost(actor_id)`` for the host to call, holding the pool weakly."""
    ref = weakref.ref(pool)

    def on_lost(actor_id: int) -> None:
        alive = ref()
        if alive is None:
            return
        with alive._lock:
            member = next((m for m in alive._members if m.id == actor_id), None)
        if member is not None:
            alive._member_lost(member)

    return on_lost


def all_closed(members: list[PoolMember]) -> bool:
    """True if every member's circuit is closed (``breaker.closed``, a snapshot read
    without locks: a closed circuit lets every call through, and one that is opening is
    seen at the next call)."""
    for m in members:  # noqa: SIM110 - a plain loop: no generator per call
        if m.breaker is not None and not m.breaker.closed:
            return False
    return True
