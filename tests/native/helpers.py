"""Helpers of the tests that run twice, with actorq's C helpers and with their fallbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from actorq import _native


@contextlib.contextmanager
def selected(which: str) -> Iterator[str]:
    """``_native.select`` for the body: *which* "native" (the C helpers; the test is
    skipped where they are not built or are forced off, ``ACTORQ_NO_NATIVE=1``) or
    "python" (the pure-Python fallbacks); the C helpers are selected again after."""
    native = which == "native"
    if _native.select(native) != native:
        _native.select(True)
        pytest.skip("the C helpers are not built here (or ACTORQ_NO_NATIVE is set)")
    try:
        yield which
    finally:
        _native.select(True)
