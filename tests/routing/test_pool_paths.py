"""A pool call's own paths, chosen once per pool: ``key=`` alone, the first attempt of a
pool with a retry, a circuit or a deadline (its token made by the member from the
call's own token), and the deadline queue that calls from many threads append to
without the pool's lock."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

import actorq
from actorq.testing import wait_until


class Member(actorq.Actor):
    def pid(self) -> int:
        return os.getpid()

    def token(self):
        return self.context.token, self.context.time_left()

    def count(self) -> int:
        self.ran = getattr(self, "ran", 0) + 1
        return self.ran

    def slow(self, gate: str) -> int:
        wait_until(lambda: os.path.exists(gate), timeout=60)
        return os.getpid()


def test_a_key_alone_takes_the_pools_path_and_keeps_every_check(system):
    pool = system.pool(Member, size=3, routing="hash")
    for key in ("user-1", 7, b"raw", ("a", 1)):  # plain keys, and a tuple (the slow path)
        pids = {pool.pid(key=key).result(timeout=20) for _ in range(4)}
        assert len(pids) == 1, key
    assert len({pool.pid(key=k).result(timeout=20) for k in range(24)}) > 1
    with pytest.raises(ValueError, match="pass key="):
        pool.pid(key=None)
    with pytest.raises(TypeError, match="hashable"):
        pool.pid(key=["a", "list"])
    retried = system.pool(Member, size=3, routing="hash", retry=actorq.Retry())
    assert len({retried.pid(key="user-1").result(timeout=20) for _ in range(4)}) == 1
    plain = system.pool(Member, size=2)  # a key is ignored by other routings
    assert len({plain.pid(key="user-1").result(timeout=20) for _ in range(4)}) == 2
    pool.stop()
    with pytest.raises(actorq.ActorStopped):
        pool.pid(key="user-1")


@pytest.mark.parametrize("options", [{"retry": actorq.Retry()},
                                     {"circuit": actorq.CircuitBreaker()},
                                     {"timeout": 60.0}],
                         ids=["retry", "circuit", "timeout"])
def test_each_call_carries_a_token_of_its_own_made_by_the_member(system, options):
    pool = system.pool(Member, size=2, **options)
    tokens = [pool.token().result(timeout=20)[0] for _ in range(4)]
    for token in tokens:  # "<pool>/<pid>/<n>", n the first attempt's own call token
        assert re.fullmatch(rf"{re.escape(pool.name)}/{os.getpid()}/\d+", token), token
    assert len(set(tokens)) == 4
    assert pool.token(idempotency_key="k").result(timeout=20)[0] == "k"


def test_an_int_deadline_travels_as_a_float(system):
    ref = system.spawn(Member)
    token, left = ref.call_with_deadline(int(time.monotonic()) + 60, "token").result(
        timeout=20)
    assert token is None
    assert isinstance(left, float)
    assert 0 < left <= 60


def test_a_lone_call_with_a_token_or_a_deadline_is_served_as_a_plain_one(system):
    # an idle actor serves a lone call as it reads it; one carrying a deadline and a
    # token (a pool's first attempt) too: the handler sees both, and one whose deadline
    # has passed is still dropped unrun
    ref = system.spawn(Member)
    system.wait_ready(ref)
    for _ in range(3):
        token, left = ref.call_with("token", deadline=time.monotonic() + 60,
                                    token="t-1").result(timeout=20)
        assert token == "t-1"
        assert 0 < left <= 60
        assert ref.call_with("token", token=7).result(timeout=20) == (7, None)
    reply = ref.call_with("count", deadline=time.monotonic() - 1.0, token="late")
    with pytest.raises(actorq.CallTimeout, match="dropped unrun") as info:
        reply.result(timeout=20)
    assert info.value.reason == "expired"
    assert ref.count().result(timeout=20) == 1  # the late call never ran
    assert ref.token().result(timeout=20) == (None, None)  # a plain call: neither


def test_deadlines_appended_from_threads_fail_on_time_and_late_answers_count(
        system, tmp_path):
    pool = system.pool(Member, size=2, timeout=5.0, hang_margin=60.0)
    for ref in pool.members():  # (a loaded machine may take seconds to boot them)
        system.wait_ready(ref)
    gate = str(tmp_path / "gate")
    errors: list[BaseException] = []

    def calls(method: str, n: int, out: list) -> None:
        try:
            replies = [getattr(pool, method)(*([gate] if method == "slow" else []))
                       for _ in range(n)]
            out.extend(replies)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def in_threads(method: str, n: int) -> list:
        out: list = []
        threads = [threading.Thread(target=calls, args=(method, n, out)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        return out

    fast = in_threads("pid", 10)  # answered: pruned from the queue as calls go on
    assert {r.result(timeout=20) for r in fast} <= {m.pid().result(timeout=20)
                                                    for m in pool.members()}
    slow = in_threads("slow", 5)  # 20 calls: one runs on each member, 18 wait
    for reply in slow:
        with pytest.raises(actorq.CallTimeout, match="no reply within 5s"):
            reply.result(timeout=30)  # the pool's deadline, not result()'s
    st = pool.statistics()
    assert (st.calls, st.deadline_timeouts, st.failed) == (60, 20, 20)
    Path(gate).touch()
    wait_until(lambda: all(m.in_flight == 0 for m in pool.statistics().members),
               timeout=30, message="every late answer counted")
    st = pool.statistics()
    assert st.expired_drops == 18  # queued past their deadline: dropped unrun
    assert sum(m.ok for m in st.members) == 40 + 2  # the two that ran answered late
