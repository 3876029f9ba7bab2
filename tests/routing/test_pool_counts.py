"""A pool's counts stay exact when several threads call it at once: with the C pool
calls (actorq/_native/_pool.c, which count without the pool's lock while nobody holds
it) and with the pure-Python ones (which take the lock), for each routing and for the
retry, circuit and deadline paths."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

import actorq
from actorq import _native

THREADS = 4
CALLS = 150  # per thread


class Worker(actorq.Actor):
    def echo(self, x):
        return x


@pytest.fixture(params=["native", "python"])
def pool_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Pools made in the test use the C pool calls, or the Python ones."""
    native = request.param == "native"
    if native and not _native.HAVE_POOL:
        pytest.skip("the C helpers are not built here (or ACTORQ_NO_NATIVE is set)")
    _native.select(native)
    try:
        yield request.param
    finally:
        _native.select(True)


CONFIGS = {
    "round_robin": {},
    "least_loaded": {"routing": "least_loaded"},
    "fastest": {"routing": "fastest"},
    "hash": {"routing": "hash"},
    "circuit_retry": {"retry": actorq.Retry(), "circuit": actorq.CircuitBreaker()},
    "timeout": {"timeout": 60.0},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_counts_stay_exact_under_threads(system, pool_impl, config):
    pool = system.pool(Worker, size=3, **CONFIGS[config])
    keyed = config == "hash"
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def calls(t: int) -> None:
        try:
            start.wait(timeout=30)
            replies = [pool.echo(i, key=i % 7) if keyed else pool.echo(i) for i in range(CALLS)]
            assert [r.result(timeout=60) for r in replies] == list(range(CALLS))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=calls, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = THREADS * CALLS
    stats = pool.statistics()
    assert (stats.calls, stats.succeeded, stats.failed) == (total, total, 0)
    assert sum(m.calls for m in stats.members) == total
    assert sum(m.ok for m in stats.members) == total
    assert [m.in_flight for m in stats.members] == [0, 0, 0]
    assert all(m.latency_ewma > 0 for m in stats.members if m.calls)
    if config == "round_robin":  # each in turn, whichever thread called
        assert sorted(m.calls for m in stats.members) == [total // 3] * 3
    pool.stop()


@pytest.mark.parametrize("config", ["round_robin", "circuit_retry"])
def test_a_call_waits_while_another_thread_holds_the_pools_lock(system, pool_impl, config):
    # the C pool calls count only while nobody holds the pool's lock: one that finds it
    # held takes the Python path, which waits for it (a call that did not wait would be
    # counted under the holder's feet)
    pool = system.pool(Worker, size=2, **CONFIGS[config])
    assert pool.echo(0).result(timeout=30) == 0
    lock = pool._core._lock
    sent = threading.Event()
    replies: list[actorq.Reply] = []

    def call() -> None:
        replies.append(pool.echo(1))
        sent.set()

    with lock:
        caller = threading.Thread(target=call)
        caller.start()
        # it cannot have sent while we hold the lock, however long we look
        assert not sent.wait(timeout=0.3)
        assert pool._core._calls == 1
    caller.join(timeout=30)
    assert sent.is_set()
    assert replies[0].result(timeout=30) == 1
    stats = pool.statistics()
    assert (stats.calls, stats.succeeded) == (2, 2)
    assert sum(m.in_flight for m in stats.members) == 0


def test_the_c_pool_calls_read_their_slots_directly():
    # every attribute the C code reads is found as a slot at configure (else it reads
    # it by getattr: the same, slower), and the lock's flag is read on this CPython
    if not _native.HAVE_POOL:
        pytest.skip("the C helpers are not built here (or ACTORQ_NO_NATIVE is set)")
    import actorq._routing.core  # noqa: F401 - configures the C pool calls

    reads = _native.POOL_C.direct_reads()
    # the lock's layout is CPython 3.11/3.12's; later versions call lock.locked()
    assert reads.pop("lock") is (sys.version_info < (3, 13))
    assert all(offset > 0 for offset in reads.values()), reads


def test_new_int_keys_are_placed_as_the_python_router_places_them(system, pool_impl):
    # a new int key's slot is computed in C (its bucket's owner) or by the Python router
    # (a bisect, a key beyond 64 bits): the same slot as a fresh Python ring gives it
    from actorq._routing.routers import ConsistentHash

    pool = system.pool(Worker, size=3, routing="hash")
    keys = [0, 1, -1, 7, -(2**40), 2**40 + 3, 2**62, -(2**63), 2**63 - 1, 2**63, -(2**63) - 1,
            2**100, *range(1000, 1400, 7), *range(-5000, -4000, 13)]
    replies = [pool.echo(k, key=k) for k in keys]
    assert [r.result(timeout=30) for r in replies] == keys
    ring = pool._core._router
    fresh = ConsistentHash()
    fresh.resized([m.actor_id for m in pool.members()], [0, 1, 2])
    assert {k: ring._cache[k] for k in keys} == {k: fresh.slot_for(k) for k in keys}
    by_slot = {m.slot: m for m in pool._core._members}
    stats = {m.actor_id: m.calls for m in pool.statistics().members}
    counted = {m.id: 0 for m in by_slot.values()}
    for k in keys:
        counted[by_slot[fresh.slot_for(k)].id] += 1
    assert stats == counted  # each call went to its key's member
