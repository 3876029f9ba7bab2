"""Lifecycle events: published to listeners, metrics counted by the first listener."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import actorq
from actorq.testing import wait_until


class Worker(actorq.Actor):
    def pid(self):
        return os.getpid()


class BadStart(actorq.Actor):
    def __init__(self):
        raise ValueError("no start")


def kinds(events, actor_id):
    return [e.kind for e in events if e.actor_id == actor_id]


def test_start_crash_restart_stop_reach_a_listener_in_order(system):
    events: list[actorq.ActorEvent] = []
    lock = threading.Lock()

    def listener(e):
        with lock:
            events.append(e)

    system.subscribe(listener)
    ref = system.spawn(Worker, name="w")
    pid = ref.pid().result(timeout=20)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: kinds(events, ref.actor_id).count(actorq.EventKind.STARTED) == 2,
               timeout=20)
    system.stop(ref)
    wait_until(lambda: actorq.EventKind.STOPPED in kinds(events, ref.actor_id))
    assert kinds(events, ref.actor_id) == ["started", "crashed", "restarted", "started",
                                           "stopped"]
    crashed = next(e for e in events if e.kind == "crashed")
    assert crashed.cause == "signal"
    assert crashed.pid == pid
    assert "SIGKILL" in crashed.detail
    assert crashed.name == "w"
    assert crashed.cls_name == "Worker"
    restarted = next(e for e in events if e.kind == "restarted")
    assert restarted.supervisor == "root"
    second_start = [e for e in events if e.kind == "started"][1]
    assert second_start.restarts == 1
    assert second_start.pid != pid
    stopped = events[-1]
    assert stopped.cause is None  # stopped on request, not by a crash


def test_metrics_count_the_same_events(system):
    ref = system.spawn(Worker)
    pid = ref.pid().result(timeout=20)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: system.metrics()["system"]["events"].get("started", 0) == 2, timeout=20)
    counts = system.metrics()["system"]["events"]
    assert counts["crash:signal"] == 1
    assert counts["restarted"] == 1


def test_a_supervisor_escalating_is_published(system):
    events = []
    system.subscribe(events.append)
    sup = system.supervisor(max_restarts=0, name="strict")
    ref = sup.spawn(Worker, name="once")
    os.kill(ref.pid().result(timeout=20), signal.SIGKILL)
    # strict passes its intensity and escalates; the root restarts strict's subtree
    wait_until(lambda: kinds(events, ref.actor_id).count("started") == 2, timeout=20)
    escalated = next(e for e in events if e.kind == "escalated")
    assert (escalated.actor_id, escalated.name, escalated.supervisor) == (ref.actor_id, "once",
                                                                          "strict")
    restarted = next(e for e in events if e.kind == "restarted")
    assert (restarted.actor_id, restarted.name, restarted.supervisor) == (0, "strict", "root")


def test_a_failed_start_ends_in_stopped_with_its_cause(system):
    events = []
    system.subscribe(events.append)
    ref = system.spawn(BadStart)
    wait_until(lambda: actorq.EventKind.STOPPED in kinds(events, ref.actor_id), timeout=20)
    stopped = [e for e in events if e.actor_id == ref.actor_id][-1]
    assert stopped.cause == "start"
    assert "no start" in stopped.detail


def test_unsubscribe_and_a_raising_listener(system, caplog):
    seen = []

    def bad(_e):
        raise RuntimeError("listener bug")

    unsubscribe = system.subscribe(seen.append)
    system.subscribe(bad)
    unsubscribe()
    ref = system.spawn(Worker)
    ref.pid().result(timeout=20)
    wait_until(lambda: "listener bug" in caplog.text)
    assert seen == []
    with pytest.raises(TypeError, match="callable"):
        system.subscribe(42)
