"""The fork server's rehearsal of an actor's start (``actorq/_actorproc/warmup.py``):
it must leave nothing a forked actor must not inherit."""

from __future__ import annotations

import multiprocessing
import os
import threading

import actorq
from actorq._actorproc import host, warmup


class Counter(actorq.Actor):
    def add(self, n: int) -> int:
        return n


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_rehearsal_leaves_no_fd_thread_or_loop_behind():
    fds, threads = _open_fds(), threading.active_count()
    name, cwd = multiprocessing.current_process().name, os.getcwd()
    warmup.rehearse(host.main, host.Host)
    assert _open_fds() == fds
    assert threading.active_count() == threads
    assert multiprocessing.current_process().name == name  # prepared as it was
    assert os.getcwd() == cwd


def test_the_rehearsal_finds_the_actor_classes_defined_so_far():
    classes = set(warmup.actor_classes())
    assert Counter in classes
    assert warmup.Rehearsed in classes


def test_an_actor_started_after_the_rehearsal_serves_as_before():
    # the fork server the suite started rehearsed at its preload
    with actorq.ActorSystem(start_method="forkserver") as system:
        ref = system.spawn(Counter)
        assert ref.add(2).result(timeout=60) == 2


class Handlers(actorq.Actor):
    def stderr_handlers(self) -> int:
        import logging

        return sum(1 for h in logging.getLogger("actorq").handlers
                   if isinstance(h, logging.StreamHandler)
                   and getattr(h.formatter, "_fmt", "").startswith("actorq["))


def test_an_actor_logs_warnings_to_stderr_through_one_handler():
    # made in the fork server at its preload, inherited, not added again by the actor
    with actorq.ActorSystem(start_method="forkserver") as system:
        ref = system.spawn(Handlers)
        assert ref.stderr_handlers().result(timeout=60) == 1
