"""The u64 slots of shared memory (``actorq._native.u64_array``): the C ``U64Array``
and its fallback (a memoryview cast to 'Q') behave alike, and bad input to the C one is
a clear Python error, never a crash."""

from __future__ import annotations

import mmap
from typing import Any

import pytest

from actorq import _native
from actorq._ids import new_run_prefix
from actorq._transport.channel import CTL_SIZE, ControlBlock
from actorq._transport.ring import H_HEAD, H_MAGIC, H_TAIL, MAGIC, Ring
from actorq._transport.shm import Segment

IMPLS = [pytest.param(_native.u64_array_py, id="python"),
         pytest.param(getattr(_native._ring, "U64Array", None), id="native",
                      marks=pytest.mark.skipif(not _native.HAVE_RING,
                                               reason="the C helpers are not built"))]


@pytest.mark.parametrize("make", IMPLS)
def test_items_are_the_buffers_little_endian_u64s(make: Any) -> None:
    raw = bytearray(64)
    slots = make(raw)
    assert len(slots) == 8
    slots[1] = 0x0102030405060708
    slots[-1] = 2**64 - 1  # negative indices count from the end, as a memoryview's
    assert raw[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert raw[56:] == b"\xff" * 8
    raw[16:24] = (5).to_bytes(8, "little")
    assert slots[2] == 5
    slots[3] += 7  # read, then write
    assert slots[3] == 7
    assert slots.tolist() == [0, 0x0102030405060708, 5, 7, 0, 0, 0, 2**64 - 1]
    slots.release()


@pytest.mark.parametrize("make", IMPLS)
def test_bad_indices_and_values_raise_and_write_nothing(make: Any) -> None:
    raw = bytearray(32)
    slots = make(raw)
    with pytest.raises(IndexError):
        slots[4]
    with pytest.raises(IndexError):
        slots[-5] = 1
    with pytest.raises(ValueError, match=r"U64Array|invalid value"):
        slots[0] = -1
    with pytest.raises(ValueError, match=r"U64Array|invalid value"):
        slots[0] = 2**64
    with pytest.raises(TypeError):
        slots[0] = 1.5
    with pytest.raises(TypeError):
        slots["head"]
    assert raw == bytearray(32)
    slots.release()
    with pytest.raises(ValueError, match="released"):
        slots[0]
    with pytest.raises(ValueError, match="released"):
        slots[0] = 1


@pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")
def test_the_c_array_refuses_buffers_it_cannot_use() -> None:
    u64 = _native._ring.U64Array  # type: ignore[union-attr]
    with pytest.raises(BufferError):
        u64(b"\0" * 16)  # read-only
    with pytest.raises(ValueError, match="not a whole number of u64"):
        u64(bytearray(12))
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        u64(memoryview(bytearray(24))[4:20])
    with pytest.raises(TypeError):
        u64(12)
    with pytest.raises(TypeError):
        del u64(bytearray(8))[0]


@pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")
def test_the_c_array_holds_its_buffer_until_released() -> None:
    mm = mmap.mmap(-1, 4096)
    slots = _native._ring.U64Array(mm)  # type: ignore[union-attr]
    with pytest.raises(BufferError):
        mm.close()  # exported: the mapping cannot go away under the array
    slots.release()
    slots.release()  # twice is fine
    mm.close()


def test_rings_and_control_blocks_over_shared_memory_release_cleanly() -> None:
    """Segments whose slots were C arrays close and unlink (no export left behind)."""
    prefix = new_run_prefix()
    seg = Segment.create(prefix + "ring", Ring.size_for(4096))
    ctl_seg = Segment.create(prefix + "ctl", CTL_SIZE)
    try:
        ring = Ring(seg.buf, init=True)
        assert ring.try_write(b"x" * 10, 1)
        assert ring.hdr[H_MAGIC] == MAGIC
        assert ring.hdr[H_TAIL] > ring.hdr[H_HEAD] == 0
        ring.release()
        ctl = ControlBlock(ctl_seg)
        ctl.slots[3] = 9
        assert ctl.slots[3] == 9
        ctl.close()  # closes its segment too
    finally:
        seg.close()
        seg.unlink()
        ctl_seg.unlink()
