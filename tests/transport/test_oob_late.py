"""The end of an out-of-band buffer copied after its record is out (``oob.LATE_BYTES``):
the receiver reads it whole, waits for a live sender, drops the record of a dead one."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading

import numpy as np
import pytest

import actorq
from actorq._errors import DecodeError
from actorq._ids import new_run_prefix
from actorq._transport import oob
from actorq._transport.channel import SegmentNamer
from actorq._transport.shm import unlink_prefix
from actorq.testing import wait_until

LATE = oob.LATE_BYTES


class Echo(actorq.Actor):
    def echo(self, x):
        return x

    def last(self, arr):
        return arr.reshape(-1, order="A")[-3:].tolist()  # the late part, read by the actor


@pytest.mark.parametrize("make", [
    lambda: np.arange(LATE // 8 - 1, dtype=np.float64),  # all of it late
    lambda: np.arange(LATE // 8 + 1, dtype=np.float64),  # all but 8 bytes late
    lambda: np.random.default_rng(1).integers(0, 255, LATE * 3 + 12345, dtype=np.uint8),
    lambda: np.arange(LATE // 2 + 7, dtype=np.int16) * -3,  # odd length, odd size
    lambda: np.asfortranarray(np.arange(3 * LATE // 8, dtype=np.float64).reshape(-1, 3)),
    lambda: np.arange(LATE // 4 * 3, dtype=np.int32)[::3],  # not contiguous: in band
    lambda: np.zeros(LATE // 8 + 5, dtype=[("a", "<f4"), ("b", "<i2"), ("c", "u1")]),
])
def test_arrays_around_the_late_part_arrive_whole(system, make):
    arr = make()
    s = system.spawn(Echo)
    for _ in range(3):  # the same pooled block each time: its old bytes must not show
        back = s.echo(arr).result()
        assert back.dtype == arr.dtype
        assert back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)
        assert s.last(arr).result() == arr.reshape(-1, order="A")[-3:].tolist()
        arr = arr[::-1].copy(order="K") if arr.flags.c_contiguous else arr


@pytest.fixture
def pool():
    prefix = new_run_prefix()
    blocks = oob.BlockPool(SegmentNamer(prefix))
    try:
        yield blocks
    finally:
        blocks.close()
        unlink_prefix(prefix)


def encode(msgs, pool):
    return oob.encode_batch(msgs, oob_threshold=1024, max_inline=1 << 20,
                            namer=SegmentNamer("aq_unused_"), pool=pool)


def test_the_receiver_waits_for_the_end_of_the_copy(pool):
    old = np.full(LATE // 8 + 1000, 1.0)
    new = np.full(LATE // 8 + 1000, 2.0)
    after: list = []
    oob.decode_batch(memoryview(encode([old], pool)), after)  # the block holds old bytes
    oob.run_after_commit(after)
    copies = oob.start_late()
    payload = encode([new], pool)
    oob._late.copies = None  # this thread encodes nothing more: the record is "out"
    assert len(copies) == 1
    main = threading.get_ident()
    waited = []

    def finish_once_the_receiver_waits():
        try:  # times out if the receiver went on without waiting for the end
            wait_until(lambda: sys._current_frames()[main].f_code.co_name == "_wait_copied")
            waited.append(True)
        finally:
            oob.finish_late(copies)

    finisher = threading.Thread(target=finish_once_the_receiver_waits)
    finisher.start()
    try:
        got = oob.decode_batch(memoryview(payload), after)
    finally:
        finisher.join(30)
    assert waited == [True]
    np.testing.assert_array_equal(got[0], new)
    del got
    oob.run_after_commit(after)


def _exit_at_once():
    os._exit(0)


def test_a_record_whose_sender_died_while_copying_is_dropped_and_frees_its_block(pool):
    child = multiprocessing.get_context("fork").Process(target=_exit_at_once)
    child.start()
    child.join(30)
    dead = child.pid  # reaped: no process has this pid now
    copies = oob.start_late()
    payload = encode([np.arange(LATE // 4, dtype=np.float64)], pool)
    oob._late.copies = None
    (name, _size, pooled), = pickle.loads(payload)[1]
    block = pool._blocks[0]
    assert pooled
    assert block.flags[2] == os.getpid()  # copying: the end is left for later
    block.flags[2] = dead  # its sender died before finish_late
    after: list = []
    with pytest.raises(DecodeError, match=rf"pid {dead}.*{name}.*died while copying"):
        oob.decode_batch(memoryview(payload), after)
    assert block.flags[1] == 1
    oob.run_after_commit(after)  # the dropped record is committed
    assert block.flags[1] == 0
    copies.clear()


def test_a_record_not_sent_after_all_leaves_no_late_copy_behind(pool):
    first = np.full(LATE // 8 * 2, 1.0)
    second = np.full(LATE // 8 * 2, 2.0)
    copies = oob.start_late()
    oob.release_payload(encode([first], pool), pool)  # not sent: its block is free again
    assert copies == []
    assert pool._blocks[0].flags[2] == 0
    oob._late.copies = None
    payload = encode([second], pool)  # the same block, copied whole at once
    oob.finish_late(copies)  # nothing left from the first: the second stays intact
    after: list = []
    got = oob.decode_batch(memoryview(payload), after)[0]
    np.testing.assert_array_equal(got, second)
    del got
    oob.run_after_commit(after)
