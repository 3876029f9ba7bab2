"""A message too large for shared memory: a clear error for it alone, nothing else lost.

Shared memory is made to run out for real: a file size limit on this process (the
sender), so that creating a segment for the message's buffers (or its spilled record)
fails as it does when /dev/shm is full.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal

import numpy as np
import pytest

import actorq
from actorq._transport.shm import SHM_DIR, list_segments
from actorq.testing import wait_until

LIMIT = 32 << 20


@contextlib.contextmanager
def file_size_limit(limit):
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def usage(system):
    total = 0
    for name in list_segments(system._runtime.run_id):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(os.path.join(SHM_DIR, name)).st_size
    return total


class Collector(actorq.Actor):
    def __init__(self):
        self.got = []

    def receive(self, message):
        self.got.append(message if isinstance(message, int) else len(message))

    def size(self, data):
        return len(data)

    def seen(self):
        return self.got


@pytest.mark.parametrize("big", [
    lambda: np.ones(LIMIT // 4),  # 64 MiB: one buffer out of band
    lambda: b"x" * (2 * LIMIT),  # 64 MiB in band: a record spilled
], ids=["array", "spill"])
def test_a_message_too_large_for_shared_memory_fails_alone_and_loses_nothing(system, big):
    c = system.spawn(Collector)
    small = np.ones(100_000)  # out of band too, and fits
    assert c.size(small).result() == 100_000
    before = usage(system)
    data = big()
    with file_size_limit(LIMIT):
        with pytest.raises(actorq.MessageTooLarge, match="shared memory") as info:
            c.size(data).result(timeout=30)
        assert isinstance(info.value, ValueError)
        assert "Collector" in str(info.value)
        # in one burst: the too large tell is dropped alone, the others are delivered
        for item in (1, small, data, 2):
            c.tell(item)
        assert c.size(small).result(timeout=30) == 100_000
    wait_until(lambda: c.seen().result(timeout=30) == [1, 100_000, 2], timeout=30)
    # nothing it took is left: no segment, and this process's pool blocks are free
    assert usage(system) <= before
    assert all(block.free() for block in system._runtime.hub.pool._blocks)
    assert c.size(data).result(timeout=60) == len(data)  # room again: it goes
