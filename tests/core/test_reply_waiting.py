"""``Reply``: where ``result()`` must not wait, and the timeouts of waiting and awaiting."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import actorq
from actorq.testing import wait_until


class Slow(actorq.Actor):
    def __init__(self):
        self.done = 0

    def hold(self, marker):
        while os.path.exists(marker):
            time.sleep(0.001)
        self.done += 1
        return "released"

    def finished(self):
        return self.done

    def ping(self):
        return "pong"


class AsyncCaller(actorq.Actor):
    async def blocking_wait(self, other):
        return other.ping().result()  # inside an async handler: must raise, not block

    async def awaiting(self, other):
        return await other.ping()


def test_result_on_the_hub_loop_thread_raises_runtime_error():
    with actorq.ActorSystem() as s:
        a = s.spawn(Slow)
        a.ping().result()
        outcome = []
        done = threading.Event()

        def on_loop():
            try:
                outcome.append(a.ping().result(timeout=5))
            except BaseException as exc:
                outcome.append(exc)
            done.set()

        s._runtime.hub.loop.call_soon_threadsafe(on_loop)  # what a callback on that thread would do
        assert done.wait(10)
        assert isinstance(outcome[0], RuntimeError), outcome
        assert "await" in str(outcome[0])
        assert a.ping().result() == "pong"  # the loop was not blocked


def test_result_inside_an_async_handler_raises_runtime_error():
    with actorq.ActorSystem() as s:
        other = s.spawn(Slow)
        caller = s.spawn(AsyncCaller)
        with pytest.raises(RuntimeError, match="use 'await'"):
            caller.blocking_wait(other).result(timeout=20)
        assert caller.awaiting(other).result(timeout=20) == "pong"


def test_result_timeout_raises_call_timeout_and_does_not_cancel_the_call(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem() as s:
        a = s.spawn(Slow)
        reply = a.hold(str(marker))
        with pytest.raises(actorq.CallTimeout, match=r"within 0.2s") as info:
            reply.result(timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert not reply.done()
        marker.unlink()
        assert reply.result(timeout=20) == "released"  # it went on
        assert a.finished().result() == 1


async def _await_with_timeouts(marker):
    loop = asyncio.get_running_loop()

    async def patiently(reply):  # not bound by the short call_timeout below
        return await loop.run_in_executor(None, reply.result, 30)

    async with actorq.ActorSystem(call_timeout=0.3) as s:
        a = s.spawn(Slow)
        await patiently(a.ping())  # started (a start may take longer than call_timeout)
        reply = a.hold(str(marker))
        with pytest.raises(actorq.CallTimeout, match=r"within 0.3s"):
            await reply  # the system's call_timeout
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.hold(str(marker)), 0.05)  # a shorter one of our own
        marker.unlink()
        assert await patiently(reply) == "released"  # the call went on
        for _ in range(2000):
            if await patiently(a.finished()) == 2:
                break
            await asyncio.sleep(0.005)
        return await patiently(a.finished())


def test_an_awaited_reply_times_out_after_call_timeout(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    # neither timeout cancelled its call: both ran once the handler was released
    assert asyncio.run(_await_with_timeouts(marker)) == 2


def test_wait_ready_times_out_naming_the_actor(tmp_path):
    marker = tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem() as s:
        a = s.spawn(SlowStart, str(marker), name="late")
        with pytest.raises(TimeoutError, match="SlowStart 'late' did not start in time"):
            s.wait_ready(a, timeout=0.2)
        assert s.metrics()["actors"]["late"]["state"] == "starting"
        marker.unlink()
        s.wait_ready(a, timeout=30)
        wait_until(lambda: s.metrics()["actors"]["late"]["state"] == "running")
        assert a.ping().result() == "pong"


class SlowStart(actorq.Actor):
    def __init__(self, marker):
        self.marker = marker

    def on_start(self):
        while os.path.exists(self.marker):
            time.sleep(0.001)

    def ping(self):
        return "pong"
