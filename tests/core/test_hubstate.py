"""A hub's inbound channels keep a tuple of themselves (``InboundChannels.all``) that
the per-message paths read instead of building one."""

from __future__ import annotations

from typing import Any

import pytest

from actorq._core.hubstate import InboundChannels


def test_all_follows_every_change_of_the_inbound_channels() -> None:
    chans = InboundChannels()
    a, b, c = object(), object(), object()
    assert chans.all == ()
    chans[1] = a  # type: ignore[assignment]
    chans[2] = b  # type: ignore[assignment]
    assert chans.all == (a, b)
    chans[1] = c  # type: ignore[assignment]  # replaced in place: order kept
    assert chans.all == (c, b)
    del chans[1]
    assert chans.all == (b,)
    assert chans.pop(2) is b
    assert chans.all == ()
    assert chans.pop(3, None) is None
    with pytest.raises(KeyError):
        chans.pop(3)
    chans[4] = a  # type: ignore[assignment]
    chans.clear()
    assert chans.all == ()
    assert dict(chans) == {}


def _ior(chans: InboundChannels) -> None:
    chans |= {2: object()}  # type: ignore[dict-item]


@pytest.mark.parametrize("change", [
    lambda chans: chans.update({2: object()}),
    lambda chans: chans.setdefault(2, object()),
    lambda chans: chans.popitem(),
    _ior,
], ids=["update", "setdefault", "popitem", "ior"])
def test_a_change_that_would_leave_all_behind_is_refused(change: Any) -> None:
    chans = InboundChannels()
    chans[1] = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="InboundChannels"):
        change(chans)
    assert chans.all == tuple(chans.values())
