"""The early death notice: a robust mutex released by the kernel as its holder exits."""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import queue
import signal
import tempfile

import pytest

import actorq
from actorq._process import lifelock
from actorq.testing import wait_until

pytestmark = pytest.mark.skipif(not lifelock.AVAILABLE, reason="no robust mutexes here")


def _holder(path, go, how):
    held = lifelock.hold(path)
    assert held is not None
    go.ready.set()
    if how == "exit":
        go.go.wait(60)
        os._exit(7)
    signal.pause()


class Go:
    """The child sets ``ready`` once it holds the lock; with "exit", it waits for ``go``
    and then calls os._exit(7)."""

    def __init__(self, ctx):
        self.ready = ctx.Event()
        self.go = ctx.Event()


@pytest.fixture
def block():
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="lifelock-test-") as f:
        f.truncate(4096)
        f.flush()
        with mmap.mmap(f.fileno(), 4096) as mm:
            lifelock.init(memoryview(mm))
        yield f.name


@pytest.mark.parametrize(("how", "status", "exitcode"), [
    ("kill", signal.SIGKILL, -signal.SIGKILL), ("exit", 7 << 8, 7)])
def test_the_watcher_hears_of_a_death_with_its_exit_status(block, how, status, exitcode):
    ctx = multiprocessing.get_context("fork")
    go = Go(ctx)
    child = ctx.Process(target=_holder, args=(block, go, how))
    child.start()
    heard: queue.Queue[tuple[object, int, int]] = queue.Queue()
    watcher = lifelock.Watcher(lambda key, pid, st: heard.put((key, pid, st)))
    try:
        assert go.ready.wait(20)
        watcher.watch("a", block, child.pid)
        wait_until(lambda: watcher.armed == 1)
        assert heard.empty()  # alive: nothing to hear
        if how == "kill":
            os.kill(child.pid, signal.SIGKILL)
        else:
            go.go.set()
        key, pid, got = heard.get(timeout=20)
        assert (key, pid, got) == ("a", child.pid, status)
        assert lifelock.exitcode_of(got) == exitcode
    finally:
        watcher.close()
        if child.is_alive():
            child.kill()
        child.join(20)
    assert child.exitcode == exitcode  # what the kernel reported later agrees


def test_a_forgotten_process_is_not_reported(block):
    ctx = multiprocessing.get_context("fork")
    go = Go(ctx)
    child = ctx.Process(target=_holder, args=(block, go, "kill"))
    child.start()
    heard: queue.Queue[tuple[object, int, int]] = queue.Queue()
    watcher = lifelock.Watcher(lambda key, pid, st: heard.put((key, pid, st)))
    try:
        assert go.ready.wait(20)
        watcher.watch("a", block, child.pid)
        watcher.forget("a")
        watcher.watch("b", block, child.pid)  # the same lock under another key
        wait_until(lambda: watcher.armed == 1)
        os.kill(child.pid, signal.SIGKILL)
        assert heard.get(timeout=20)[0] == "b"
        child.join(20)
        assert heard.empty()
    finally:
        watcher.close()
        child.join(20)


def test_a_new_holder_takes_the_lock_its_dead_predecessor_held(block):
    ctx = multiprocessing.get_context("fork")
    heard: queue.Queue[tuple[object, int, int]] = queue.Queue()
    watcher = lifelock.Watcher(lambda key, pid, st: heard.put((key, pid, st)))
    try:
        for _ in range(2):  # the second one finds the lock OWNER_DIED and takes it
            go = Go(ctx)
            child = ctx.Process(target=_holder, args=(block, go, "kill"))
            child.start()
            assert go.ready.wait(20)
            watcher.watch("a", block, child.pid)
            wait_until(lambda: watcher.armed == 1)
            os.kill(child.pid, signal.SIGKILL)
            assert heard.get(timeout=20) == ("a", child.pid, signal.SIGKILL)
            child.join(20)
    finally:
        watcher.close()


class Pid(actorq.Actor):
    def pid(self):
        return os.getpid()


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_a_killed_actor_is_restarted_and_reaped_whichever_notice_comes_first(start_method):
    # The early notice usually wins; under load the sentinel may (the watcher thread
    # had no CPU before the process was reaped): the outcome must be the same.
    with actorq.ActorSystem(start_method=start_method, call_timeout=20.0) as system:
        runtime = system._runtime
        ref = system.spawn(Pid)
        for restarts in (1, 2):
            pid = ref.pid().result()
            wait_until(lambda: runtime._deaths.life.armed == 1)  # its lock is waited on
            os.kill(pid, signal.SIGKILL)
            assert ref.pid().result() != pid  # queued meanwhile, answered by the new one
            assert system.metrics()["actors"][ref.name]["restarts"] == restarts
            wait_until(lambda: not runtime._deaths.dying)  # reaped once its sentinel fired


def test_a_lock_still_held_by_a_live_process_does_not_hang_the_next_one(block):
    ctx = multiprocessing.get_context("fork")
    go = Go(ctx)
    child = ctx.Process(target=_holder, args=(block, go, "kill"))
    child.start()
    try:
        assert go.ready.wait(20)
        assert lifelock.hold(block) is not None  # returns at once, without the lock
        with open(block, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
            word = int.from_bytes(mm[lifelock.OFFSET:lifelock.OFFSET + 4], "little")
        assert word & lifelock.FUTEX_TID_MASK == child.pid  # still the child's
    finally:
        child.kill()
        child.join(20)


@pytest.fixture
def six_blocks():
    with contextlib.ExitStack() as stack:
        files = []
        for _ in range(6):
            f = stack.enter_context(tempfile.NamedTemporaryFile(
                dir="/dev/shm", prefix="lifelock-test-"))
            f.truncate(4096)
            f.flush()
            with mmap.mmap(f.fileno(), 4096) as mm:
                lifelock.init(memoryview(mm))
            files.append(f.name)
        yield files


def test_deaths_among_many_watched_are_each_heard_once_as_others_come_and_go(six_blocks):
    # Slots move when a lock is let go (the last one takes its place): every death is
    # still heard, with its own key and pid, and a forgotten one is not.
    ctx = multiprocessing.get_context("fork")
    files = six_blocks
    heard: queue.Queue[tuple[object, int, int]] = queue.Queue()
    watcher = lifelock.Watcher(lambda key, pid, st: heard.put((key, pid, st)))
    kids = []
    try:
        for f in files:
            go = Go(ctx)
            child = ctx.Process(target=_holder, args=(f, go, "kill"))
            child.start()
            assert go.ready.wait(20)
            kids.append(child)
        for i, (f, child) in enumerate(zip(files, kids, strict=True)):
            watcher.watch(i, f, child.pid)
        wait_until(lambda: watcher.armed == 6)
        for i in (1, 4):  # one in the middle, then one that moved
            os.kill(kids[i].pid, signal.SIGKILL)
            assert heard.get(timeout=20) == (i, kids[i].pid, signal.SIGKILL)
        watcher.forget(0)
        wait_until(lambda: watcher.armed == 3)
        os.kill(kids[0].pid, signal.SIGKILL)  # forgotten: not reported
        for i in (5, 2, 3):
            os.kill(kids[i].pid, signal.SIGKILL)
            assert heard.get(timeout=20) == (i, kids[i].pid, signal.SIGKILL)
        wait_until(lambda: watcher.armed == 0)
        assert heard.empty()
    finally:
        watcher.close()
        for child in kids:
            if child.is_alive():
                child.kill()
            child.join(20)
