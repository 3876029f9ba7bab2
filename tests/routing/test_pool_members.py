"""A pool keeps its members: replacing those their supervisor gave up on, with real
SIGKILLs and members that crash as they start."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import actorq
from actorq.testing import wait_until


class Member(actorq.Actor):
    def __init__(self, poison: str = "") -> None:
        if poison and os.path.exists(poison):  # dies as it starts, each time
            os.kill(os.getpid(), signal.SIGKILL)

    def pid(self) -> int:
        return os.getpid()


def slot_of(pool, ref) -> int:
    return pool.members().index(ref)


def test_a_member_its_supervisor_gave_up_on_is_replaced_and_the_pool_keeps_its_size(system):
    pool = system.pool(Member, size=2, max_restarts=0, routing="round_robin",
                       circuit=actorq.CircuitBreaker(failure_threshold=5, reset_timeout=60.0))
    first, second = pool.members()
    os.kill(first.pid().result(timeout=20), signal.SIGKILL)  # max_restarts=0: given up
    wait_until(lambda: pool.statistics().replaced == 1, timeout=30)
    stats = pool.statistics()
    assert (stats.size, stats.lost, stats.replacing) == (2, 1, 0)
    new, kept = pool.members()
    assert kept == second
    assert new != first
    slot = next(m for m in stats.members if m.actor_id == new.actor_id)
    assert slot.circuit == "half_open"  # the slot's circuit: its first calls probe it
    assert slot.circuit_transitions == {"closed->open": 1, "open->half_open": 1}
    assert any(m.actor_id == first.actor_id for m in stats.members)  # kept, for the figures
    pids = {pool.pid().result(timeout=20) for _ in range(6)}
    assert new.pid().result(timeout=20) in pids  # it takes calls
    assert pool.circuits()[new.name] == "closed"  # the probe closed it
    assert system.metrics()["pools"][pool.name]["replaced"] == 1


def test_a_member_that_always_crashes_at_start_is_replaced_at_the_backoffs_pace(
        system, tmp_path):
    poison = str(tmp_path / "poison")
    # jitter "none": the first replacement after 10 ms, the next one after 1000 s
    pace = actorq.Backoff(initial=0.01, multiplier=100_000.0, maximum=3600.0, jitter="none")
    pool = system.pool(Member, poison, size=2, max_restarts=0, replace_backoff=pace,
                       circuit=actorq.CircuitBreaker(failure_threshold=5, reset_timeout=60.0))
    first, second = pool.members()
    pids = [first.pid().result(timeout=20), second.pid().result(timeout=20)]  # both up
    open(poison, "w").close()  # from now on a new member dies as it starts
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: pool.statistics().lost == 2, timeout=30)  # its replacement died too
    stats = pool.statistics()
    assert (stats.replaced, stats.replacing, stats.size) == (1, 1, 2)  # no spin: waiting
    assert pool.circuits()[pool.members()[0].name] == "open"
    assert {pool.pid().result(timeout=20) for _ in range(4)} == {pids[1]}  # to the well one
    events = system.metrics()["system"]["events"]
    assert events["gave_up"] == 2


class Boss(actorq.Actor):
    """Runs a pool of its own children with the pool's restart policy."""

    def __init__(self) -> None:
        self.pool = self.context.pool(Member, size=2, name="crew", max_restarts=3,
                                      within=600.0, retry=actorq.Retry(max_attempts=3))

    def members(self):
        return self.pool.members()

    def pids(self, n: int) -> list[int]:
        return sorted({self.pool.pid().result(timeout=20) for _ in range(n)})

    def stats(self):
        return self.pool.statistics()


def test_an_actors_pool_restarts_its_members_by_the_pools_policy_and_replaces_lost_ones(
        system):
    events: list[actorq.ActorEvent] = []
    system.subscribe(events.append)
    boss = system.spawn(Boss)
    first, second = boss.members().result(timeout=30)

    def started(ref) -> int:
        return sum(1 for e in events if e.kind == "started" and e.actor_id == ref.actor_id)

    # the actor's own children supervisor gives up after 1 restart in 5 s; the pool's
    # supervisor takes 3 (within 600 s), each counted against that member alone
    for restarts in range(1, 5):  # the 4th crash is one too many
        wait_until(lambda n=restarts: started(first) == n, timeout=30)
        os.kill(first.pid().result(timeout=20), signal.SIGKILL)
    wait_until(lambda: any(e.kind == "gave_up" and e.actor_id == first.actor_id
                           for e in events), timeout=30)
    decided = [(e.kind, e.supervisor) for e in events
               if e.actor_id == first.actor_id and e.kind in ("restarted", "gave_up")]
    assert decided == [("restarted", "crew")] * 3 + [("gave_up", "crew")]
    # the actor's pool hears of it from its next call to the lost member (retried
    # elsewhere) and replaces it
    assert boss.pids(6).result(timeout=30) == [second.pid().result(timeout=20)]
    wait_until(lambda: boss.stats().result(timeout=20).replaced == 1, timeout=30)
    new, kept = boss.members().result(timeout=20)
    assert kept == second
    assert new not in (first, second)
    assert len(boss.pids(8).result(timeout=30)) == 2  # both members take calls again


class NoSetup(actorq.Actor):
    def __init__(self) -> None:
        raise ValueError("no setup here")

    def work(self) -> int:
        return 1


def test_a_plain_pool_with_every_member_lost_raises_circuit_open_at_once(system, tmp_path):
    """A pool without retry or circuit whose members are all gone for good (being
    replaced) raises at the call site; it used to raise while holding the pool's lock,
    which the error's text takes again: the call never returned."""
    poison = str(tmp_path / "poison")
    pace = actorq.Backoff(initial=3600.0, maximum=3600.0, jitter="none")  # no replacement
    pool = system.pool(Member, poison, size=1, max_restarts=0, replace_backoff=pace)
    only = pool.members()[0]
    os.kill(only.pid().result(timeout=20), signal.SIGKILL)
    wait_until(lambda: pool.statistics().replacing == 1, timeout=30)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            pool.pid()
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "the call did not return"
    assert len(outcome) == 1
    assert isinstance(outcome[0], actorq.CircuitOpen)
    assert "no member can take the call" in str(outcome[0])


def test_when_no_member_can_start_the_circuit_open_error_names_why(system):
    """Members whose constructor raises are replaced, not retried forever; a call ends
    in ``CircuitOpen`` that names its last attempt's error and chains it."""
    pool = system.pool(NoSetup, size=2, retry=actorq.Retry(max_attempts=3))
    with pytest.raises(actorq.CircuitOpen, match=r"no member can take the call \(its last "
                       r"attempt: .*failed to start: ValueError: no setup here\)") as info:
        pool.work().result(timeout=60)
    assert isinstance(info.value.__cause__, actorq.ActorqError)
    assert "no setup here" in str(info.value.__cause__)

class Sleeper(actorq.Actor):
    def hold(self, release: str) -> int:
        """Busy until *release* exists (bounded), then return the pid."""
        end = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < end:
            time.sleep(0.01)
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()


def test_shrinking_retires_the_idle_members_wherever_they_sit(system, tmp_path):
    pool = system.pool(Sleeper, size=4, routing="round_robin")
    a, b, c, d = pool.members()
    release = str(tmp_path / "release")
    busy = [pool.call_member(a, "hold", release), pool.call_member(c, "hold", release)]
    pool.resize(2)  # b and d are idle: they go, not the last two slots (c has a call)
    assert pool.members() == [a, c]
    Path(release).touch()
    assert {r.result(timeout=30) for r in busy} == {a.pid().result(timeout=20),
                                                   c.pid().result(timeout=20)}
    stats = pool.statistics()
    assert (stats.size, stats.shrunk) == (2, 1)
    assert {m.actor_id for m in stats.members} >= {b.actor_id, d.actor_id}  # kept, for figures
    for gone in (b, d):
        with pytest.raises(actorq.ActorStopped):
            gone.pid().result(timeout=20)
    pool.resize(3)  # the first free slot (b's) is taken again; members stay in slot order
    first, new, third = pool.members()
    assert (first, third) == (a, c)
    assert new not in (a, b, c, d)


def test_a_call_queued_on_a_member_resized_away_is_sent_to_another(tmp_path):
    # a pool without retry: the member retired keeps its first call past the stop
    # timeout and is stopped with a second one queued; that call goes to the other
    # member (docs/concepts.md, resizes), it does not fail with ActorStopped
    with actorq.ActorSystem(stop_timeout=0.5) as system:
        pool = system.pool(Sleeper, size=2, routing="round_robin")
        a, b = pool.members()
        system.wait_ready(a)
        system.wait_ready(b)
        release = str(tmp_path / "release")
        calls = [pool.hold(release) for _ in range(4)]  # in turn: b, a, b, a
        wait_until(lambda: pool.statistics().members[1].in_flight == 2, timeout=20)
        pool.retire(b)  # returns once b is gone: its queued call was not run by it
        Path(release).touch()
        a_pid = a.pid().result(timeout=20)
        assert [r.result(timeout=30) for r in calls[1:]] == [a_pid, a_pid, a_pid]
        assert pool.statistics().members[0].calls >= 3


def test_retire_takes_out_the_member_named_and_refuses_the_last_one(system):
    pool = system.pool(Sleeper, size=3, routing="least_loaded")
    a, b, c = pool.members()
    pool.retire(b)
    assert pool.members() == [a, c]
    assert {pool.pid().result(timeout=20) for _ in range(6)} == {
        a.pid().result(timeout=20), c.pid().result(timeout=20)}
    with pytest.raises(ValueError, match="not a member"):
        pool.retire(b)
    pool.retire(c)
    with pytest.raises(ValueError, match="last member"):
        pool.retire(a)
    assert pool.members() == [a]
    pool.stop()
    with pytest.raises(actorq.ActorStopped):
        pool.retire(a)


class Held(actorq.Actor):
    def __init__(self, release: str) -> None:
        self.release = release

    def receive(self, message: object) -> None:
        """Busy until *release* exists (bounded): the messages behind it wait."""
        end = time.monotonic() + 60
        while not os.path.exists(self.release) and time.monotonic() < end:
            time.sleep(0.01)


def test_a_channel_opened_before_its_member_boots_gets_the_members_own_window(tmp_path):
    """The members of a (min, max) pool have a credit window of ``scale_window``; a
    channel opened before a member's process is up (right after the pool starts) must
    not cache credit from the system's default window (8192), or the first burst passes
    flow control unchecked and the autoscaler never sees anyone wait for credit."""
    release = tmp_path / "release"
    with actorq.ActorSystem(send_timeout=0.5, warm_spares=0) as system:
        pool = system.pool(Held, str(release), size=(1, 2), scale_window=4)
        member = pool.members()[0]
        for i in range(4):  # the window's worth (the first one holds the member)
            member.tell(i)

        def flood() -> None:
            for i in range(100):
                member.tell(i)

        with pytest.raises(actorq.Backpressure):
            flood()
        assert member.channel_statistics().window == 4
        release.touch()
        pool.stop()
