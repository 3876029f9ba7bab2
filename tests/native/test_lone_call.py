"""An actor's lone call in C (``_native.lone_begin``, ``lone_commit``, ``write_reply``)
leaves in shared memory what the Python code of ``serve_alone`` and ``send_reply``
leaves (ACTORQ_NO_NATIVE=1 runs that code), and refuses bad input changing nothing."""

from __future__ import annotations

import marshal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actorq import _native
from actorq._core.protocol import (
    C_BUSY,
    C_HANDLED,
    C_REPLY_TO,
    C_SEQ,
    C_STOP,
    C_TOKEN,
    OP_REPLY,
)
from actorq._ids import new_run_prefix
from actorq._transport.channel import CTL_SIZE, ControlBlock
from actorq._transport.oob import LONE_MARSHAL
from actorq._transport.ring import (
    H_CUR_REC,
    H_CUR_SUB,
    H_HANDLED,
    H_HEAD,
    H_READER,
    H_TAIL,
    H_WANT,
    READER_EXPECTED,
    Ring,
)
from actorq._transport.shm import Segment, unlink_prefix

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import msgpath_harness

needs_c = pytest.mark.skipif(_native.lone_begin is None,
                             reason="the C helpers are not built (or ACTORQ_NO_NATIVE)")


@pytest.fixture
def shm() -> Iterator[tuple[ControlBlock, Ring]]:
    """A control block and a ring in shared memory, with the C slots."""
    prefix = new_run_prefix()
    ctl_seg = Segment.create(prefix + "c", CTL_SIZE)
    ring_seg = Segment.create(prefix + "r", Ring.size_for(4096))
    ctl = ControlBlock(ctl_seg)
    ring = Ring(ring_seg.buf, init=True)
    try:
        yield ctl, ring
    finally:
        ring.release()
        ctl.close()
        ring_seg.close()
        unlink_prefix(prefix)


@needs_c
def test_a_lone_calls_start_and_commit_set_the_slots_python_sets(
        shm: tuple[ControlBlock, Ring]) -> None:
    ctl, ring = shm
    slots, hdr = ctl.slots, ring.hdr
    assert _native.lone_begin is not None
    assert _native.lone_commit is not None
    hdr[H_HANDLED] = 41
    seq = _native.lone_begin(slots, hdr, 512, 77, 5, 3)
    assert seq == 41
    assert (slots[C_TOKEN], slots[C_REPLY_TO], slots[C_SEQ], slots[C_BUSY]) == (77, 6, 41, 3)
    assert _native.lone_commit(slots, hdr, seq, 640) == 0  # nobody waits for credit
    assert (slots[C_HANDLED], slots[C_BUSY], hdr[H_HANDLED], hdr[H_HEAD]) == (1, 0, 42, 640)
    # a producer waiting for credit: its want, loaded after the commit
    hdr[H_WANT] = 5
    assert _native.lone_commit(slots, hdr, 42, 700) == 5
    assert (slots[C_HANDLED], hdr[H_HANDLED], hdr[H_HEAD]) == (2, 43, 700)
    hdr[H_HANDLED] = 42
    # a tell (token 0) leaves the reply slot as it was
    slots[C_REPLY_TO] = 0
    assert _native.lone_begin(slots, hdr, 640, 0, 9, 3) == 42
    assert (slots[C_TOKEN], slots[C_REPLY_TO]) == (0, 0)


@needs_c
def test_a_stop_or_a_record_a_predecessor_began_is_left_to_pump(
        shm: tuple[ControlBlock, Ring]) -> None:
    ctl, ring = shm
    slots, hdr = ctl.slots, ring.hdr
    assert _native.lone_begin is not None
    slots[C_STOP] = 1
    assert _native.lone_begin(slots, hdr, 0, 7, 1, 2) == -1
    slots[C_STOP] = 0
    hdr[H_CUR_REC], hdr[H_CUR_SUB] = 256, 1
    assert _native.lone_begin(slots, hdr, 256, 7, 1, 2) == -1
    assert (slots[C_TOKEN], slots[C_BUSY]) == (0, 0)  # nothing set
    assert _native.lone_begin(slots, hdr, 0, 7, 1, 2) == 0  # another record: served


@needs_c
def test_a_reply_written_in_c_is_the_python_paths_record(
        shm: tuple[ControlBlock, Ring]) -> None:
    _ctl, ring = shm
    assert _native.write_reply is not None
    msg = (OP_REPLY, 12, True, "hé", "")
    end = _native.write_reply(ring.core, msg, 1 << 20, True)
    assert end is not None
    assert end == ring.hdr[H_TAIL] > 0
    rec = ring.read_at(0)
    assert rec is not None
    assert bytes(rec.payload) == marshal.dumps([msg], LONE_MARSHAL)
    rec.payload.release()
    # the reader said it would spin: a negative tail (hold the doorbell)
    ring.hdr[H_READER] = READER_EXPECTED
    end2 = _native.write_reply(ring.core, (OP_REPLY, 13, True, None, ""), 1 << 20, True)
    assert end2 is not None
    assert -end2 == ring.hdr[H_TAIL] > end
    assert _native.write_reply(ring.core, (OP_REPLY, 14, True, 1.5, ""), 1 << 20,
                               False) == ring.hdr[H_TAIL]


@needs_c
@pytest.mark.parametrize("value", [[1], (1,), {"a": 1}, object(), True.__class__])
def test_a_reply_that_is_not_plain_data_is_left_to_python(
        shm: tuple[ControlBlock, Ring], value: Any) -> None:
    _ctl, ring = shm
    assert _native.write_reply is not None
    assert _native.write_reply(ring.core, (OP_REPLY, 1, True, value, ""), 1 << 20,
                               True) is None
    assert ring.hdr[H_TAIL] == 0


@needs_c
def test_too_big_or_no_room_is_left_to_python(shm: tuple[ControlBlock, Ring]) -> None:
    _ctl, ring = shm
    assert _native.write_reply is not None
    big = (OP_REPLY, 1, True, "x" * 300, "")
    assert _native.write_reply(ring.core, big, 100, True) is None  # the spill path's
    n = 0
    while _native.write_reply(ring.core, big, 1 << 20, False) is not None:
        n += 1
    assert n > 5
    assert ring.hdr[H_TAIL] > 0
    tail = ring.hdr[H_TAIL]
    assert _native.write_reply(ring.core, big, 1 << 20, False) is None
    assert ring.hdr[H_TAIL] == tail


@needs_c
def test_bad_input_is_an_error_naming_it_and_changes_nothing(
        shm: tuple[ControlBlock, Ring]) -> None:
    ctl, ring = shm
    slots, hdr = ctl.slots, ring.hdr
    assert _native.lone_begin is not None
    assert _native.lone_commit is not None
    assert _native.write_reply is not None
    with pytest.raises(TypeError, match="slots must be a U64Array"):
        _native.lone_begin(memoryview(bytearray(256)).cast("Q"), hdr, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="token"):
        _native.lone_begin(slots, hdr, 0, -1, 1, 1)
    with pytest.raises(TypeError, match="takes 6 arguments"):
        _native.lone_begin(slots, hdr, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 4 arguments"):
        _native.lone_commit(slots, hdr)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="reply tuple"):
        _native.write_reply(ring.core, [OP_REPLY, 1, True, 1, ""], 100, True)
    assert slots.tolist() == [0] * len(slots)
    assert hdr[H_TAIL] == 0
    assert hdr[H_HEAD] == 0


def _calls_leave(native: bool, n: int) -> list[int]:
    """The actor's control block and both rings' headers and bytes after *n* calls
    through the real hubs (benchmarks/msgpath_harness.py's call-real)."""
    assert _native.select(native) == native
    try:
        h = msgpath_harness.Harness(msgpath_harness._system_hub)
        try:
            h.calls_real(n)
            actor = h.receiver
            out = actor.outbound[0].ring
            inb = actor.inbound[0].ring
            state: list[Any] = [*actor.ctl.slots.tolist(), *inb.hdr.tolist()[:16],
                                *out.hdr.tolist()[:16]]
            pos = first = 0
            while (rec := out.read_at(pos)) is not None:  # each reply record, its token
                payload = bytes(rec.payload)           # counted from the first one's
                rec.payload.release()
                (msg,) = marshal.loads(payload)
                first = first or msg[1]
                state.append((rec.pos, rec.end, len(payload), msg[0], msg[1] - first,
                              *msg[2:]))
                pos = rec.end
            return state
        finally:
            h.close()
    finally:
        _native.select(True)


@needs_c
def test_a_stream_of_calls_leaves_the_same_shared_memory_with_and_without_c() -> None:
    assert _calls_leave(True, 50) == _calls_leave(False, 50)
