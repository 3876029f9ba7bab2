"""Test helpers and an opt-in pytest plugin (``-p actorq.testing``).

The plugin's autouse fixture fails any test that leaves a child process or a
``/dev/shm`` segment of actorq's behind (and cleans them up, so that the next test
starts clean). The fork server and multiprocessing's resource tracker are
interpreter-wide helpers that outlive a system by design, and are not counted.
"""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from actorq._ids import SEGMENT_PREFIX
from actorq._transport.shm import list_segments, unlink_prefix


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005,
               message: str = "condition") -> Any:
    """Poll *condition* until it returns a truthy value, and return that value.

    Raises ``TimeoutError`` once *timeout* seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = f"{message} not met within {timeout}s"
            raise TimeoutError(msg)
        time.sleep(interval)


def _helpers() -> set[int]:
    pids = set()
    fs = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(fs, "_forkserver_pid", None)
    if pid:
        pids.add(pid)
    trackers = [multiprocessing.resource_tracker,
                # loky (a benchmark peer) keeps its own interpreter-wide resource tracker
                sys.modules.get("loky.backend.resource_tracker")]
    for module in trackers:
        rt = getattr(module, "_resource_tracker", None)
        pid = getattr(rt, "_pid", None)
        if pid:
            pids.add(pid)
    return pids


def child_pids() -> set[int]:
    """Live descendants of this process, the interpreter-wide helpers excepted."""
    try:
        kids = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return set()
    helpers = _helpers()
    alive = set()
    for p in kids:
        try:
            if p.pid not in helpers and p.status() != psutil.STATUS_ZOMBIE:
                alive.add(p.pid)
        except psutil.Error:
            continue
    return alive


@pytest.fixture(autouse=True)
def actorq_leak_guard() -> Iterator[None]:
    """Fail the test if it leaves a child process or an actorq shared-memory segment."""
    # only this process's runs: other programs on the machine may be using actorq too
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}_"
    procs_before = child_pids()
    segs_before = set(list_segments(prefix))
    yield
    try:
        wait_until(lambda: not (child_pids() - procs_before), timeout=5.0)
    except TimeoutError:
        pass
    leaked_procs = child_pids() - procs_before
    leaked_segs = set(list_segments(prefix)) - segs_before
    for pid in leaked_procs:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    for name in leaked_segs:
        unlink_prefix(name)
    problems = []
    if leaked_procs:
        problems.append(f"child processes left running: {sorted(leaked_procs)}")
    if leaked_segs:
        problems.append(f"shared-memory segments left in /dev/shm: {sorted(leaked_segs)}")
    if problems:
        pytest.fail("leak guard: " + "; ".join(problems))
