from __future__ import annotations

import faulthandler
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import settings

import actorq
from actorq._process.spawn import get_context

# Hypothesis profiles: "ci" (the default) keeps the whole suite fast on 2 cores; "soak"
# (alias "nightly") runs the property tests long. Select with HYPOTHESIS_PROFILE=soak.
# The models that start real processes size themselves from the same variable.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("soak", deadline=None, print_blob=True, max_examples=2000,
                          stateful_step_count=100)
settings.register_profile("nightly", parent=settings.get_profile("soak"))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The interpreter's one fork server is started here, with actorq preloaded, whatever the
# order of the tests: otherwise the first forkserver user (a benchmark peer, say) would
# start it without actorq, and a full run would test another start-up than a partial run.
# tests/process/test_spawn.py tests both orders in fresh interpreters.
get_context("forkserver")
multiprocessing.forkserver.ensure_running()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test's own ``timeout`` marker moves the faulthandler dump too.

    ``faulthandler_timeout`` (pyproject.toml) dumps every thread's stack when a test runs
    longer, to show a hang; pytest arms it for every test alike, so a test allowed longer
    (``@pytest.mark.timeout(300)``: 200 process starts on a loaded machine) printed a
    dump midway and then passed. Such a test gets its dump at its own bound (none with
    ``timeout(0)``), where pytest-timeout fails it.
    """
    marker = item.get_closest_marker("timeout")
    default = float(item.config.getini("faulthandler_timeout") or 0)
    if marker is None or not default:
        return
    bound = float(marker.args[0] if marker.args else marker.kwargs.get("timeout", default))
    if bound <= 0:
        faulthandler.cancel_dump_traceback_later()
    elif bound > default:
        try:
            from _pytest.faulthandler import fault_handler_stderr_fd_key
            out: int = item.config.stash[fault_handler_stderr_fd_key]
        except (ImportError, KeyError):
            out = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        faulthandler.dump_traceback_later(bound, file=out)


@pytest.fixture
def system() -> Iterator[actorq.ActorSystem]:
    with actorq.ActorSystem(call_timeout=20.0) as s:
        yield s


@pytest.fixture(params=["forkserver", "fork", "spawn"])
def any_system(request: pytest.FixtureRequest) -> Iterator[actorq.ActorSystem]:
    """A system under each start method (for process-level behaviour)."""
    with actorq.ActorSystem(start_method=request.param, call_timeout=20.0) as s:
        yield s
