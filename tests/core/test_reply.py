"""Reply's public completion seam: set_result / set_exception / add_done_callback."""

from __future__ import annotations

import asyncio
import threading

import pytest

import actorq
from actorq.testing import wait_until


class Echo(actorq.Actor):
    def echo(self, x):
        return x

    def boom(self):
        raise KeyError("boom")


def test_a_pending_reply_is_completed_once():
    r = actorq.Reply.pending("job 1")
    assert not r.done()
    assert r.set_result(5) is True
    assert r.set_result(6) is False
    assert r.set_exception(ValueError("late")) is False
    assert r.done()
    assert r.result(timeout=1) == 5
    assert r.exception(timeout=1) is None


def test_a_pending_reply_carries_an_exception():
    r = actorq.Reply.pending("job 2")
    err = ValueError("bad")
    assert r.set_exception(err) is True
    with pytest.raises(ValueError, match="bad"):
        r.result(timeout=1)
    assert r.exception(timeout=1) is err


def test_result_of_a_pending_reply_times_out_with_its_description():
    r = actorq.Reply.pending("the answer")
    with pytest.raises(actorq.CallTimeout, match="the answer"):
        r.result(timeout=0.01)
    with pytest.raises(actorq.CallTimeout):
        r.exception(timeout=0.01)


def test_done_callbacks_run_once_each_in_order_and_at_once_when_done():
    r = actorq.Reply.pending()
    seen = []
    r.add_done_callback(lambda x: seen.append(("a", x.result(0))))
    r.add_done_callback(lambda x: seen.append(("b", x.result(0))))
    assert seen == []
    r.set_result(1)
    assert seen == [("a", 1), ("b", 1)]
    r.add_done_callback(lambda x: seen.append(("c", x.result(0))))
    assert seen == [("a", 1), ("b", 1), ("c", 1)]
    r.set_result(2)
    assert len(seen) == 3


def test_a_raising_callback_is_logged_and_the_others_still_run(caplog):
    r = actorq.Reply.pending()
    seen = []

    def bad(_):
        raise RuntimeError("callback bug")

    r.add_done_callback(bad)
    r.add_done_callback(seen.append)
    r.set_result(1)
    assert seen == [r]
    assert "callback bug" in caplog.text


def test_callbacks_registered_while_another_thread_completes_run_exactly_once():
    for _ in range(200):
        r = actorq.Reply.pending()
        count = []
        go = threading.Barrier(2)

        def complete(reply=r, barrier=go):
            barrier.wait()
            reply.set_result(1)

        t = threading.Thread(target=complete)
        t.start()
        go.wait()
        for _ in range(5):
            r.add_done_callback(lambda _r, c=count: c.append(1))
        t.join()
        assert len(count) == 5


def test_a_pending_reply_is_awaitable():
    async def main():
        r = actorq.Reply.pending()
        asyncio.get_running_loop().call_later(0.01, r.set_result, "ok")
        return await r

    assert asyncio.run(main()) == "ok"


def test_a_pending_reply_completed_from_another_thread_wakes_an_awaiter():
    async def main():
        r = actorq.Reply.pending()
        threading.Timer(0.01, r.set_exception, (KeyError("k"),)).start()
        with pytest.raises(KeyError):
            await r

    asyncio.run(main())


def test_callbacks_of_actor_calls_see_results_and_errors(system):
    ref = system.spawn(Echo)
    got = []
    done = threading.Event()
    ok = ref.echo(7)
    ok.add_done_callback(lambda r: got.append(r.result(0)))
    bad = ref.boom()
    bad.add_done_callback(lambda r: (got.append(type(r.exception(0))), done.set()))
    assert done.wait(20)
    wait_until(lambda: len(got) == 2)
    assert got == [7, KeyError]


def test_one_reply_spans_several_attempts(system):
    """The composition a retrying pool uses: an outer reply, completed by a later attempt."""
    ref = system.spawn(Echo)
    outer = actorq.Reply.pending("retrying echo")
    attempts = []

    def attempt(n):
        inner = ref.boom() if n < 2 else ref.echo("third time")
        attempts.append(inner)

        def on_done(r, n=n):
            if r.exception(0) is not None and n < 2:
                attempt(n + 1)  # never wait in a callback: send the next attempt
            elif r.exception(0) is not None:
                outer.set_exception(r.exception(0))
            else:
                outer.set_result(r.result(0))

        inner.add_done_callback(on_done)

    attempt(0)
    assert outer.result(timeout=20) == "third time"
    assert len(attempts) == 3
