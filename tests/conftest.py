from __future__ import annotations

from collections.abc import Iterator

import pytest

import actorq


@pytest.fixture
def system() -> Iterator[actorq.ActorSystem]:
    with actorq.ActorSystem(call_timeout=20.0) as s:
        yield s


@pytest.fixture(params=["forkserver", "fork", "spawn"])
def any_system(request: pytest.FixtureRequest) -> Iterator[actorq.ActorSystem]:
    """A system under each start method (for process-level behaviour)."""
    with actorq.ActorSystem(start_method=request.param, call_timeout=20.0) as s:
        yield s
