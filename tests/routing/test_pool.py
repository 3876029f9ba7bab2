"""Pools with real member processes: routing, circuits, retries, tokens, resizing."""

from __future__ import annotations

import os
import pickle
import signal
import threading
from pathlib import Path

import pytest

import actorq
from actorq.testing import wait_until


class Bad(Exception):
    """A member that is not well."""


class Worker(actorq.Actor):
    def __init__(self) -> None:
        self.bad = False

    def pid(self) -> int:
        return os.getpid()

    def echo(self, x, key=None):
        return x, key

    def set_bad(self, bad: bool) -> None:
        self.bad = bad

    def work(self, x: int) -> tuple[int, int]:
        if self.bad:
            raise Bad(f"member {os.getpid()} is bad")
        return x * 2, os.getpid()

    def fail(self) -> None:
        raise KeyError("permanent")

    def crash_once(self, marker: str) -> int:
        """SIGKILL ourselves the first time anyone calls this with *marker*."""
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return os.getpid()
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        return -1

    def crash_always(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def side_effect(self, path: str, gate: str) -> int:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        wait_until(lambda: os.path.exists(gate), timeout=20)
        return os.getpid()

    def slow(self, gate: str) -> int:
        wait_until(lambda: os.path.exists(gate), timeout=30)
        return os.getpid()


def pids_of(pool, n=12):
    return {pool.pid().result(timeout=20) for _ in range(n)}


def test_calls_are_spread_over_members_and_errors_come_back(system):
    pool = system.pool(Worker, size=3)
    assert len(pool.members()) == 3
    assert len(pids_of(pool)) == 3
    assert pool.echo(5).result(timeout=20) == (5, None)
    assert pool.call("echo", 6).result(timeout=20) == (6, None)
    with pytest.raises(KeyError, match="permanent"):
        pool.fail().result(timeout=20)
    stats = pool.statistics()
    assert stats.calls == 15
    assert stats.failed == 1
    assert sum(m.calls for m in stats.members) == 15
    assert system.metrics()["pools"][pool.name]["calls"] == 15


def test_bad_input_raises_at_the_call_site_and_sends_nothing(system):
    with pytest.raises(ValueError, match="routing"):
        system.pool(Worker, size=2, routing="random")
    with pytest.raises(ValueError, match="size"):
        system.pool(Worker, size=0)
    with pytest.raises(ValueError, match="min <= max"):
        system.pool(Worker, size=(3, 2))
    with pytest.raises(ValueError, match="timeout"):
        system.pool(Worker, size=1, timeout=-1)
    with pytest.raises(TypeError, match="Actor"):
        system.pool(object, size=1)
    assert system.metrics()["actors"] == {}  # nothing was started
    pool = system.pool(Worker, size=2, routing="hash")
    with pytest.raises(ValueError, match="key="):
        pool.echo(1)
    with pytest.raises(TypeError, match="hashable"):
        pool.echo(1, key=["unhashable"])
    with pytest.raises(AttributeError, match="no handler 'nope'"):
        _ = pool.nope
    with pytest.raises(ValueError, match="timeout"):
        pool.echo(1, key="k", timeout=-0.5)
    with pytest.raises(TypeError, match="pickle"):
        pool.echo(threading.Lock(), key="k")
    assert pool.statistics().calls == 0 or all(
        m.in_flight == 0 for m in pool.statistics().members)
    assert pool.echo(1, key="k").result(timeout=20) == (1, None)  # the pool is unaffected
    pool.stop()
    with pytest.raises(actorq.ActorStopped, match="stopped"):
        pool.echo(1, key="k")


def test_routes_away_from_an_open_circuit_and_back_after_a_half_open_success(system):
    pool = system.pool(Worker, size=2, routing="round_robin",
                       circuit=actorq.CircuitBreaker(failure_threshold=2, reset_timeout=0.5,
                                                     failure_on=(Bad,)),
                       retry=actorq.Retry(max_attempts=3, retry_on=(Bad,)))
    sick, well = pool.members()
    sick.set_bad(True).result(timeout=20)
    well_pid = well.pid().result(timeout=20)
    results = [pool.work(i).result(timeout=20) for i in range(12)]
    assert results == [(i * 2, well_pid) for i in range(12)]  # retried onto the well one
    assert pool.circuits()[sick.name] in ("open", "half_open")
    stats = pool.statistics()
    assert stats.retries >= 2
    sick_stats = next(m for m in stats.members if m.name == sick.name)
    assert sick_stats.failures == {"Bad": 2}  # the circuit kept the rest away from it
    sick.set_bad(False).result(timeout=20)
    wait_until(lambda: pool.circuits()[sick.name] == "half_open", timeout=10)
    sick_pid = sick.pid().result(timeout=20)
    got = {pool.work(i).result(timeout=20)[1] for i in range(6)}
    assert sick_pid in got  # the probe went through and closed the circuit
    assert pool.circuits()[sick.name] == "closed"


def test_all_open_fails_fast_saying_when_the_next_probe_is_due(system):
    pool = system.pool(Worker, size=2,
                       circuit=actorq.CircuitBreaker(failure_threshold=1, reset_timeout=30.0,
                                                     failure_on=(Bad,)),
                       retry=None)
    for ref in pool.members():
        ref.set_bad(True).result(timeout=20)
    for i in range(2):
        with pytest.raises(Bad):
            pool.work(i).result(timeout=20)
    reply = pool.work(9)
    assert reply.done()  # at once: nothing was sent
    with pytest.raises(actorq.CircuitOpen, match=r"next probe is due in 29\.\d+s|in 30\.00s"):
        reply.result(timeout=1)
    assert pool.statistics().circuit_open_rejections == 1


def test_a_retry_after_a_crash_lands_on_another_member(system, tmp_path):
    pool = system.pool(Worker, size=3, retry=actorq.Retry(max_attempts=3))
    marker = str(tmp_path / "crashed")
    pid = pool.crash_once(marker).result(timeout=30)
    crashed_pid = int(Path(marker).read_text())
    assert pid != crashed_pid
    stats = pool.statistics()
    assert stats.retries == 1
    assert stats.succeeded == 1
    crashed = [m for m in stats.members if m.failures]
    assert crashed[0].failures == {"crash:signal": 1}


def test_budget_exhaustion_stops_retries(system):
    budget = actorq.RetryBudget(ratio=0.0, window=60.0, min_per_second=0.0)
    pool = system.pool(Worker, size=2, retry=actorq.Retry(max_attempts=5, budget=budget))
    with pytest.raises(actorq.ActorCrashed):
        pool.crash_always().result(timeout=30)
    stats = pool.statistics()
    assert stats.retries == 0
    assert stats.budget_refusals == 1


def test_permanent_errors_are_not_retried(system):
    pool = system.pool(Worker, size=2, retry=actorq.Retry(max_attempts=5))
    with pytest.raises(KeyError):
        pool.fail().result(timeout=20)
    assert pool.statistics().retries == 0


def test_hash_keeps_affinity_and_a_resize_moves_few_keys(system):
    pool = system.pool(Worker, size=3, routing="hash")
    keys = [f"user-{i}" for i in range(60)]
    where = {k: pool.call("pid", key=k).result(timeout=20) for k in keys}
    assert where == {k: pool.call("pid", key=k).result(timeout=20) for k in keys}
    assert len(set(where.values())) == 3
    pool.resize(4)
    after = {k: pool.call("pid", key=k).result(timeout=20) for k in keys}
    new_pid = system.pid_of(pool.members()[3])
    moved = [k for k in keys if after[k] != where[k]]
    assert all(after[k] == new_pid for k in moved)  # moved keys went to the new member
    assert 0 < len(moved) < len(keys) / 2


def test_an_idempotency_key_runs_once(system, tmp_path):
    pool = system.pool(Worker, size=3)
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    first = pool.side_effect(log, gate, idempotency_key="order-42")
    second = pool.side_effect(log, gate, idempotency_key="order-42")  # joins the first
    other = pool.side_effect(log, gate, idempotency_key="order-43")
    Path(gate).touch()
    assert first.result(timeout=20) == second.result(timeout=20)
    other.result(timeout=20)
    again = pool.side_effect(log, gate, idempotency_key="order-42")  # stored result
    assert again.result(timeout=20) == first.result(timeout=20)
    assert len(Path(log).read_text().split()) == 2  # one run per key
    stats = pool.statistics()
    assert stats.idempotent_joins == 1
    assert stats.idempotent_hits == 1


def test_resize_under_load_loses_no_call(system, tmp_path):
    pool = system.pool(Worker, size=2)
    replies = [pool.work(i) for i in range(200)]
    pool.resize(4)
    replies += [pool.work(i) for i in range(200, 400)]
    pool.resize(1)
    replies += [pool.work(i) for i in range(400, 500)]
    assert [r.result(timeout=30)[0] for r in replies] == [i * 2 for i in range(500)]
    assert len(pool.members()) == 1
    assert len(system.metrics()["pools"][pool.name]["members"]) == 4 + 0  # 1 live + 3 gone


def test_a_min_max_pool_grows_while_calls_wait_for_credit_and_shrinks_when_idle(
        system, tmp_path):
    # scale_window=1: the member's credit window is one call; the callers behind it wait
    # for credit in the kernel's flow control, which is what the pool grows on
    pool = system.pool(Worker, size=(1, 2), oversubscribe=True, idle_timeout=0.5,
                       scale_window=1)
    assert pool.size == 1
    first = pool.members()[0]
    # (a channel opened before its member is up takes credit by the system's window
    # once: the member's own window is known from its boot on)
    system.wait_ready(first)
    gate = str(tmp_path / "gate")
    results: list[int] = []
    callers = [threading.Thread(target=lambda: results.append(
        pool.slow(gate).result(timeout=60))) for _ in range(4)]
    for t in callers:
        t.start()
    wait_until(lambda: first.channel_statistics().waiting > 0, timeout=20,
               message="callers wait for credit")
    wait_until(lambda: pool.size == 2, timeout=20, message="grew to 2")
    assert first.channel_statistics().window == 1
    Path(gate).touch()
    for t in callers:
        t.join(timeout=60)
    assert len(results) == 4
    assert first.channel_statistics().waits >= 1  # as the kernel counted them
    wait_until(lambda: pool.size == 1, timeout=20, message="shrank to 1")
    stats = pool.statistics()
    assert (stats.grown, stats.shrunk) == (1, 1)


class Caller(actorq.Actor):
    def use(self, pool, n):
        return sorted({pool.pid().result(timeout=20) for _ in range(n)})


def test_a_pool_is_picklable_and_callable_from_an_actor(system):
    pool = system.pool(Worker, size=2)
    copy = pickle.loads(pickle.dumps(pool))
    assert copy.members() == pool.members()
    with pytest.raises(RuntimeError, match="copy"):
        copy.resize(3)
    caller = system.spawn(Caller)
    assert caller.use(pool, 8).result(timeout=30) == sorted(pids_of(pool))


class Timed(actorq.Actor):
    def left(self):
        return self.context.time_left()

    def mark(self, path: str) -> None:
        Path(path).write_text("ran")

    def slow(self, gate: str) -> int:
        wait_until(lambda: os.path.exists(gate), timeout=30)
        return os.getpid()

    def entered(self, gate: str) -> int:
        Path(gate + ".entered").touch()
        return self.slow(gate)

    def hang(self) -> None:
        threading.Event().wait()

    def pid(self) -> int:
        return os.getpid()


def test_the_deadline_travels_with_the_call(system):
    pool = system.pool(Timed, size=1)
    assert pool.left().result(timeout=20) is None
    left = pool.left(timeout=5.0).result(timeout=20)
    assert 0 < left <= 5.0
    ref = pool.members()[0]
    assert ref.left().result(timeout=20) is None  # a later plain call has no deadline


def test_a_call_whose_deadline_passed_while_queued_is_dropped_unrun(system, tmp_path):
    pool = system.pool(Timed, size=1)
    gate, mark = str(tmp_path / "gate"), str(tmp_path / "mark")
    busy = pool.slow(gate)
    late = pool.mark(mark, timeout=0.3)
    with pytest.raises(actorq.CallTimeout):
        late.result(timeout=20)
    Path(gate).touch()
    busy.result(timeout=20)
    wait_until(lambda: pool.statistics().expired_drops == 1, timeout=20)
    assert not os.path.exists(mark)  # never ran
    assert pool.statistics().deadline_timeouts == 1


def test_a_late_answer_fails_the_caller_at_the_deadline_and_counts_for_its_member(
        system, tmp_path):
    # a circuit that one failure opens: the deadline alone is not the member's failure;
    # its answer, when it comes, is counted as the member's outcome
    pool = system.pool(Timed, size=1, timeout=3.0, hang_margin=60.0,
                       circuit=actorq.CircuitBreaker(failure_threshold=1, reset_timeout=60.0))
    system.wait_ready(pool.members()[0])  # (a loaded machine may take seconds to boot it)
    gate = str(tmp_path / "gate")
    late = pool.entered(gate)
    wait_until(lambda: os.path.exists(gate + ".entered"), timeout=20)  # running, not queued
    with pytest.raises(actorq.CallTimeout, match=r"\.entered: no reply within 3s"):
        late.result(timeout=30)
    st = pool.statistics()
    assert (st.deadline_timeouts, st.failed, st.members[0].in_flight) == (1, 1, 1)
    Path(gate).touch()
    wait_until(lambda: pool.statistics().members[0].in_flight == 0, timeout=20,
               message="the late answer counted")
    member = pool.statistics().members[0]
    assert (member.calls, member.ok, member.failures) == (1, 1, {})
    assert list(pool.circuits().values()) == ["closed"]
    assert isinstance(late.exception(timeout=1), actorq.CallTimeout)  # the caller's, kept
    assert pool.pid().result(timeout=20) == pool.slow(gate).result(timeout=20)


def test_a_shorter_deadline_after_a_longer_one_still_fails_on_time(system, tmp_path):
    pool = system.pool(Timed, size=2)
    gate = str(tmp_path / "gate")
    slow = pool.slow(gate, timeout=60.0)
    short = pool.slow(gate, timeout=0.3)
    with pytest.raises(actorq.CallTimeout, match=r"no reply within 0\.3s"):
        short.result(timeout=20)  # the pool's deadline, not result()'s 20 s
    assert not slow.done()
    Path(gate).touch()
    assert slow.result(timeout=20) > 0
    assert pool.statistics().deadline_timeouts == 1


def test_a_member_hanging_past_the_deadline_is_killed_and_restarted(system):
    pool = system.pool(Timed, size=1, timeout=0.3, hang_margin=0.3)
    before = pool.pid(timeout=20).result(timeout=20)  # this call's own, longer, deadline
    with pytest.raises(actorq.CallTimeout):
        pool.hang().result(timeout=20)
    ref = pool.members()[0]
    wait_until(lambda: system.metrics()["actors"][ref.name]["crashes"].get("hang"),
               timeout=20, message="killed for hanging")
    after = wait_until(lambda: _pid_or_none(pool), timeout=20)
    assert after != before


def _pid_or_none(pool):
    try:
        return pool.pid(timeout=5).result(timeout=10)
    except (actorq.CallTimeout, actorq.ActorCrashed):
        return None


def test_a_single_ref_guarded_by_a_circuit(system):
    ref = system.spawn(Worker)
    breaker = actorq.CircuitBreaker(failure_threshold=2, reset_timeout=60.0, failure_on=(Bad,))
    guarded = ref.with_circuit(breaker)
    assert guarded.work(1).result(timeout=20)[0] == 2
    ref.set_bad(True).result(timeout=20)
    for _ in range(2):
        with pytest.raises(Bad):
            guarded.work(1).result(timeout=20)
    assert breaker.state == "open"
    reply = guarded.work(1)
    with pytest.raises(actorq.CircuitOpen, match="next probe is due"):
        reply.result(timeout=1)
    with pytest.raises(TypeError, match="CircuitBreaker"):
        ref.with_circuit("closed")


class Boss(actorq.Actor):
    def __init__(self) -> None:
        self.pool = self.context.pool(Worker, size=2, retry=actorq.Retry())

    def fan_out(self, n):
        replies = [self.pool.work(i) for i in range(n)]
        return sorted({r.result(timeout=20)[1] for r in replies})

    def members(self):
        return self.pool.members()

    def shrink(self):
        self.pool.resize(1)
        return len(self.pool.members())


def test_an_actor_runs_a_pool_of_its_children(system):
    boss = system.spawn(Boss)
    pids = boss.fan_out(20).result(timeout=30)
    assert len(pids) == 2
    members = boss.members().result(timeout=20)
    assert sorted(system.pid_of(m) for m in members) == pids
    assert boss.shrink().result(timeout=20) == 1
    wait_until(lambda: sum(1 for a in system.metrics()["actors"].values()
                           if a["state"] == "running") == 2, timeout=20)


def test_pool_replies_are_awaitable(system):
    import asyncio

    plain = system.pool(Worker, size=2)
    guarded = system.pool(Worker, size=2, retry=actorq.Retry(), circuit=actorq.CircuitBreaker())

    async def main():
        a = await asyncio.gather(*(guarded.echo(i) for i in range(5)))
        return a, await plain.echo(7), await guarded.echo(8, timeout=10)

    assert asyncio.run(main()) == ([(i, None) for i in range(5)], (7, None), (8, None))


def test_call_member_calls_the_chosen_member_and_counts_it(system):
    pool = system.pool(Worker, size=2)
    first, second = pool.members()
    pids = {pool.call_member(m, "pid").result(10) for m in (first, second, second)}
    assert pids == {system.pid_of(first), system.pid_of(second)}
    stats = pool.statistics()
    assert stats.calls == 3
    assert [m.calls for m in stats.members] == [1, 2]
    assert sum(m.ok for m in stats.members) == 3
    other = system.spawn(Worker)
    with pytest.raises(ValueError, match="not a member of pool"):
        pool.call_member(other, "pid")
    assert pool.statistics().calls == 3  # refused before anything was sent
    pool.stop()
    with pytest.raises(actorq.ActorStopped):
        pool.call_member(first, "pid")


def test_call_member_then_is_told_each_outcome_after_it_is_counted(system):
    pool = system.pool(Worker, size=1)
    (member,) = pool.members()
    told = []

    def then(value, exc):  # runs before the reply is published: counted already
        told.append((value, type(exc), pool.statistics().members[0].in_flight))

    ok = pool.call_member(member, "work", 21, then=then)
    failed = pool.call_member(member, "fail", then=then)
    assert ok.result(10) == (42, system.pid_of(member))
    with pytest.raises(KeyError, match="permanent"):
        failed.result(10)
    wait_until(lambda: len(told) == 2, timeout=10)
    assert told == [((42, system.pid_of(member)), type(None), 1), (None, KeyError, 0)]
    stats = pool.statistics()
    assert (stats.calls, stats.members[0].ok, stats.failed) == (2, 1, 1)
