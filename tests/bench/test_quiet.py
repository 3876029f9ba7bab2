"""Strays: the processes a previous benchmark part left, waited for until quiet.

Real child processes: a busy one, a sleeping one, and the ones present at the start
(which are never strays, nor are their children).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import psutil

from actorq.bench.quiet import Strays
from actorq.testing import wait_until


def _burn(seconds: float, done: Any = None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    if done is not None:
        done.set()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _parent_of_busy(seconds: float) -> None:
    child = multiprocessing.get_context("fork").Process(target=_burn, args=(seconds,))
    child.start()
    child.join()


def test_a_busy_stray_is_waited_for_until_it_ends():
    ctx = multiprocessing.get_context("fork")
    strays = Strays()
    done = ctx.Event()
    busy = ctx.Process(target=_burn, args=(2.0, done))
    busy.start()
    try:
        assert busy.pid in {p.pid for p in strays.now()}
        # windows of a second: even at a load of 50 on 2 cores a spinning process gets
        # several times QUIET_SHARE of one in each
        assert strays.wait_quiet(wait=120.0, window=1.0) == ""
        assert done.is_set()  # it was waited for until its work ended
    finally:
        busy.join(60)


def test_a_stray_still_busy_at_the_deadline_is_named():
    ctx = multiprocessing.get_context("fork")
    strays = Strays()
    busy = ctx.Process(target=_burn, args=(30.0,))
    busy.start()
    try:
        said = strays.wait_quiet(wait=0.0, window=0.2)
        assert f"pid {busy.pid}" in said
        assert "of a core" in said
    finally:
        busy.kill()
        busy.join(60)


def test_a_sleeping_stray_is_quiet_and_the_base_processes_are_not_strays():
    ctx = multiprocessing.get_context("fork")
    base = ctx.Process(target=_parent_of_busy, args=(30.0,))  # its busy child: not a stray
    base.start()
    try:
        wait_until(lambda: psutil.Process(base.pid).children(), timeout=60,
                   message="the base process's child started")
        strays = Strays()
        asleep = ctx.Process(target=_sleep, args=(30.0,))
        asleep.start()
        try:
            assert [p.pid for p in strays.now()] == [asleep.pid]
            assert strays.wait_quiet(wait=60.0, window=0.1) == ""
        finally:
            asleep.kill()
            asleep.join(60)
    finally:
        for grandchild in psutil.Process(base.pid).children(recursive=True):
            grandchild.kill()
        base.join(60)
