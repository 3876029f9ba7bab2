"""actorq's C ring helpers (actorq/_native/_ring.c) against their Python references.

The u64 slots of shared memory (``actorq._native.u64_array``): the C ``U64Array`` and its
fallback (a memoryview cast to 'Q') behave alike. A ring's record write and read: the C
``RingCore`` and ring.py's ``RingCorePy`` leave the same bytes in the ring for the same
operations, and read them back alike (``read_plain``: a marshalled payload decoded).
Bad input to the C ones is a clear Python error, never a crash.
"""

from __future__ import annotations

import marshal
import mmap
import pickle
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actorq import _native
from actorq._ids import new_run_prefix
from actorq._transport import oob
from actorq._transport import ring as ring_module
from actorq._transport.channel import CTL_SIZE, ControlBlock
from actorq._transport.ring import H_HEAD, H_MAGIC, H_TAIL, MAGIC, Loaded, Record, Ring
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


needs_c = pytest.mark.skipif(not _native.HAVE_RING, reason="the C helpers are not built")


def _ring_pair(capacity: int, native: bool) -> tuple[bytearray, Ring, Ring]:
    """A producer and a consumer ``Ring`` over one bytearray, with the C core or not."""
    _native.select(native)
    try:
        raw = bytearray(Ring.size_for(capacity))
        return raw, Ring(memoryview(raw), init=True), Ring(memoryview(raw))
    finally:
        _native.select(True)


@needs_c
def test_the_c_layout_is_ring_pys() -> None:
    c = _native._ring
    assert c is not None
    assert (c.HEADER, c.H_HEAD, c.H_TAIL, c.H_SENT, c.REC_HEADER, c.WRAP) == (
        ring_module.HEADER, ring_module.H_HEAD, ring_module.H_TAIL, ring_module.H_SENT,
        ring_module.REC_HEADER, ring_module.WRAP)


ops = st.lists(st.tuples(st.sampled_from(["write", "read", "commit"]),
                         st.integers(0, 60), st.integers(0, 5)), max_size=80)


@needs_c
@given(capacity=st.integers(8, 32).map(lambda k: k * 8), ops=ops)
def test_c_and_python_cores_leave_the_same_bytes(capacity: int,
                                                 ops: list[tuple[str, int, int]]) -> None:
    """Each operation on both rings: the same results and, after each, the same bytes
    (header, record headers, wrap markers, payloads)."""
    raw_c, prod_c, cons_c = _ring_pair(capacity, True)
    raw_p, prod_p, cons_p = _ring_pair(capacity, False)
    assert type(prod_c.core) is not type(prod_p.core)
    try:
        pending: list[tuple[int, int]] = []  # (end, count) read, not committed
        cursor = 0
        for seq, (op, size, count) in enumerate(ops):
            if op == "write":
                payload = bytes((seq + i) & 0xFF for i in range(size))
                if size > prod_c.max_payload:
                    for prod in (prod_c, prod_p):
                        with pytest.raises(ValueError, match="exceeds the ring's limit"):
                            prod.try_write(payload, count)
                    continue
                assert prod_c.try_write(payload, count) == prod_p.try_write(payload, count)
            elif op == "read":
                rc, rp = cons_c.read_at(cursor), cons_p.read_at(cursor)
                assert (rc is None) == (rp is None)
                if rc is not None and rp is not None:
                    assert type(rc) is Record
                    assert (rc.pos, bytes(rc.payload), rc.count, rc.end) == (
                        rp.pos, bytes(rp.payload), rp.count, rp.end)
                    rc.payload.release()
                    rp.payload.release()
                    cursor = rc.end
                    pending.append((rc.end, rc.count))
            elif pending:
                end, n = pending.pop(0)
                cons_c.commit(end, n)
                cons_p.commit(end, n)
            assert raw_c == raw_p
            assert (prod_c.core.tail, prod_c.core.sent) == (prod_p.core.tail,
                                                            prod_p.core.sent)
    finally:
        for r in (prod_c, cons_c, prod_p, cons_p):
            r.release()


@needs_c
def test_the_c_core_refuses_bad_input_and_changes_nothing() -> None:
    raw, prod, cons = _ring_pair(64, True)
    before = bytes(raw)
    for bad in (-1, 2**64, "x", 1.5):
        with pytest.raises(ValueError, match="not a ring position"):
            cons.read_at(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a ring position"):
            cons.read_at(0, bad)  # type: ignore[arg-type]
    for count in (-1, 2**32, "2"):
        with pytest.raises(ValueError, match="not a message count"):
            prod.try_write(b"abc", count)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        prod.try_write(12)  # type: ignore[arg-type]  # not a buffer
    with pytest.raises(TypeError):
        prod.try_write()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        cons.read_at(0, None, 3)  # type: ignore[call-arg]
    assert bytes(raw) == before
    # a position that is not a record's (not 8-aligned, far ahead): no crash, and what
    # the Python reference reads there (a record from inside the data area)
    assert prod.try_write(b"hello", 1)
    _raw, prod_p, cons_p = _ring_pair(64, False)
    assert prod_p.try_write(b"hello", 1)
    for pos in (3, 12345678901):
        rc, rp = cons.read_at(pos), cons_p.read_at(pos)
        assert rc is not None
        assert rp is not None
        assert (rc.pos, bytes(rc.payload), rc.count, rc.end) == (
            rp.pos, bytes(rp.payload), rp.count, rp.end)
        rc.payload.release()
        rp.payload.release()
    prod_p.release()
    cons_p.release()
    prod.release()
    cons.release()
    with pytest.raises(ValueError, match="released"):
        prod.try_write(b"x", 1)
    with pytest.raises(ValueError, match="released"):
        cons.read_at(0)


@needs_c
def test_the_c_core_refuses_a_buffer_that_is_not_a_ring() -> None:
    core = _native._ring.RingCore  # type: ignore[union-attr]
    raw = bytearray(Ring.size_for(64))
    view = memoryview(raw)
    with pytest.raises(ValueError, match="256-byte header"):
        core(view[:200], view[200:], Record)
    with pytest.raises(ValueError, match="data area"):
        core(view, view[128:], Record)  # a data view that is not this ring's
    with pytest.raises(TypeError, match="memoryview"):
        core(view, bytes(64), Record)
    with pytest.raises(TypeError, match="tuple subclass"):
        core(view, view[256:], dict)
    with pytest.raises(BufferError):
        core(bytes(len(raw)), view[256:], Record)  # read-only


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_c), False])
def test_a_corrupt_record_length_is_an_error_naming_it(native: bool) -> None:
    raw, prod, cons = _ring_pair(64, native)
    assert prod.try_write(b"abc", 1)
    raw[256:260] = (1000).to_bytes(4, "little")  # over max_payload (24)
    with pytest.raises(RuntimeError, match="corrupt ring: record length 1000 at position 0"):
        cons.read_at(0)
    prod.release()
    cons.release()


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_c), False])
def test_a_segment_closes_under_a_ring_not_released(native: bool) -> None:
    """``Segment.close`` releases its own view whatever rings are still alive over it
    (their views are their own): it does not raise, with either implementation."""
    _native.select(native)
    try:
        seg = Segment.create(new_run_prefix() + "ring", Ring.size_for(4096))
        ring = Ring(seg.buf, init=True)
        assert ring.try_write(b"abc", 1)
        seg.close()  # the mapping stays while the ring's views live (unmapped later)
        ring.release()
        seg.unlink()
    finally:
        _native.select(True)


plain_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(), lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=8)


def _payloads() -> st.SearchStrategy[bytes]:
    """What a record may hold: marshalled plain data (any version), a pickle, nothing,
    or bytes that do not unmarshal."""
    return st.one_of(
        st.builds(marshal.dumps, plain_data, st.sampled_from([2, 4])),
        st.builds(pickle.dumps, plain_data),
        st.just(b""),
        st.binary(max_size=40))


# ~3 s of CPU (a ring pair per example); a loaded machine (load 20) stretched it past
# the default 60 s once
@pytest.mark.timeout(300)
@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_c), False])
@given(payloads=st.lists(_payloads(), max_size=6))
@example(payloads=[b"g" + struct.pack("<d", float("nan"))])  # a NaN, from random bytes
def test_read_plain_decodes_marshalled_payloads_and_hands_on_the_rest(
        native: bool, payloads: list[bytes]) -> None:
    """``read_plain`` with either core: a payload that unmarshals is a ``Loaded`` record
    holding what ``marshal.loads`` gives; a pickle, an empty payload or one that does not
    unmarshal is the ``Record`` ``read_at`` gives; positions and counts alike."""
    _raw, prod, cons = _ring_pair(8192, native)
    try:
        cursor = 0
        for i, body in enumerate(payloads):
            assert prod.try_write(body, i + 1)
            at, plain = cons.read_at(cursor), cons.read_plain(cursor)
            assert at is not None
            assert plain is not None
            assert (plain.pos, plain.count, plain.end) == (at.pos, at.count, at.end)
            want, loads = None, False
            if body and body[0] != pickle.PROTO[0]:
                try:
                    want, loads = marshal.loads(body), True
                except Exception:  # any error: not plain data
                    pass
            if loads:
                assert type(plain) is Loaded
                # compared as marshalled again (version 2: no references), not by ==:
                # random bytes may unmarshal to a NaN, unequal to itself
                assert marshal.dumps(plain.msgs, 2) == marshal.dumps(want, 2)
            else:
                assert type(plain) is Record
                assert bytes(plain.payload) == body
                plain.payload.release()
            at.payload.release()
            cursor = at.end
        assert cons.read_plain(cursor) is None
    finally:
        prod.release()
        cons.release()


def test_a_pickle_is_told_apart_by_its_first_byte_everywhere() -> None:
    assert ring_module.PICKLE_PROTO == oob.PICKLE_PROTO == pickle.PROTO[0]
