"""The routing layer's threads end with what they serve: the scheduler thread and the
autoscaler when a pool stops or its system closes (no thread left behind)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import actorq
from actorq.testing import wait_until

ROUTING_THREADS = ("actorq-routing", "actorq-pool-resize", "actorq-pool-replace")


class Worker(actorq.Actor):
    def echo(self, x):
        return x

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def routing_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ROUTING_THREADS]


def no_routing_threads() -> bool:
    return not routing_threads()


def slow_retry() -> actorq.Retry:
    """A retry that waits a minute for its backoff: still pending when we stop."""
    return actorq.Retry(max_attempts=2, backoff=actorq.Backoff(initial=60.0, maximum=60.0,
                                                               jitter="none"))


def test_the_scheduler_and_the_autoscaler_end_when_the_pool_stops(system):
    wait_until(no_routing_threads, timeout=20, message="no routing thread before")
    pool = system.pool(Worker, size=(1, 2), oversubscribe=True, retry=slow_retry(),
                       timeout=600.0)
    assert pool.echo(1).result(timeout=20) == 1  # its deadline is scheduled: 600 s away
    waiting = pool.die()  # crashes: its retry waits 60 s on the scheduler
    wait_until(lambda: pool.statistics().retries == 1, timeout=20)
    assert "actorq-routing" in routing_threads()  # autoscaler ticks, deadlines, the retry
    pool.stop()
    with pytest.raises(actorq.ActorStopped, match="stopped"):
        waiting.result(timeout=5)  # failed by the stop, not left for a minute
    wait_until(no_routing_threads, timeout=20, message="routing threads gone")
    with pytest.raises(actorq.ActorStopped):
        pool.echo(2)


def test_the_scheduler_and_the_autoscaler_end_when_the_system_closes():
    wait_until(no_routing_threads, timeout=20, message="no routing thread before")
    with actorq.ActorSystem(call_timeout=20.0) as system:
        pool = system.pool(Worker, size=(1, 2), oversubscribe=True, retry=slow_retry())
        waiting = pool.die()
        wait_until(lambda: pool.statistics().retries == 1, timeout=20)
        assert "actorq-routing" in routing_threads()
    with pytest.raises(actorq.ActorStopped):
        waiting.result(timeout=5)
    wait_until(no_routing_threads, timeout=20, message="routing threads gone")


def test_the_scheduler_thread_comes_back_when_needed(system):
    wait_until(no_routing_threads, timeout=20)
    pool = system.pool(Worker, size=1, retry=actorq.Retry())
    assert pool.echo(3, timeout=30.0).result(timeout=20) == 3  # schedules its deadline
    pool.stop()
    wait_until(no_routing_threads, timeout=20)
    again = system.pool(Worker, size=1, retry=actorq.Retry())
    assert again.echo(4, timeout=30.0).result(timeout=20) == 4
    assert "actorq-routing" in routing_threads()
    again.stop()
    wait_until(no_routing_threads, timeout=20)
