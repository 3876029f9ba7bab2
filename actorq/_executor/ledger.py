"""The batch ledger: what a worker finished of a batch survives the worker's death.

An executor owns one file in /dev/shm, mapped by every worker, cut into *slots*: one per
message that can be in flight (two per worker), ``SLOT`` bytes each (sparse: a page
costs memory once written). A batch (``run_many``) is sent with its slot and a batch
number. The worker writes the number into the slot's header, then appends each task's
outcome as the task finishes: ``<index, length, pickled outcome>``, then the header's
``used`` (so a record is never seen half written). No system call: stores into the
mapping, which outlives the process that made them.

If the worker is killed mid-batch, the pool retries the same message on another worker,
which finds its batch number in the slot's header: it takes the outcomes recorded there
and runs only the tasks missing. So a task that finished is never run again; the task
that was running when the worker died runs again (at-least-once, as a single task's
retry). An outcome too large for what is left of the slot is not recorded (its task
would run again after a crash). The slot is free again once the batch's reply arrives.

The file is named like actorq's segments (``aq_<pid>_<start>_<run>_``): the leak guard
sees one left behind, and a new system sweeps the file of a dead executor.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import tempfile
from typing import Any

from actorq._errors import format_remote
from actorq._ids import new_run_prefix
from actorq._shared import SHM_DIR

SLOT = 4 << 20  # bytes per slot: headers and the records of one batch
_SLOT_HEAD = struct.Struct("<QQ")  # batch number, bytes of records used
_USED = struct.Struct("<Q")
_HEAD = struct.Struct("<II")  # task index, length of the pickled outcome
_NONE = b""  # the record of a task that returned None

# (ok, value or exception, remote traceback text); ok None: not run (the worker's task
# limit), to be sent again
Outcome = tuple[bool | None, Any, str]
_DONE_NONE: Outcome = (True, None, "")


def create(slots: int) -> str:
    """Create an executor's ledger file of *slots* slots (sparse); return its path."""
    where = SHM_DIR if os.access(SHM_DIR, os.W_OK) else tempfile.gettempdir()
    path = os.path.join(where, f"{new_run_prefix()}xledger")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, slots * SLOT)
    finally:
        os.close(fd)
    return path


def remove(path: str) -> None:
    """Remove the ledger file (the executor closes); fine if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def open_map(path: str) -> mmap.mmap:
    """Map a ledger file (in a worker, once per executor)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class BatchRecord:
    """One batch's slot, as its worker sees it."""

    __slots__ = ("base", "done", "map", "used")

    def __init__(self, ledger_map: mmap.mmap, slot: int, batch: int) -> None:
        self.map = ledger_map
        self.base = slot * SLOT
        recorded, used = _SLOT_HEAD.unpack_from(ledger_map, self.base)
        if recorded == batch:  # an earlier attempt died mid-batch: what it finished
            self.done = _read(ledger_map, self.base + _SLOT_HEAD.size, used)
            self.used = used
        else:
            self.done = {}
            self.used = 0
            _SLOT_HEAD.pack_into(ledger_map, self.base, batch, 0)

    def record(self, index: int, outcome: Outcome) -> Outcome:
        """Append *outcome* of task *index*; return what the reply should carry.

        An outcome that cannot be pickled would also fail the whole reply: it becomes the
        task's own error (naming the type).
        """
        try:
            # a task returning None (side effects only, a common case): an empty record
            body = _NONE if outcome[1] is None and outcome[0] else pickle.dumps(outcome,
                                                                                 protocol=5)
        except BaseException as exc:  # SystemExit from a __reduce__ too: this task's error
            if outcome[0]:
                err: BaseException = TypeError(
                    f"the task's result cannot be sent back: {type(exc).__name__}: {exc}")
            else:
                err = RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]} (the exception "
                                   f"itself cannot be sent back: {type(exc).__name__}: {exc})")
            if isinstance(exc, SystemExit):
                err = exc
            outcome = (False, err, format_remote(exc))
            body = pickle.dumps(outcome, protocol=5)
        used = self.used
        end = used + _HEAD.size + len(body)
        if _SLOT_HEAD.size + end > SLOT:
            return outcome  # too large to keep here: runs again after a crash
        at = self.base + _SLOT_HEAD.size + used
        _HEAD.pack_into(self.map, at, index, len(body))
        self.map[at + _HEAD.size:at + _HEAD.size + len(body)] = body
        _USED.pack_into(self.map, self.base + 8, end)  # the record is whole: publish it
        self.used = end
        return outcome


def _read(ledger_map: mmap.mmap, start: int, used: int) -> dict[int, Outcome]:
    found: dict[int, Outcome] = {}
    at, end = start, start + used
    while at < end:
        index, length = _HEAD.unpack_from(ledger_map, at)
        at += _HEAD.size
        found[index] = pickle.loads(ledger_map[at:at + length]) if length else _DONE_NONE
        at += length
    return found
