"""Large messages: out-of-band buffers read without a copy, the spill path, ring limits."""

from __future__ import annotations

import os
import resource
import signal

import numpy as np
import pytest

import actorq
from actorq._transport.shm import SHM_DIR
from actorq.testing import wait_until


def mapped_from(address):
    """The file (or "") the mapping of this process that holds *address* maps."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else ""
    return None


class Sink(actorq.Actor):
    def describe(self, arr):
        path = mapped_from(arr.ctypes.data)
        return {
            "sum": float(arr.sum()),
            "shape": arr.shape,
            "owns_data": bool(arr.flags.owndata),
            "backed_by_mmap": path.startswith(SHM_DIR + "/aq_"),
            "writeable": bool(arr.flags.writeable),
        }

    def size(self, data):
        return len(data), data[:4], data[-4:]

    def echo(self, x):
        return x


def test_large_array_travels_out_of_band_and_is_read_without_copy(system):
    s = system.spawn(Sink)
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    info = s.describe(arr).result()
    assert info["sum"] == float(arr.sum())
    assert info["shape"] == arr.shape
    assert info["owns_data"] is False
    assert info["backed_by_mmap"] is True  # its data is the segment's memory: no copy
    assert info["writeable"] is True


def test_small_array_travels_in_band(system):
    s = system.spawn(Sink)
    info = s.describe(np.ones(10)).result()
    assert info["sum"] == 10.0
    assert info["backed_by_mmap"] is False


def test_large_array_result_comes_back_out_of_band(system):
    s = system.spawn(Sink)
    arr = np.random.default_rng(0).random((512, 512))
    back = s.echo(arr).result()
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("size", [100, 64 * 1024, 300 * 1024, 3 * 1024 * 1024])
def test_bytes_of_any_size_are_delivered(size):
    # ring of 256 KiB: a record may use 128 KiB; larger ones take the spill path
    with actorq.ActorSystem(ring_size=256 * 1024) as system:
        s = system.spawn(Sink)
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        n, head, tail = s.size(data).result()
        assert (n, head, tail) == (len(data), data[:4], data[-4:])
        assert s.echo(b"after").result() == b"after"  # the ring is still sound


def test_burst_larger_than_the_ring_is_delivered_in_order():
    with actorq.ActorSystem(ring_size=64 * 1024) as system:
        s = system.spawn(Sink)
        replies = [s.echo(b"y" * 1000 + bytes([i % 256])) for i in range(2000)]
        assert [r.result()[-1] for r in replies] == [i % 256 for i in range(2000)]


class Keeper(actorq.Actor):
    def __init__(self):
        self.kept = []

    def keep(self, arr):
        self.kept.append(arr)
        return len(self.kept)

    def sums(self):
        return [float(a.sum()) for a in self.kept]

    def drop(self):
        self.kept.clear()


def test_blocks_are_reused_only_once_the_receiver_let_go(system):
    k = system.spawn(Keeper)
    arrays = [np.full(200_000, float(i)) for i in range(6)]  # 1.6 MB each: out of band
    for i, arr in enumerate(arrays):
        assert k.keep(arr).result() == i + 1
    # every kept array still holds its own bytes: no block was reused under it
    assert k.sums().result() == [float(a.sum()) for a in arrays]
    k.drop().result()
    for i, arr in enumerate(arrays):  # now blocks come back and are reused
        assert k.keep(arr * 2).result() == i + 1
    assert k.sums().result() == [float((a * 2).sum()) for a in arrays]


def test_arrays_sent_one_after_another_reuse_one_block(system):
    # The actor lets go of a call's arguments before its reply goes out, so the block
    # the last array viewed is free again when the next array is sent: one block, warm
    # in the cache, not two taken in turn (the next array's copy would miss the cache).
    s = system.spawn(Sink)
    arr = np.arange(1 << 20, dtype=np.float64)
    for i in range(8):
        assert s.describe(arr + i).result()["sum"] == float((arr + i).sum())
    assert len(system._runtime.hub.pool._blocks) == 1


def test_sender_takes_no_page_faults_per_array_once_its_block_is_warm(system):
    # The one copy goes into a pooled block that is already faulted in: a fresh segment
    # (or a temporary in-band pickle) per array would fault in 2048 pages per 8 MiB.
    s = system.spawn(Sink)
    arr = np.arange(1 << 20, dtype=np.float64)
    for _ in range(3):
        assert s.describe(arr).result()["backed_by_mmap"] is True
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        assert s.describe(arr).result()["sum"] == float(arr.sum())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 500


def test_plain_arrays_pass_the_call_site_check_and_object_arrays_are_still_checked(system):
    # An array of a dtype without Python objects is known to pickle without pickling it
    # (_serialization._plain_array); one holding objects is still pickled to find out.
    s = system.spawn(Sink)
    rec = np.zeros(100_000, dtype=[("a", "f8"), ("b", "i4")])
    rec["b"] = np.arange(100_000)
    back = s.echo(rec).result()
    np.testing.assert_array_equal(back, rec)
    with pytest.raises(TypeError, match=r"argument 0 of Sink .*echo.*not picklable"):
        s.echo(np.array([signal.getsignal, lambda: 1], dtype=object))
    assert s.echo(np.arange(3)).result().tolist() == [0, 1, 2]  # nothing broke


class Reader(actorq.Actor):
    """Reads every byte of what it gets; counts its own page faults."""

    def faults(self):
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def total(self, arr):
        return float(arr.sum())

    def scale(self, arr, k):
        arr *= k  # in place: the array is writable, and its block is the handler's
        return arr

    def make(self, n, value):
        return np.full(n, float(value))

    def pid(self):
        return os.getpid()

    def hang_then_total(self, marker, arr):
        open(marker + ".started", "w").close()
        wait_until(lambda: not os.path.exists(marker), timeout=60)
        return float(arr.sum())


def test_receiver_maps_a_block_once_not_per_message(system):
    # Each 8 MiB array is 2048 pages; a receiver that mapped every block anew would take
    # page faults for every message it reads (thousands over ten arrays).
    r = system.spawn(Reader)
    arr = np.arange(1 << 20, dtype=np.float64)
    for _ in range(3):  # the pool's blocks exist and are mapped by now
        r.total(arr).result()
    before = r.faults().result()
    for i in range(10):
        assert r.total(arr + i).result() == float((arr + i).sum())
    assert r.faults().result() - before < 200


def test_received_array_is_writable_and_the_next_message_is_unharmed(system):
    r = system.spawn(Reader)
    arr = np.arange(200_000, dtype=np.float64)
    for k in (2.0, 3.0, 5.0):  # the same blocks again and again, written by the handler
        back = r.scale(arr, k).result()
        np.testing.assert_array_equal(back, arr * k)
    np.testing.assert_array_equal(arr, np.arange(200_000, dtype=np.float64))  # ours: intact


def test_array_outlives_its_sender_and_the_system(tmp_path):
    with actorq.ActorSystem(call_timeout=20.0) as system:
        r = system.spawn(Reader)
        first = r.make(300_000, 7).result()  # views a block of the actor's pool
        pid = r.pid().result()
        os.kill(pid, signal.SIGKILL)  # the sender is gone
        wait_until(lambda: r.pid().result() != pid)
        second = r.make(300_000, 8).result()  # the new instance's own pool
        assert float(first.sum()) == 7.0 * 300_000
        run_id = system._runtime.run_id
    # the system closed: its segments are unlinked (the leak guard checks), and this
    # process no longer keeps them mapped, except what the arrays still view
    from actorq._transport.oob import mapped_blocks
    assert mapped_blocks(run_id) == 0
    assert float(first.sum()) == 7.0 * 300_000
    assert float(second.sum()) == 8.0 * 300_000
    first[:] = 1.0  # still writable memory of its own
    assert float(first.sum()) == 300_000


def test_queued_arrays_are_delivered_again_intact_after_a_crash(system, tmp_path):
    r = system.spawn(Reader)
    pid = r.pid().result()
    marker = str(tmp_path / "hold")
    open(marker, "w").close()
    arrays = [np.full(150_000, float(i)) for i in range(4)]
    stuck = r.hang_then_total(marker, arrays[0])
    queued = [r.total(a) for a in arrays[1:]]
    wait_until(lambda: os.path.exists(marker + ".started"))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(actorq.ActorCrashed):
        stuck.result(timeout=20)
    assert [q.result(timeout=20) for q in queued] == [float(a.sum()) for a in arrays[1:]]


@pytest.mark.parametrize("make", [
    lambda: np.arange(400_000, dtype=np.float64)[::2],  # not contiguous: pickled in band
    lambda: np.asfortranarray(np.arange(200_000.0).reshape(400, 500)),
    lambda: np.zeros((0, 100_000)),
    lambda: np.array([{"a": i} for i in range(20_000)], dtype=object),
    lambda: np.arange(100_000, dtype=np.int32).view(np.dtype([("a", "<i2"), ("b", "<i2")])),
])
def test_awkward_arrays_arrive_equal(system, make):
    arr = make()
    arr.flags.writeable = arr.dtype != object  # a read-only sender's array is fine too
    back = system.spawn(Sink).echo(arr).result()
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    if arr.flags.f_contiguous:
        assert back.flags.f_contiguous  # Fortran order kept (out of band, order "F")
    np.testing.assert_array_equal(back, arr)


def _hold_until_killed(name, size, ready):
    """A receiver: decode the block *name* as the runtime does, keep the array, wait."""
    from actorq._transport import oob

    body, event = ready
    after_commit = []
    arr = oob.decode_loaded((oob._OOB_TAG, [(name, size, True)], body), after_commit)[0]
    oob.run_after_commit(after_commit)  # the record is committed; the array is still held
    event.set()
    while arr is not None:
        signal.pause()


def test_a_block_held_by_a_receiver_that_was_killed_is_reused():
    import multiprocessing
    import pickle

    from actorq._ids import new_run_prefix
    from actorq._transport.channel import SegmentNamer
    from actorq._transport.oob import BlockPool, encode_batch
    from actorq._transport.shm import unlink_prefix

    prefix = new_run_prefix()
    arr = np.arange(100_000, dtype=np.float64)  # 800 KB: a 1 MiB block
    pool = BlockPool(SegmentNamer(prefix), max_bytes=1 << 20)  # room for one block
    try:
        payload = encode_batch([arr], oob_threshold=1024, max_inline=1 << 20,
                               namer=SegmentNamer(prefix), pool=pool)
        _tag, specs, body = pickle.loads(payload)
        (name, size, pooled), = specs
        assert pooled
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        child = ctx.Process(target=_hold_until_killed, args=(name, size, (body, ready)))
        child.start()
        try:
            assert ready.wait(20)
            # the receiver holds the array: the one block is not free, a fresh segment
            assert pool.put(memoryview(arr))[2] is False
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join(20)
        # its finalizer never ran, but its process is gone: the block is taken back
        assert pool.put(memoryview(arr)) == (name, size, True)
    finally:
        pool.close()
        unlink_prefix(prefix)


def test_a_segment_left_under_a_reused_pid_does_not_block_the_next_sends():
    """Fresh segment names are ``<prefix>o<pid>_<k>``: a process gone with this pid may
    have left ``..._0`` behind (killed between creating and sending it). The next spill
    takes the next free name and the message arrives intact; the leftover is untouched."""
    from actorq._transport.channel import SegmentNamer
    from actorq._transport.oob import decode_batch, encode_batch, run_after_commit
    from actorq._transport.shm import Segment

    prefix = f"aq_test_reuse{os.getpid()}_"
    leftover = Segment.create(SegmentNamer(prefix)("o"), 4096)  # the dead process's
    try:
        message = ("big", bytes(range(256)) * 1024)
        payload = encode_batch([message], oob_threshold=1 << 30, max_inline=1024,
                               namer=SegmentNamer(prefix))
        after: list = []
        assert decode_batch(memoryview(payload), after) == [message]
        assert after  # the spill segment, to unlink once committed
        assert leftover.name not in after
        run_after_commit(after)
        assert os.path.exists(os.path.join(SHM_DIR, leftover.name))
    finally:
        leftover.close()
        leftover.unlink()
