"""Out-of-band segments after a crash: freed while the system is still open, never under
a live reader. Real processes, real SIGKILLs, the run's real /dev/shm segments."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import actorq
from actorq._transport.shm import SHM_DIR, list_segments
from actorq.testing import wait_until


def usage(system):
    """Bytes of the run's segments in /dev/shm, and their names."""
    names = list_segments(system._runtime.run_id)
    total = 0
    for name in names:
        try:
            total += os.stat(os.path.join(SHM_DIR, name)).st_size
        except FileNotFoundError:
            pass
    return total, names


def blocks_of(system, pid):
    return list_segments(f"{system._runtime.run_id}b{pid}_")


class Maker(actorq.Actor):
    """Makes arrays (out of band: its own pool's blocks) and sends them on."""

    def pid(self):
        return os.getpid()

    def make(self, n, value):
        return np.full(n, float(value))

    def send_to(self, other, n, value):
        # not waited for: the call goes out when this handler returns
        self.pending = other.keep(np.full(n, float(value)))
        return True

    def hold(self, marker, data):
        open(marker + ".started", "w").close()
        wait_until(lambda: not os.path.exists(marker), timeout=120)
        return len(data)


class Keeper(actorq.Actor):
    def __init__(self):
        self.sums = []

    def keep(self, arr):
        self.sums.append(float(arr.sum()))
        return len(self.sums)

    def seen(self):
        return self.sums

    def hold(self, marker):
        open(marker + ".started", "w").close()
        wait_until(lambda: not os.path.exists(marker), timeout=120)
        return True


def kill_and_wait_restart(ref, pid):
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: ref.pid().result(timeout=20) != pid, timeout=60)


def test_a_killed_actors_blocks_are_freed_and_arrays_it_sent_stay_readable(system):
    m = system.spawn(Maker)
    pid = m.pid().result()
    before, names_before = usage(system)
    kept = [m.make(300_000, i) for i in range(3)]  # three blocks at once, viewed here
    kept = [r.result() for r in kept]
    assert len(blocks_of(system, pid)) == 3
    del kept[1:]  # one still viewed by this (live) process, two free
    kill_and_wait_restart(m, pid)
    # handled: its blocks are unlinked, the run's usage is back to where it was
    wait_until(lambda: usage(system)[0] <= before, timeout=30)
    assert blocks_of(system, pid) == []
    assert usage(system)[1] == names_before
    # the array this process still views is intact: unlinking kept its mapping
    assert float(kept[0].sum()) == 0.0
    kept[0][:] = 2.0
    assert float(kept[0].sum()) == 600_000.0
    assert m.make(300_000, 5).result().sum() == 1_500_000.0  # the new instance's own pool


def test_a_block_in_flight_from_a_killed_actor_is_freed_only_after_it_was_read(
        system, tmp_path):
    m = system.spawn(Maker)
    k = system.spawn(Keeper, name="keeper")
    pid = m.pid().result()
    assert m.send_to(k, 10, 1).result() is True  # in band: the ring from m to k is made
    wait_until(lambda: k.seen().result() == [10.0])
    before, _ = usage(system)
    marker = str(tmp_path / "hold")
    open(marker, "w").close()
    busy = k.hold(marker)  # the keeper reads nothing until the marker is gone
    wait_until(lambda: os.path.exists(marker + ".started"))
    assert m.send_to(k, 300_000, 3).result() is True
    # copied into a block and queued in the keeper's ring (its hold is the other one)
    wait_until(lambda: system.metrics()["actors"]["keeper"]["in_flight"] == 2)
    assert len(blocks_of(system, pid)) == 1
    kill_and_wait_restart(m, pid)
    # the record that names the block is not read yet: the block must stay
    assert len(blocks_of(system, pid)) == 1
    os.unlink(marker)
    assert busy.result(timeout=30) is True
    # read intact after the crash (its own ring: it may come after the user's calls)
    wait_until(lambda: k.seen().result(timeout=30) == [10.0, 900_000.0], timeout=30)
    wait_until(lambda: blocks_of(system, pid) == [], timeout=30)
    wait_until(lambda: usage(system)[0] <= before, timeout=30)


@pytest.mark.parametrize("size", [300_000, 3 << 20])  # a pooled block; a spilled record
def test_a_message_that_died_with_its_actor_frees_its_segment(system, tmp_path, size):
    # The call being handled at the SIGKILL is not delivered again (redeliver=False):
    # its record is committed past, and what its commit does (unlink a spill, release
    # a block of the sender's pool for reuse) is done then.
    m = system.spawn(Maker)
    pid = m.pid().result()
    before, _ = usage(system)
    marker = str(tmp_path / "hold")
    open(marker, "w").close()
    data = np.ones(size // 8) if size < (1 << 20) else b"x" * size  # bytes: in band
    stuck = m.hold(marker, data)
    wait_until(lambda: os.path.exists(marker + ".started"))
    grown, _ = usage(system)
    assert grown > before  # the block or the spill is there
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(actorq.ActorCrashed):
        stuck.result(timeout=30)
    wait_until(lambda: m.pid().result(timeout=20) != pid, timeout=60)
    if size >= (1 << 20):
        wait_until(lambda: usage(system)[0] <= before, timeout=30)
    else:  # the block is this process's pool's: committed, so reusable once let go
        (block,) = system._runtime.hub.pool._blocks
        wait_until(lambda: block.flags[1] == 0, timeout=30)
        # the dead letter keeps the message, so this process views the block now
        assert block.flags[0] == os.getpid()
    os.unlink(marker)
    assert m.hold(marker, data).result(timeout=30) == len(data)
