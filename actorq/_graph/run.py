"""``system.run`` and ``system.run_async``: set a run up here, schedule it on the loop.

The caller's thread validates the graph and sets the run up (``Scheduler.begin``), hands
it to the system's loop (``Scheduler.start``) and waits for the end (``run_graph``), or
awaits it without a thread (``run_graph_async``); then it builds the result. An
interrupt (Ctrl-C) or a cancellation while waiting stops the run on the loop first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from actorq._errors import ActorStopped
from actorq._graph.graph import Graph
from actorq._graph.pool import SystemOps, release_pools
from actorq._graph.result import GraphResult
from actorq._graph.scheduler import Scheduler

STOP_WAIT = 10.0  # seconds an interrupted run may take to let go of its workers
LOOK_AGAIN = 0.25  # seconds between looks at whether the system's loop still runs


def _submit(sched: Scheduler, loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[None]:
    """Start *sched* on the system's *loop*; return the future set when the run is over."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        msg = "system.run() was called on the actor system's own loop thread"
        raise RuntimeError(msg)
    sched.begin()
    ended: concurrent.futures.Future[None] = concurrent.futures.Future()
    try:
        loop.call_soon_threadsafe(sched.start, loop, ended)
    except RuntimeError:  # the loop is closed
        sched.finish()
        msg = "the actor system is closed"
        raise ActorStopped(msg) from None
    return ended


def _check_loop(ended: concurrent.futures.Future[None],
                loop: asyncio.AbstractEventLoop) -> None:
    """The system was closed under the run (its loop stopped): end the run here."""
    if ended.done() or (loop.is_running() and not loop.is_closed()):
        return
    msg = "the actor system was closed while the graph was running"
    try:
        ended.set_exception(ActorStopped(msg))
    except concurrent.futures.InvalidStateError:  # the loop ended it just now
        pass


def _stop(sched: Scheduler, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
    try:
        loop.call_soon_threadsafe(sched.interrupt, exc)
    except RuntimeError:  # the loop is closed: nothing runs any more
        pass


def run_graph(system: SystemOps, graph: Graph, *, loop: asyncio.AbstractEventLoop,
              **options: Any) -> GraphResult:
    """``system.run(graph, ...)``: validate here, schedule on the system's *loop*, wait."""
    sched = Scheduler(system, graph, **options)  # validates: nothing has run yet
    ended = _submit(sched, loop)
    try:
        while not concurrent.futures.wait([ended], timeout=LOOK_AGAIN).done:
            _check_loop(ended, loop)
        ended.result()
    except BaseException as exc:
        if not ended.done():  # interrupted here (Ctrl-C): stop the run, then clean up
            _stop(sched, loop, exc)
            concurrent.futures.wait([ended], timeout=STOP_WAIT)
        sched.finish()
        raise
    return sched.finish()


async def run_graph_async(system: SystemOps, graph: Graph, *,
                          loop: asyncio.AbstractEventLoop, **options: Any) -> GraphResult:
    """``await system.run_async(graph, ...)``: as :func:`run_graph`, awaiting the end."""
    sched = Scheduler(system, graph, **options)
    ended = _submit(sched, loop)
    waiter = asyncio.wrap_future(ended)
    try:
        while not ended.done():
            await asyncio.wait([waiter], timeout=LOOK_AGAIN)  # never cancels it
            _check_loop(ended, loop)
        await asyncio.shield(waiter)
    except BaseException as exc:
        if not ended.done():  # cancelled: stop the run, then clean up
            _stop(sched, loop, exc)
            await asyncio.wait([waiter], timeout=STOP_WAIT)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved: it is the cancellation we raise below
        await _finish_async(sched)
        raise
    return await _finish_async(sched)


async def _finish_async(sched: Scheduler) -> GraphResult:
    """``sched.finish`` without blocking the caller's loop on the journal's last writes."""
    journal = sched.journal
    if journal is not None:
        try:
            await asyncio.wrap_future(journal.drain())
        except BaseException:  # cancelled (again) meanwhile: finish here, blocking
            sched.finish(close_in_background=True)
            raise
    return sched.finish(close_in_background=True)


__all__ = ["release_pools", "run_graph", "run_graph_async"]
