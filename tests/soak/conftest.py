"""The long soak runs only when asked for: ``-m soak`` (or ``ACTORQ_SOAK=1``)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr") or "") or os.environ.get("ACTORQ_SOAK"):
        return
    skip = pytest.mark.skip(reason="long soak: run with -m soak (see tests/soak/test_chaos.py)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)
