"""Test helpers and an opt-in pytest plugin (``-p actorq.testing``).

The plugin's autouse fixtures fail any test (and any module, for what its module-scoped
fixtures leave) that leaves behind a child process, an actorq ``/dev/shm`` segment or an
open ``ActorSystem``, and clean them up, so that the next test starts clean:

* processes: every descendant of the test process, including grandchildren whose parent
  exited (the plugin makes the test process a *child subreaper*,
  ``prctl(PR_SET_CHILD_SUBREAPER)``, so that orphans of its subtree are reparented to it,
  not to init; reparented processes that exit stay zombies of the test process until it
  exits, which is harmless);
* segments: those of this process, and those of every run whose owner inherited this
  session's tag (the plugin exports ``ACTORQ_RUN_TAG``; actorq writes it into the names of
  the segments of every run it starts, so that a user program run as a subprocess, with
  another pid, is checked as well; other programs on the machine are not);
* systems: an ``ActorSystem`` a test left open is closed (else its supervisor would go on
  restarting the actors that the guard killed).

The fork server and multiprocessing's resource tracker are interpreter-wide helpers that
outlive a system by design, and are not counted.
"""

from __future__ import annotations

import ctypes
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from actorq._ids import RUN_TAG_ENV, SEGMENT_PREFIX
from actorq._system import _live_systems
from actorq._transport.shm import list_segments, unlink_prefix

PR_SET_CHILD_SUBREAPER = 36


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


def become_subreaper() -> bool:
    """Make this process adopt the orphans of its subtree (Linux); True if it did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def session_tag() -> str:
    """This session's run tag (exported as ``ACTORQ_RUN_TAG``), set on first use."""
    tag = os.environ.get(RUN_TAG_ENV)
    if not tag:
        tag = "t" + secrets.token_hex(3)
        os.environ[RUN_TAG_ENV] = tag
    return tag


def our_segments() -> set[str]:
    """Segments of runs owned by this process or tagged with this session's tag."""
    mine = f"{SEGMENT_PREFIX}{os.getpid()}_"
    tagged = f"_{os.environ.get(RUN_TAG_ENV) or '-'}x"
    return {n for n in list_segments() if n.startswith(mine) or tagged in n}


@dataclass
class Snapshot:
    """What exists before a test (or a module): it is not the test's to leave behind."""

    procs: set[int]
    segs: set[str]
    systems: set[int]

    @classmethod
    def take(cls) -> Snapshot:
        """Look now."""
        return cls(child_pids(), our_segments(), {id(s) for s in list(_live_systems)})

    def check(self, what: str) -> None:
        """Close, kill and unlink what appeared since; fail naming it."""
        problems = []
        systems = [s for s in list(_live_systems) if id(s) not in self.systems]
        for system in systems:
            try:
                system.close()
            except Exception as exc:  # pragma: no cover - reported below regardless
                problems.append(f"closing {system!r} failed: {exc!r}")
        if systems:
            problems.append(f"actor systems left open (now closed): {systems}")
        try:
            wait_until(lambda: not (child_pids() - self.procs), timeout=5.0)
        except TimeoutError:
            pass
        leaked_procs = child_pids() - self.procs
        leaked_segs = our_segments() - self.segs
        for pid in leaked_procs:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        for name in leaked_segs:
            unlink_prefix(name)
        if leaked_procs:
            problems.append(f"child processes left running: {sorted(leaked_procs)}")
        if leaked_segs:
            problems.append(f"shared-memory segments left in /dev/shm: {sorted(leaked_segs)}")
        if problems:
            pytest.fail(f"leak guard ({what}): " + "; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def actorq_leak_guard_session() -> Iterator[None]:
    """Arm the guard (subreaper, run tag); at the end, check what session fixtures left."""
    become_subreaper()
    session_tag()
    before = Snapshot.take()
    yield
    before.check("session")


@pytest.fixture(autouse=True, scope="module")
def actorq_leak_guard_module(actorq_leak_guard_session: None) -> Iterator[None]:
    """Fail the module if its module-scoped fixtures leave anything behind."""
    before = Snapshot.take()
    yield
    before.check("module")


@pytest.fixture(autouse=True)
def actorq_leak_guard(actorq_leak_guard_module: None) -> Iterator[None]:
    """Fail the test if it leaves a process, an actorq segment or an open system."""
    before = Snapshot.take()
    yield
    before.check("test")

