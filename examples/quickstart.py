"""Quickstart: the code shown in docs/quickstart.md, runnable as it is.

    python examples/quickstart.py

Every snippet of docs/quickstart.md is copied from this file, and tests/test_examples.py
checks both that they still match and that this file runs.
"""

from __future__ import annotations

import asyncio
import os

import actorq


class Counter(actorq.Actor):
    def __init__(self, start=0):  # runs in the actor's own process
        self.n = start

    def incr(self, k=1):  # every public method is a handler
        self.n += k
        return self.n

    async def slow_incr(self, k=1):  # async handlers run on the actor's own event loop
        await asyncio.sleep(0.01)
        return self.incr(k)

    def divide(self, x):
        return x / self.n  # raises ZeroDivisionError when n == 0

    def pid(self):
        return os.getpid()

    def receive(self, message):  # the target of ref.tell(message) and ref.ask(message)
        if message == "get":
            return self.n
        self.n += message
        return self.n


def sync_example():
    with actorq.ActorSystem() as system:
        counter = system.spawn(Counter, 10, name="counter")

        # A call returns a Reply at once; result() waits for the value.
        assert counter.incr(5).result(timeout=10) == 15
        assert counter.call("incr", k=2).result(timeout=10) == 17

        # Calls are pipelined: send many, then collect. They are handled in order.
        replies = [counter.incr() for _ in range(100)]
        assert [r.result(timeout=10) for r in replies] == list(range(18, 118))

        # The actor runs in a process of its own.
        assert counter.pid().result(timeout=10) != os.getpid()

        # tell: fire and forget (to receive); ask: the same, with a Reply.
        counter.tell(1000)
        assert counter.ask("get").result(timeout=10) == 1117

        # Refs can be found by name.
        assert system.lookup("counter") == counter

        # Wait for whichever replies finish first (concurrent.futures.wait and
        # as_completed take only Futures; these take Replies).
        replies = [counter.incr() for _ in range(3)]
        firsts = [r.result() for r in actorq.as_completed(replies, timeout=10)]
        assert sorted(firsts) == [1118, 1119, 1120]
        done, not_done = actorq.wait(replies, timeout=10)
        assert done == set(replies)
        assert not not_done
    # Leaving the block stopped the actor, joined its process, unlinked its shared memory.


def error_example():
    with actorq.ActorSystem() as system:
        zero = system.spawn(Counter, 0)
        error = None
        try:
            zero.divide(1).result(timeout=10)
        except ZeroDivisionError as exc:  # the handler's own exception type
            error = exc
        assert isinstance(error, ZeroDivisionError)
        remote = error.__cause__  # the traceback in the actor's process, as text
        assert isinstance(remote, actorq.RemoteTraceback)
        assert "divide" in remote.tb_text

        # An exception in a handler is not a crash: the actor keeps serving.
        assert zero.incr(3).result(timeout=10) == 3


def square(x):
    return x * x


def graph_example():
    g = actorq.Graph()
    squares = [g.task(square, i) for i in range(10)]  # each runs in a worker process
    total = g.task(sum, squares)  # Node arguments (even inside a list) become edges
    with actorq.ActorSystem() as system:
        result = system.run(g)  # across every core by default
    assert result.ok
    assert result[total] == 285
    assert result.stats.tasks[total].attempts == 1


async def async_example():
    async with actorq.ActorSystem() as system:
        counter = system.spawn(Counter, 10)

        # A Reply is awaitable; awaiting never blocks the event loop.
        assert await counter.incr(5) == 15

        # Many calls in flight at once, gathered in the order they were made.
        results = await asyncio.gather(*(counter.slow_incr() for _ in range(10)))
        assert results == list(range(16, 26))

        error = None
        try:
            await counter.divide("a string")
        except TypeError as exc:
            error = exc
        assert isinstance(error, TypeError)

        # A fan-out far bigger than the mailbox: in async code a send never waits,
        # so at most max_parked messages may wait for credit (more raise
        # Backpressure). Bound what is in flight; sync code would just wait instead.
        in_flight = asyncio.Semaphore(1000)

        async def bounded_incr():
            async with in_flight:
                return await counter.incr()

        results = await asyncio.gather(*(bounded_incr() for _ in range(20_000)))
        assert len(results) == 20_000


if __name__ == "__main__":  # needed: actor processes re-import this module
    sync_example()
    error_example()
    graph_example()
    asyncio.run(async_example())
    print("quickstart: all assertions passed")
