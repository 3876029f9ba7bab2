"""A pool's counts stay exact when several threads call it at once: with the C pool
calls (actorq/_native/_pool.c, which count without the pool's lock while nobody holds
it) and with the pure-Python ones (which take the lock), for each routing and for the
retry, circuit and deadline paths."""

from __future__ import annotations

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
