"""A lone call's record (``Sending._send_now``): ``RingCore.write_lone`` in C and ring.py's
``RingCorePy.write_lone`` leave the same bytes in the ring and answer alike: busy (the
receiver has not handled all that was sent), over the size limit, no room, or written.
"""

from __future__ import annotations

import marshal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actorq import _native
from actorq._transport.oob import LONE_MARSHAL
from actorq._transport.ring import H_HANDLED, H_HEAD, Ring

CAPACITY = 4096
MSG = (1, 7, 0, "echo", ("x", 2.5, None, True), {})

CORES = [pytest.param(False, id="python"),
         pytest.param(True, id="native",
                      marks=pytest.mark.skipif(not _native.HAVE_RING,
                                               reason="the C helpers are not built"))]


def _rings(native: bool) -> tuple[bytearray, Ring, Ring]:
    _native.select(native)
    try:
        raw = bytearray(Ring.size_for(CAPACITY))
        return raw, Ring(memoryview(raw), init=True), Ring(memoryview(raw))
    finally:
        _native.select(True)


def _script(native: bool) -> tuple[bytes, list[int], list[Any]]:
    """The same writes on a fresh ring: what each returned, and what a reader reads."""
    raw, producer, consumer = _rings(native)
    core = producer.core
    got = [core.write_lone(MSG, LONE_MARSHAL, 1000)]
    got.append(core.write_lone(MSG, LONE_MARSHAL, 1000))  # not handled yet: busy
    consumer.hdr[H_HANDLED] = 1  # handled (the record is not committed: head stays)
    got.append(core.write_lone(("y" * 200,), LONE_MARSHAL, 100))  # over the limit
    big = ("z" * 1800,)
    got.append(core.write_lone(big, LONE_MARSHAL, 4000))  # fits (head at 0)
    consumer.hdr[H_HANDLED] = 2
    got.append(core.write_lone(big, LONE_MARSHAL, 4000))  # fits too
    consumer.hdr[H_HANDLED] = 3
    got.append(core.write_lone(big, LONE_MARSHAL, 4000))  # no room until committed
    read = []
    pos = 0
    while (rec := consumer.read_at(pos)) is not None:
        read.append((marshal.loads(rec.payload), rec.count))
        rec.payload.release()
        pos = rec.end
    consumer.hdr[H_HEAD] = pos
    got.append(core.write_lone(big, LONE_MARSHAL, 4000) > 0)  # room again: wraps
    snapshot = bytes(raw)
    for r in (producer, consumer):
        r.release()
    return snapshot, got, read


@pytest.mark.parametrize("native", CORES)
def test_write_lone_answers_each_case(native: bool) -> None:
    _snapshot, got, read = _script(native)
    assert got[1:3] == [-2, -1]
    assert 0 < got[0] < got[3] < got[4]
    assert got[5] == 0
    assert got[6] is True
    assert read == [([MSG], 1), ([("z" * 1800,)], 1), ([("z" * 1800,)], 1)]


@pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")
def test_the_c_and_python_lone_writes_leave_the_same_bytes() -> None:
    assert _script(True) == _script(False)


@pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")
def test_bad_arguments_are_clear_errors() -> None:
    _raw, producer, consumer = _rings(True)
    core = producer.core
    with pytest.raises(TypeError, match="3 arguments"):
        core.write_lone(MSG, LONE_MARSHAL)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unmarshallable"):
        core.write_lone((object(),), LONE_MARSHAL, 1000)
    assert producer.hdr.tolist() == consumer.hdr.tolist()
    assert core.tail == 0
    for r in (producer, consumer):
        r.release()


_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
            | st.text(max_size=40) | st.binary(max_size=40))
_plain = st.recursive(_scalars, lambda inner: (
    st.tuples(inner, inner) | st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)), max_leaves=30)


@pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")
@settings(max_examples=300, deadline=None)
@given(msg=_plain)
@example(msg=(1, 7, 0, "echo", (2**31 - 1, -(2**31), 2**31, 1.5, "é", b"", [], {}), {}))
@example(msg="x" * 600)  # over the C buffer: marshal's own bytes
@example(msg="x" * 3000)  # over half the ring
def test_the_c_lone_record_is_marshals_bytes(msg: Any) -> None:
    """Whatever the message, the record holds ``marshal.dumps([msg], 2)`` (the C writer
    takes the common plain data itself and leaves the rest to marshal)."""
    _raw, producer, consumer = _rings(True)
    try:
        want = marshal.dumps([msg], LONE_MARSHAL)
        if len(want) > producer.max_payload:  # never fits this ring: as try_write says
            with pytest.raises(ValueError, match="exceeds the ring's limit"):
                producer.core.write_lone(msg, LONE_MARSHAL, 1 << 20)
            return
        assert producer.core.write_lone(msg, LONE_MARSHAL, 1 << 20) > 0
        rec = consumer.read_at(0)
        assert rec is not None
        assert bytes(rec.payload) == want
        rec.payload.release()
    finally:
        for r in (producer, consumer):
            r.release()
