"""``pool.method`` bound in C (``_native._pool.PoolCaller``): positional calls, and a
plain ``key=``, go straight to the pool's route; every other form of call (a handler's
keywords, ``timeout=``, a key of another type) to the Python closure, and each answers
as before, through real member processes."""

from __future__ import annotations

import os

import pytest

import actorq
from actorq import _native

needs_c = pytest.mark.skipif(_native.PoolCalls is None,
                             reason="the C pool calls are not built (or ACTORQ_NO_NATIVE)")


class Echo(actorq.Actor):
    def echo(self, x: object, y: int = 0) -> tuple[object, int]:
        return x, y

    def pid(self) -> int:
        return os.getpid()


@needs_c
def test_a_pools_methods_are_bound_in_c_and_each_form_answers(system):
    pool = system.pool(Echo, size=2)
    echo = pool.echo
    assert type(echo) is _native.PoolCalls.PoolCaller
    assert (echo.__name__, echo.pool) == ("echo", pool)
    assert echo(1).result(timeout=20) == (1, 0)
    assert echo("a", 2).result(timeout=20) == ("a", 2)  # several arguments: routed
    assert echo(1, y=3).result(timeout=20) == (1, 3)  # a handler's keyword: the closure
    assert echo(1, timeout=30).result(timeout=20) == (1, 0)  # the pool's keyword
    assert echo(1, key="ignored").result(timeout=20) == (1, 0)  # not a hash pool
    assert len({pool.pid().result(timeout=20) for _ in range(8)}) == 2  # both members


@needs_c
def test_a_plain_key_takes_the_keyed_route_and_any_other_the_closure(system):
    pool = system.pool(Echo, size=3, routing="hash")
    pid = pool.pid
    for key in ("user-1", 7, b"raw", ("a", 1)):  # plain keys in C, a tuple by the closure
        assert len({pid(key=key).result(timeout=20) for _ in range(4)}) == 1, key
    with pytest.raises(ValueError, match="pass key="):
        pid()  # a hash pool needs a key: the route says so, as the closure's did
    with pytest.raises(TypeError, match="hashable"):
        pid(key=["a", "list"])
    assert pool.echo(5, key="k", y=1).result(timeout=20) == (5, 1)


@needs_c
def test_bad_input_is_an_error_naming_it():
    caller = _native.PoolCalls.PoolCaller
    with pytest.raises(TypeError, match="method a str"):
        caller(None, None, 5, print)
    with pytest.raises(TypeError, match="PoolCaller"):
        caller(None, None, "echo")
