"""Actors in their own processes: calls, tells, asks, hooks, errors, refs."""

from __future__ import annotations

import asyncio
import os
import pickle
import threading

import pytest

import actorq
from actorq.testing import wait_until


class Counter(actorq.Actor):
    def __init__(self, start=0):
        self.n = start
        self.started = False
        self.told = []

    def on_start(self):
        self.started = True

    def incr(self, k=1):
        self.n += k
        return self.n

    async def slow_incr(self, k=1):
        await asyncio.sleep(0.001)
        return self.incr(k)

    def receive(self, message):
        self.told.append(message)
        return len(self.told)

    def get_told(self):
        return list(self.told)

    def was_started(self):
        return self.started

    def pid(self):
        return os.getpid()

    def boom(self, text):
        raise ValueError(text)

    def unpicklable_result(self):
        return threading.Lock()


def test_spawn_and_call_in_own_process(any_system):
    c = any_system.spawn(Counter, 10, name="counter")
    assert c.incr(5).result(timeout=20) == 15
    assert c.incr().result() == 16
    pid = c.pid().result()
    assert pid != os.getpid()
    assert c.was_started().result() is True


def test_call_method_by_name_and_kwargs(system):
    c = system.spawn(Counter, start=1)
    assert c.call("incr", k=4).result() == 5


def test_tell_then_ask_keeps_order(system):
    c = system.spawn(Counter)
    for i in range(1000):
        c.tell(i)
    assert c.ask("last").result() == 1001
    told = c.get_told().result()
    assert told[:1000] == list(range(1000))


class Picky(actorq.Actor):
    """A receive that raises on some messages; sync or async (per constructor flag)."""

    def __init__(self):
        self.seen = []

    def receive(self, message):
        if message % 7 == 0:
            raise ValueError(f"no sevens: {message}")
        self.seen.append(message)

    def get_seen(self):
        return list(self.seen)


class AsyncPicky(Picky):
    async def receive(self, message):
        await asyncio.sleep(0)
        return super().receive(message)


@pytest.mark.parametrize("cls", [Picky, AsyncPicky])
def test_told_messages_that_raise_are_logged_and_the_rest_handled_in_order(system, cls):
    p = system.spawn(cls)
    for i in range(1, 600):  # bursts of tells: the actor's path for told messages
        p.tell(i)
    assert p.get_seen().result() == [i for i in range(1, 600) if i % 7]
    with pytest.raises(ValueError, match="no sevens: 14"):
        p.ask(14).result()  # the same handler through a call: the error comes back
    p.tell(15)
    assert p.get_seen().result()[-1] == 15  # still running


def test_async_handler(system):
    c = system.spawn(Counter)
    replies = [c.slow_incr(1) for _ in range(20)]
    assert sorted(r.result() for r in replies) == list(range(1, 21))


def test_reply_done_and_result_twice(system):
    c = system.spawn(Counter)
    r = c.incr(2)
    assert r.result() == 2
    assert r.done()
    assert r.result() == 2


def test_handler_exception_same_type_with_remote_traceback(system):
    c = system.spawn(Counter)
    with pytest.raises(ValueError, match="bad thing") as info:
        c.boom("bad thing").result()
    cause = info.value.__cause__
    assert isinstance(cause, actorq.RemoteTraceback)
    assert "def boom" in str(cause) or "boom" in str(cause)
    # the actor keeps running
    assert c.incr().result() == 1


def test_unknown_method_raises_attribute_error_at_call_site(system):
    c = system.spawn(Counter)
    with pytest.raises(AttributeError, match=r"no handler 'nope'"):
        c.nope()
    with pytest.raises(AttributeError, match=r"no handler 'nope'"):
        c.call("nope")
    assert c.incr().result() == 1


def test_private_and_hook_names_are_not_handlers(system):
    c = system.spawn(Counter)
    with pytest.raises(AttributeError):
        c.on_start()
    with pytest.raises(AttributeError):
        c._private()


def test_unpicklable_argument_is_rejected_at_call_site(system):
    c = system.spawn(Counter)
    with pytest.raises(TypeError, match=r"argument 0 of Counter .*incr.*not picklable"):
        c.incr(threading.Lock())
    with pytest.raises(TypeError, match="not picklable"):
        c.tell(lambda: 1)
    with pytest.raises(TypeError, match="not picklable"):
        c.tell(("a tuple", 1, threading.Lock()))  # found inside a tuple of plain items too
    assert c.incr().result() == 1  # nothing was sent, nothing broke
    assert c.get_told().result() == []


def test_unpicklable_constructor_argument_is_rejected_at_spawn(system):
    with pytest.raises(TypeError, match="not picklable"):
        system.spawn(Counter, threading.Lock())


def test_unpicklable_return_value_becomes_an_error(system):
    c = system.spawn(Counter)
    with pytest.raises(TypeError, match="could not be pickled") as info:
        c.unpicklable_result().result()
    assert isinstance(info.value, actorq.EncodeError)  # an ActorqError
    assert isinstance(info.value, pickle.PicklingError)  # what pickle users catch
    assert c.incr().result() == 1


def test_spawn_rejects_non_actor_and_bad_options(system):
    with pytest.raises(TypeError, match=r"subclass of actorq\.Actor"):
        system.spawn(object)
    with pytest.raises(ValueError, match="restart must be one of"):
        system.spawn(Counter, restart="sometimes")
    system.spawn(Counter, name="dup")
    with pytest.raises(ValueError, match="already exists"):
        system.spawn(Counter, name="dup")


def test_lookup(system):
    c = system.spawn(Counter, 3, name="finder")
    assert system.lookup("finder") == c
    assert system.lookup("finder").incr().result() == 4
    with pytest.raises(KeyError):
        system.lookup("missing")


def test_closure_actor_class_is_shipped_by_value(system):
    factor = 7

    class Scaler(actorq.Actor):
        def scale(self, x):
            return x * factor

    s = system.spawn(Scaler)
    assert s.scale(6).result() == 42


class Relay(actorq.Actor):
    def __init__(self, target):
        self.target = target

    def forward(self, k):
        return self.target.incr(k).result(timeout=10)

    async def forward_async(self, k):
        return await self.target.incr(k)

    def fire(self, n):
        for i in range(n):
            self.target.tell(("relay", i))
        return n


def test_refs_pass_to_other_actors_and_call_directly(system):
    c = system.spawn(Counter)
    relay = system.spawn(Relay, c)
    assert relay.forward(2).result() == 2
    assert relay.forward_async(3).result() == 5
    assert relay.fire(500).result() == 500
    # order is kept per sender: the relay's tells arrive in order (the system's own
    # messages travel on another channel and may overtake them)
    wait_until(lambda: len(c.get_told().result()) == 500, timeout=10)
    assert c.get_told().result() == [("relay", i) for i in range(500)]
    assert c.incr(0).result() == 5


class SelfCaller(actorq.Actor):
    def ping(self):
        return "pong"

    def call_self(self):
        return self.ref.ping().result(timeout=5)

    async def call_self_async(self):
        return await self.ref.ping()

    def call_self_later(self):
        self.ref.ping()  # not waited on: fine
        return "sent"


def test_self_call_deadlock_is_detected(system):
    a = system.spawn(SelfCaller)
    with pytest.raises(actorq.DeadlockError, match="call to itself"):
        a.call_self().result()
    with pytest.raises(actorq.DeadlockError):
        a.call_self_async().result()
    assert a.call_self_later().result() == "sent"
    assert a.ping().result() == "pong"


class Ping(actorq.Actor):
    def set_peer(self, peer):
        self.peer = peer

    def start(self):
        return self.peer.bounce().result(timeout=0.5)

    def bounce(self):
        return self.peer.start().result(timeout=0.5)


def test_call_cycle_fails_by_timeout_with_explanation(system):
    a = system.spawn(Ping)
    b = system.spawn(Ping)
    a.set_peer(b).result()
    b.set_peer(a).result()
    with pytest.raises(actorq.CallTimeout, match="deadlock"):
        a.start().result(timeout=10)
    assert a.set_peer(b).result() is None  # both actors still serve


async def _async_main():
    async with actorq.ActorSystem() as s:
        c = s.spawn(Counter, 1)
        assert await c.incr(1) == 2
        results = await asyncio.gather(*(c.slow_incr(1) for _ in range(10)))
        assert sorted(results) == list(range(3, 13))
        with pytest.raises(ValueError, match="async boom"):
            await c.boom("async boom")
        return "ok"


def test_async_system_usage():
    assert asyncio.run(_async_main()) == "ok"


def test_async_system_usage_on_uvloop():
    import uvloop

    assert uvloop.run(_async_main()) == "ok"


def test_refs_are_picklable_and_equal(system):
    import pickle

    c = system.spawn(Counter, name="pickled")
    c2 = pickle.loads(pickle.dumps(c))
    assert c2 == c
    assert hash(c2) == hash(c)
    assert c2.incr().result() == 1


def test_tell_nowait_raises_backpressure_when_window_full():
    with actorq.ActorSystem(window=8) as s:
        blocker = s.spawn(Blocker)
        marker = blocker.hold().result()  # the next message holds the actor until released
        sent = 0

        def fill():
            nonlocal sent
            for _ in range(100):
                blocker.tell_nowait("x")
                sent += 1

        with pytest.raises(actorq.Backpressure, match="no credit"):
            fill()
        # exactly a window: every credit spent (the first message sits in its handler,
        # the others in the ring), and not one more
        assert sent == 8
        release_blocker(marker)
        assert blocker.count().result() == sent


class Blocker(actorq.Actor):
    """Handles nothing while a marker file exists."""

    def __init__(self):
        self.seen = 0
        self.path = None

    def hold(self):
        import tempfile

        fd, self.path = tempfile.mkstemp(prefix="actorq-block-")
        os.close(fd)
        return self.path

    def receive(self, m):
        import time

        while self.path and os.path.exists(self.path):
            time.sleep(0.001)
        self.seen += 1

    def count(self):
        return self.seen


def release_blocker(path):
    """Remove this blocker's own marker (its path came from ``hold()``)."""
    os.unlink(path)


def test_sync_send_waits_for_credit_then_backpressure():
    with actorq.ActorSystem(window=4, send_timeout=0.3) as s:
        b = s.spawn(Blocker)
        marker = b.hold().result()

        def flood():
            for _ in range(50):
                b.tell("x")

        with pytest.raises(actorq.Backpressure, match="stayed full"):
            flood()
        release_blocker(marker)
        wait_until(lambda: b.count().result() >= 4, timeout=10)


def test_metrics_snapshot(system):
    c = system.spawn(Counter, name="m")
    c.incr().result()
    m = system.metrics()
    entry = m["actors"]["m"]
    assert entry["state"] == "running"
    assert entry["handled"] >= 1
    assert entry["lost_wakeups"] == 0
    assert entry["window"] == system.config.window


class GcProbe(actorq.Actor):
    def gc_state(self):
        import gc

        return gc.get_threshold()[0], gc.get_freeze_count()


def test_actor_processes_freeze_their_start_up_objects_and_collect_less_often():
    with actorq.ActorSystem() as s:  # forkserver: a fresh interpreter (threshold 700)
        gen0, frozen = s.spawn(GcProbe).gc_state().result()
        assert gen0 == 10_000
        assert frozen > 1000  # modules, classes, the actor: out of every full collection
    with actorq.ActorSystem(actor_gc_gen0=0) as s:
        gen0, frozen = s.spawn(GcProbe).gc_state().result()
        assert gen0 == 700  # Python's own threshold, kept
        assert frozen > 1000
    with pytest.raises(ValueError, match="actor_gc_gen0"):
        actorq.ActorSystem(actor_gc_gen0=-1)


class Echo(actorq.Actor):
    def echo(self, x, **kw):
        return (x, kw) if kw else x


@pytest.mark.parametrize("value", [
    0, -1, 2**100, -(2**70), 1.5, -0.0, float("inf"), 3 + 4j, True, False, None, "",
    "héllo \U0001f600", "\ud800 lone surrogate", b"", b"\x00\xff" * 100,
    (1, "a", 2.5), [1, 2, 3], ("nested", [1]), [b"x", None, True],
])
def test_plain_values_come_back_equal_and_of_the_same_type(system, value):
    # Plain data on a lone call and its reply is marshalled rather than pickled: the
    # result must be indistinguishable from the pickle path.
    got = system.spawn(Echo).echo(value).result()
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, (tuple, list)):
        assert [type(v) for v in got] == [type(v) for v in value]


def test_plain_call_with_keywords_and_nan_round_trips(system):
    e = system.spawn(Echo)
    x, kw = e.echo(float("nan"), flag=True, n=3).result()
    assert x != x  # NaN
    assert kw == {"flag": True, "n": 3}
    assert type(kw["flag"]) is bool


class _Teller(actorq.Actor):
    def tell_to(self, ref: actorq.ActorRef) -> str:
        try:
            ref.tell("hello")
        except actorq.ActorStopped as exc:
            return f"ActorStopped: {exc}"
        return "sent"


def test_a_target_whose_mailbox_vanished_before_the_channel_opened_is_stopped(system):
    """The system answers a channel request with the target's segment names; if they are
    unlinked before the asking actor maps them (the system closing, or the target forgotten
    past stopped_kept), the sender hears ActorStopped, not FileNotFoundError, and serves on."""
    target = system.spawn(Counter)
    teller = system.spawn(_Teller)
    assert target.incr().result(timeout=30) == 1  # booted: its process mapped the block
    os.unlink(f"/dev/shm/{system.run_id}a{target.actor_id}_ctl")
    said = teller.tell_to(target).result(timeout=30)
    assert said.startswith("ActorStopped:")
    assert "mailbox is gone" in said
    # the teller's own mailbox still works, and it remembers the target as gone
    assert teller.tell_to(target).result(timeout=30).startswith("ActorStopped:")
