"""The fork server's rehearsal of an actor's start (``actorq/_actorproc/warmup.py``):
it must leave nothing a forked actor must not inherit."""

from __future__ import annotations

import asyncio
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
    # libuv's signal lock, a pipe made once per process at its first loop, stays (the
    # rehearsal's loops make it in the fork server; libuv replaces it in each child:
    # tests/process/test_lean.py): made here first, as it is in the fork server
    warmup.rehearse_loop(1)
    fds, threads = _open_fds(), threading.active_count()
    name, cwd = multiprocessing.current_process().name, os.getcwd()
    warmup.rehearse(host.main, host.Host)
    assert _open_fds() == fds
    assert threading.active_count() == threads
    assert multiprocessing.current_process().name == name  # prepared as it was
    assert os.getcwd() == cwd
    assert asyncio._get_running_loop() is None


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


# The steps of a real start (``Host.attach``, ``Host.start_actor``: the calls they make)
# and how ``warmup.build`` stands in for each. A step added to the real start and found
# in neither table, nor made by build itself, fails the test below: rehearse it in
# build, or list it here with the reason it cannot run in the fork server.
REHEARSED_AS = {  # a step of the real start -> the call of build that rehearses it
    "Segment.attach": "_anonymous",  # the same Segment, over anonymous memory
    "hub.attach_inbound": "InChannel",  # what it builds, over an anonymous ring
    "hub.attach_outbound": "OutChannel",
    "host.read_spec": "handler_names",  # its first-use cache (the spec is the system's)
}
NOT_REHEARSED = {  # a step of the real start -> why the fork server must not run it
    "multiprocessing.current_process": "it renames the process (the fork server's)",
    "register_hub": "it would keep the throwaway hub registered in the fork server",
    "info.inbound.items": "the boot message's channels (build makes one of each)",
    "info.outbound.items": "as above",
    "os.close": "an fd of a target gone meanwhile (build has none)",
    "tune_gc": "it would change the fork server's garbage collector thresholds",
}


def _steps(*functions) -> set[str]:
    """The calls *functions* make, as ``ast.unparse`` writes what is called, with the
    host, its hub and the actor's class named alike in the real start and in build."""
    import ast
    import inspect
    import textwrap

    names = set()
    for function in functions:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                for mine, common in (("self.hub.", "hub."), ("self.", "host."),
                                     ("cls.", "Actor."), ("Rehearsed.", "Actor.")):
                    if name.startswith(mine):
                        name = common + name[len(mine):]
                        break
                names.add(name)
    return names


def test_the_rehearsal_keeps_up_with_the_real_start():
    # warmup.build mirrors Host.attach and Host.start_actor over anonymous memory: a step
    # the real start gains and build does not make would silently stop being rehearsed
    real = _steps(host.Host.attach, host.Host.start_actor)
    rehearsal = _steps(warmup.build)
    unrehearsed = real - rehearsal - set(REHEARSED_AS) - set(NOT_REHEARSED)
    assert not unrehearsed, (
        f"Host.attach/start_actor call {sorted(unrehearsed)}, which warmup.build does "
        "not rehearse: rehearse them there, or list them in NOT_REHEARSED with the reason")
    assert set(REHEARSED_AS.values()) <= rehearsal
    stale = (set(REHEARSED_AS) | set(NOT_REHEARSED)) - real
    assert not stale, f"the real start no longer calls {sorted(stale)}: drop them here"
