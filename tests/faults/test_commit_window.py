"""A crash between committing a message and clearing the crash-attribution slot.

Found by the chaos soak (seed 20261130, 240 s): a call to an actor without
``redeliver`` was handled twice, and its caller got ``ActorCrashed``. The actor cleared
its slot (``C_BUSY``) *before* committing the message, so a SIGKILL in between left a
handled message uncommitted with nothing naming it: the system failed the caller ("after
handling this call") and the restarted instance handled it again. The slot is now
cleared after the commit, and names the message's place in its ring (``C_SEQ``); a
crash with the slot set but the message committed counts it as handled.

A SIGKILL cannot be aimed at a window of a few instructions, so the test builds the
state the actor is in at that moment: a call whose handler is still running gets its
message committed (what the actor does right after the handler returns), then the
process is killed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import actorq
from actorq._core.protocol import C_BUSY, SYSTEM_ID
from actorq._transport.ring import Ring
from actorq.testing import wait_until


class Worker(actorq.Actor):
    def __init__(self, log):
        self.log = log

    def _note(self, item):
        with open(self.log, "a") as f:
            f.write(f"{item}\n")

    def hold(self, marker):
        self._note("hold")
        with open(marker + ".started", "w"):
            pass
        while os.path.exists(marker):
            time.sleep(0.001)
        return "held"

    def record(self, item):
        self._note(item)
        return item

    def pid(self):
        return os.getpid()


def test_a_crash_after_the_commit_with_the_slot_still_set_handles_nothing_twice(tmp_path):
    log, marker = tmp_path / "log", tmp_path / "hold"
    marker.write_text("x")
    with actorq.ActorSystem() as s:
        w = s.spawn(Worker, str(log), name="w")
        pid = w.pid().result()
        held = w.hold(str(marker))
        wait_until(lambda: (tmp_path / "hold.started").exists())
        after = w.record("next")
        cell = s._runtime._cells[w.actor_id]
        assert cell.ctl.slots[C_BUSY] == SYSTEM_ID + 1  # handling our call
        ring = Ring(cell.inbound[SYSTEM_ID].buf)
        try:
            rec = ring.read_at(ring.head())
            assert rec is not None
            end, count = rec.end, rec.count
            rec.payload.release()
            ring.commit(end, count)  # the handler returned and its message was committed
        finally:
            ring.release()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(actorq.ActorCrashed, match="after handling this call"):
            held.result(timeout=20)
        assert after.result(timeout=20) == "next"  # the next call was not blamed
        assert log.read_text().splitlines() == ["hold", "next"]  # nothing ran twice
        assert s.dead_letters() == []
