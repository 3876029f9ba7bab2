"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.native.helpers import selected


@pytest.fixture(scope="module", params=["native", "python"])
def slots_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's tests once with the C ``U64Array`` slots and once with the pure-Python
    fallback (memoryviews): the rings and control blocks made meanwhile use that one.
    The native half is skipped where the C helpers are not built or are forced off
    (``ACTORQ_NO_NATIVE=1``)."""
    with selected(request.param) as which:
        yield which
