"""Reply's public completion seam: set_result / set_exception / add_done_callback."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

import actorq
from actorq.testing import wait_until


class Echo(actorq.Actor):
    def echo(self, x):
        return x

    def boom(self):
        raise KeyError("boom")

    def wait(self, gate):
        wait_until(lambda: os.path.exists(gate), timeout=30)
        return "answer"


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


# -- the waiting seam: outcome(), sleep_until_done(), waiter --------------------------------


def test_outcome_reads_a_done_reply_without_waiting_or_raising():
    ok = actorq.Reply.pending("ok")
    ok.set_result(3)
    assert ok.outcome() == (3, None)
    bad = actorq.Reply.pending("bad")
    err = KeyError("k")
    bad.set_exception(err)
    value, exc = bad.outcome()  # the call's error is returned, not raised
    assert value is None
    assert exc is err


def test_outcome_of_a_pending_reply_is_refused_naming_it():
    r = actorq.Reply.pending("still running")
    with pytest.raises(RuntimeError, match="still running"):
        r.outcome()
    assert not r.done()  # refusing changed nothing
    r.set_result(1)
    assert r.outcome() == (1, None)


def test_sleep_until_done_wakes_when_another_thread_completes():
    r = actorq.Reply.pending("slept on")
    assert r.sleep_until_done(0.01) is False  # nobody completes it: the timeout passes
    woke = []
    sleeper = threading.Thread(target=lambda: woke.append(r.sleep_until_done(20)))
    sleeper.start()
    r.set_result("x")
    sleeper.join(20)
    assert woke == [True]
    assert r.sleep_until_done(0) is True  # done: returns at once


def test_replies_of_one_process_share_its_hub_as_waiter(system):
    ref = system.spawn(Echo)
    a, b = ref.echo(1), ref.echo(2)
    assert a.waiter is b.waiter
    assert a.waiter.waiting_would_deadlock(a) is False  # a user thread may wait
    assert a.result(20) == 1
    assert b.result(20) == 2


class _Composite:
    """A waiter built on the public seam only: waits through the current attempt."""

    may_deadlock = False

    def __init__(self, config):
        self.config = config
        self.inner = None
        self.outer = None
        self.helped = 0

    def wait_reply(self, reply, deadline):
        while not self.outer.done() and not deadline.expired():
            inner = self.inner
            if inner is not None and not inner.done():
                self.helped += 1
                inner.waiter.wait_reply(inner, deadline)  # reads the rings, as result() does
            else:
                self.outer.sleep_until_done(min(deadline.remaining(), 0.005))

    def timeout_hint(self, reply):
        return " (composite)"

    def waiting_would_deadlock(self, reply):
        inner = self.inner
        return inner is not None and inner.waiter.waiting_would_deadlock(inner)

    def flush_dirty(self, *, wait=True):
        inner = self.inner
        return inner.waiter.flush_dirty(wait=wait) if inner is not None else True


def test_a_composite_reply_waits_through_its_current_attempts_waiter(system):
    ref = system.spawn(Echo)
    ref.echo(0).result(20)
    composite = _Composite(system.config)
    outer = actorq.Reply.pending("composite echo", waiter=composite)
    composite.outer = outer
    assert outer.waiter is composite

    def attempt(n):
        inner = ref.boom() if n == 0 else ref.echo("second")
        composite.inner = inner

        def on_done(r):
            value, exc = r.outcome()
            if exc is not None and n == 0:
                attempt(1)
            elif exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(value)

        inner.add_done_callback(on_done)

    attempt(0)
    assert outer.result(timeout=20) == "second"
    assert outer.outcome() == ("second", None)


def test_a_composite_reply_times_out_with_its_waiters_hint(system):
    composite = _Composite(system.config)
    outer = actorq.Reply.pending("never answered", waiter=composite)
    composite.outer = outer
    with pytest.raises(actorq.CallTimeout, match=r"never answered.*\(composite\)"):
        outer.result(timeout=0.05)


def test_an_on_outcome_hook_sees_the_outcome_before_anyone_and_can_publish_it(system):
    ref = system.spawn(Echo)
    seen = []

    def hook(reply, value, exc):
        seen.append((value, type(exc).__name__ if exc else None, reply.done()))
        return False  # publish as it came

    assert ref.call_with("echo", (7,), on_outcome=hook).result(timeout=20) == 7
    with pytest.raises(KeyError, match="boom"):
        ref.call_with("boom", on_outcome=hook).result(timeout=20)
    # it ran once per call, with the reply not done yet (nobody had seen the outcome)
    assert seen == [(7, None, False), (None, "KeyError", False)]


def test_an_on_outcome_hook_takes_a_failure_over_and_completes_it_later(system):
    ref = system.spawn(Echo)
    taken = []

    def hook(reply, value, exc):
        if exc is None:
            return False
        taken.append(reply)
        return True  # it stays pending: we complete it with another attempt's outcome

    reply = ref.call_with("boom", on_outcome=hook)
    wait_until(lambda: taken, timeout=20)
    assert not reply.done()  # the KeyError was held back
    again = ref.echo("second attempt")
    again.add_done_callback(lambda r: reply.set_result(r.outcome()[0]))
    assert reply.result(timeout=20) == "second attempt"
    assert reply.exception(timeout=1) is None  # the held-back error is gone
    assert not reply.set_exception(ValueError("late"))  # completed once


def test_a_raising_on_outcome_hook_is_logged_and_the_outcome_published(system, caplog):
    ref = system.spawn(Echo)

    def hook(reply, value, exc):
        raise RuntimeError("hook bug")

    assert ref.call_with("echo", ("x",), on_outcome=hook).result(timeout=20) == "x"
    with pytest.raises(KeyError, match="boom"):
        ref.call_with("boom", on_outcome=hook).result(timeout=20)
    assert caplog.text.count("on_outcome hook") == 2


def test_a_hook_that_publishes_an_early_failure_still_sees_the_late_answer(system, tmp_path):
    # what a pool's deadline does: fail the caller's reply now, and count the member's
    # answer when it comes (Reply.on_late_outcome, armed from the on_outcome hook)
    ref = system.spawn(Echo)
    gate = str(tmp_path / "gate")
    early = actorq.CallTimeout("the caller's deadline passed")
    late = []

    def hook(reply, value, exc):
        if exc is early:
            reply.on_late_outcome(lambda r, v, e: late.append((r is reply, v, e)))
        return False

    reply = ref.call_with("wait", (gate,), on_outcome=hook)
    assert reply.set_exception(early)
    assert reply.exception(timeout=1) is early
    assert late == []
    Path(gate).touch()
    wait_until(lambda: late, timeout=20, message="the late answer")
    assert late == [(True, "answer", None)]
    assert reply.exception(timeout=1) is early  # the caller's outcome stays
    assert ref.echo(1).result(timeout=20) == 1
