"""The recipes of docs/recipes.md, runnable: python examples/recipes.py

Every code block of docs/recipes.md is copied from this file (tests/test_newcomer.py
checks it), and this file checks its own results.
"""

import asyncio
from dataclasses import dataclass

import numpy as np

import actorq

# -- where to define message types -------------------------------------------------------

@dataclass
class Order:  # at the top level: the actor and its callers share this class
    item: str
    qty: int


class OutOfStock(Exception):
    pass


class Shop(actorq.Actor):
    def __init__(self):
        self.stock = {"pen": 3}

    def buy(self, order):
        match order:
            case Order(item=item, qty=qty) if self.stock.get(item, 0) >= qty:
                self.stock[item] -= qty
                return Order(item, qty)
        msg = f"not enough {order.item}"
        raise OutOfStock(msg)


def types_recipe():
    with actorq.ActorSystem() as system:
        shop = system.spawn(Shop)
        bought = shop.buy(Order("pen", 2)).result(timeout=30)
        assert isinstance(bought, Order)  # the same class, both ways
        error = None
        try:
            shop.buy(Order("pen", 2)).result(timeout=30)
        except OutOfStock as exc:  # the same exception class, too
            error = exc
        assert isinstance(error, OutOfStock)


# -- worker fan-out ----------------------------------------------------------------------

class Worker(actorq.Actor):
    def square(self, x):
        return x * x


def fan_out_recipe():
    with actorq.ActorSystem() as system:
        workers = [system.spawn(Worker) for _ in range(4)]
        # round robin; each worker handles its calls in order, the four in parallel
        replies = [workers[i % len(workers)].square(i) for i in range(100)]
        squares = [r.result(timeout=30) for r in replies]  # in the order sent
        assert squares == [i * i for i in range(100)]


# -- wait for any ------------------------------------------------------------------------

def wait_for_any_recipe():
    with actorq.ActorSystem() as system:
        workers = [system.spawn(Worker) for _ in range(3)]
        replies = [w.square(i) for i, w in enumerate(workers)]
        # whichever answers first
        done, pending = actorq.wait(replies, timeout=30, return_when="FIRST_COMPLETED")
        assert len(done) >= 1
        assert len(done) + len(pending) == 3
        # all of them, as each completes
        total = sum(r.result() for r in actorq.as_completed(replies, timeout=30))
        assert total == 0 + 1 + 4


# -- bounded async fan-out ---------------------------------------------------------------

async def bounded_fan_out_recipe():
    async with actorq.ActorSystem() as system:
        worker = system.spawn(Worker)
        limit = asyncio.Semaphore(1000)  # at most 1000 calls in flight

        async def square(x):
            async with limit:
                return await worker.square(x)

        squares = await asyncio.gather(*(square(i) for i in range(20_000)))
        assert squares[-1] == 19_999 * 19_999


# -- passing arrays ----------------------------------------------------------------------

class Stats(actorq.Actor):
    def mean(self, array):
        return float(array.mean())  # a view of shared memory: no copy was made

    def scaled(self, array, k):
        return array * k  # a new array: it travels back out of band too

    def keep(self, array):
        self.kept = array.copy()  # keep a copy, not the view (see concepts.md)
        return self.kept.shape


def arrays_recipe():
    with actorq.ActorSystem() as system:
        stats = system.spawn(Stats)
        big = np.arange(10_000_000, dtype=np.float64)  # 80 MB
        assert stats.mean(big).result(timeout=60) == big.mean()
        assert np.array_equal(stats.scaled(big[:1000], 2).result(timeout=60), big[:1000] * 2)
        assert stats.keep(big).result(timeout=60) == big.shape


if __name__ == "__main__":
    types_recipe()
    fan_out_recipe()
    wait_for_any_recipe()
    asyncio.run(bounded_fan_out_recipe())
    arrays_recipe()
    print("recipes: all assertions passed")
