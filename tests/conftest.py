from __future__ import annotations

import multiprocessing.forkserver
import os
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


@pytest.fixture
def system() -> Iterator[actorq.ActorSystem]:
    with actorq.ActorSystem(call_timeout=20.0) as s:
        yield s


@pytest.fixture(params=["forkserver", "fork", "spawn"])
def any_system(request: pytest.FixtureRequest) -> Iterator[actorq.ActorSystem]:
    """A system under each start method (for process-level behaviour)."""
    with actorq.ActorSystem(start_method=request.param, call_timeout=20.0) as s:
        yield s
