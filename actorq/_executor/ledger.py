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
retry). The slot is free again once the batch's reply arrives.

The header's *step* word says what the worker was doing to which task: unpickling an
argument (``DECODING``, with the argument's ordinal), unpickling the task's function
(``LOADING``: importing its module, on a worker's first task of that function) or
pickling an outcome (``ENCODING``), with the worker's pid. A worker that dies in one of
these steps may have been killed by the task's data, not by its run (a segfault or an
``os._exit`` in a ``__setstate__``/``__reduce__``, or in a module's import): whoever
reads the slot next (the retry, or the executor once the pool gave up) then fails that
task instead of running it again, which would kill another worker the same way
(``crash_step``). A first death in a step only makes the step a *suspect*: something
else (the OOM killer, a ``SIGKILL``) may have hit the worker at that moment. The retry
moves the step to the header's *suspect* word and does it again: unpickles again (the
task had not run), or runs the task again and pickles its outcome again (it ran: it runs
again, as a task whose worker died while it ran does; the executor is at-least-once); a
second death in the same step (same task, same part, another worker) blames the data.
The executor writes the suspect word when it sends a message: 0, or the step of a task
it sends again after a first death with no retry left (``set_suspect``).

A large outcome (over ``SPILL_AT``, or more than what is left of the slot) is written to
a file of its own beside the ledger, ``<ledger>_<slot>_<batch>_<index>``, and its record
in the slot only says so (the header counts the batch's spilled files); a retry reads it
from there. The executor removes a batch's spilled files when the batch's reply arrives
(``take_spills``), and every file of the ledger when it closes (``remove``).

The files are named like actorq's segments (``aq_<pid>_<start>_<run>_``, the executor's
process): the leak guard sees one left behind, and a new system sweeps the files of a
dead executor.
"""

from __future__ import annotations

import contextlib
import glob
import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

from actorq._errors import EncodeError, format_remote
from actorq._executor.sendback import unsendable_exception
from actorq._ids import new_run_prefix
from actorq._shared import SHM_DIR

SLOT = 4 << 20  # bytes per slot: headers and the records of one batch
SPILL_AT = 1 << 20  # a pickled outcome larger than this goes to a file of its own
_SLOT_HEAD = struct.Struct("<QQQQ")  # batch number, bytes of records used, files spilled,
#                                    step (pid << 32 | kind << 28 | ordinal << 16 | task + 1)
_USED = struct.Struct("<Q")
_STEP_AT = 24  # the step word, in the slot's header
_SUSPECT_AT = 32  # the suspect word: a step an earlier worker died in, once (or 0)
_RECORDS_AT = 40  # the outcome records, after the header
_SAME_STEP = 0xFFFFFFFF  # the bits of a step word that name the step, not the worker
# steps: unpickling an argument, pickling an outcome, unpickling the task's function
DECODING, ENCODING, LOADING = 1, 2, 3
MAX_ORDINAL = 0xFFF  # an argument past this ordinal is named by its task only
_HEAD = struct.Struct("<II")  # task index, length of the pickled outcome
_NONE = b""  # the record of a task that returned None
_SPILLED = 0xFFFFFFFF  # the length of a record whose outcome is in its spill file

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
    """Remove the ledger file and every spilled file of it (the executor closes); fine
    if they are gone already."""
    for name in [path, *glob.glob(glob.escape(path) + "_*")]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def spill_path(path: str, slot: int, batch: int, index: int) -> str:
    """Where a large outcome of task *index* of *batch* in *slot* is kept."""
    return f"{path}_{slot}_{batch}_{index}"


def take_spills(ledger_map: mmap.mmap, path: str, slot: int) -> None:
    """The batch in *slot* is answered: remove the files it spilled (if any; one read of
    the slot's header otherwise)."""
    batch, _used, spills, _step = _SLOT_HEAD.unpack_from(ledger_map, slot * SLOT)
    if spills:
        for name in glob.glob(glob.escape(f"{path}_{slot}_{batch}_") + "*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def open_map(path: str) -> mmap.mmap:
    """Map a ledger file (in a worker, once per executor)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class Step(NamedTuple):
    """What a worker was doing to a task of its batch when it was last seen (``step``)."""

    kind: int  # DECODING, ENCODING or LOADING
    task: int  # index in the batch
    ordinal: int  # DECODING: which packed argument of the task (``MAX_ORDINAL``: unknown)
    pid: int  # the worker
    earlier: int = 0  # the pid of an earlier worker that died in the same step, if any

    @property
    def blamed(self) -> bool:
        """The task's data killed the worker: two workers died in this step (one death
        there may have been something else's: the OOM killer, a ``SIGKILL``)."""
        return self.earlier != 0

    def word(self, task: int | None = None) -> int:
        """The step's header word (for task *task* instead: the same step, sent again)."""
        return step_word(self.kind, self.task if task is None else task, self.ordinal,
                         self.pid)


def step_word(kind: int, task: int, ordinal: int, pid: int) -> int:
    """The header word of a step (as ``BatchRecord.step`` writes it)."""
    return pid << 32 | kind << 28 | min(ordinal, MAX_ORDINAL) << 16 | task + 1


def set_suspect(ledger_map: mmap.mmap, slot: int, word: int) -> None:
    """Before a message goes out in *slot*: the step an earlier worker died in for its
    task (``Step.word``), or 0."""
    _USED.pack_into(ledger_map, slot * SLOT + _SUSPECT_AT, word)


def crash_step(ledger_map: mmap.mmap, slot: int, done: dict[int, Outcome],
               batch: int) -> Step | None:
    """The step the last worker of *batch* in *slot* was in, if it died in it: a task
    whose argument or function was being unpickled, or whose outcome was being
    pickled, and that has no outcome in *done* (None: it died running a task, or
    between tasks). ``Step.earlier`` names the worker that died in the same step
    before it (the suspect word), if one did."""
    base = slot * SLOT
    recorded, _used, _spills, word = _SLOT_HEAD.unpack_from(ledger_map, base)
    if recorded != batch or not word:
        return None
    suspect = _USED.unpack_from(ledger_map, base + _SUSPECT_AT)[0]
    earlier = 0
    if suspect & _SAME_STEP == word & _SAME_STEP and suspect >> 32 != word >> 32:
        earlier = suspect >> 32
    step = Step((word >> 28) & 0xF, (word & 0xFFFF) - 1, (word >> 16) & MAX_ORDINAL,
                word >> 32, earlier)
    return None if step.task < 0 or step.task in done else step


def read_slot(ledger_map: mmap.mmap, path: str, slot: int, batch: int) -> dict[int, Outcome]:
    """The outcomes recorded in *slot* for *batch* (by task index; none if the slot's
    last batch is another one, which this batch's worker never reached): the
    executor's copy, for a batch whose reply did not unpickle as a whole, or whose
    worker died."""
    recorded, used, _spills, _step = _SLOT_HEAD.unpack_from(ledger_map, slot * SLOT)
    if recorded != batch:
        return {}
    return _read(ledger_map, slot * SLOT + _RECORDS_AT, used,
                 lambda index: spill_path(path, slot, batch, index))


class BatchRecord:
    """One batch's slot, as its worker sees it (*path*: the ledger file, for spills)."""

    __slots__ = ("base", "batch", "crashed", "done", "map", "path", "pid", "slot", "spills",
                 "used")

    def __init__(self, ledger_map: mmap.mmap, slot: int, batch: int, path: str = "") -> None:
        self.map = ledger_map
        self.base = slot * SLOT
        self.slot, self.batch, self.path = slot, batch, path
        self.pid = os.getpid() << 32
        recorded, used, spills, _step = _SLOT_HEAD.unpack_from(ledger_map, self.base)
        #: the step an earlier attempt of this batch died in (``crash_step``), if any
        self.crashed: Step | None = None
        if recorded == batch:  # an earlier attempt died mid-batch: what it finished
            self.done = _read(ledger_map, self.base + _RECORDS_AT, used,
                              lambda index: spill_path(path, slot, batch, index))
            self.used = used
            self.spills = spills
            self.crashed = crash_step(ledger_map, slot, self.done, batch)
            if self.crashed is not None and not self.crashed.blamed:
                # a first death while unpickling: a suspect; unpickle again (a second
                # death in this step, on this worker, blames the data)
                _USED.pack_into(ledger_map, self.base + _SUSPECT_AT, self.crashed.word())
                self.clear_step()
                self.crashed = None
        else:
            self.done = {}
            self.used = self.spills = 0
            _SLOT_HEAD.pack_into(ledger_map, self.base, batch, 0, 0, 0)

    def step(self, kind: int, index: int, ordinal: int = 0) -> None:
        """Say that this worker now unpickles argument *ordinal* of task *index*
        (``DECODING``), or its function (``LOADING``), or pickles its outcome
        (``ENCODING``)."""
        _USED.pack_into(self.map, self.base + _STEP_AT,
                        self.pid | kind << 28 | min(ordinal, MAX_ORDINAL) << 16 | index + 1)

    def clear_step(self) -> None:
        """The step is over (the task runs now)."""
        _USED.pack_into(self.map, self.base + _STEP_AT, 0)

    def record(self, index: int, outcome: Outcome) -> Outcome:
        """Append *outcome* of task *index*; return what the reply should carry.

        An outcome that cannot be pickled would also fail the whole reply: it becomes the
        task's own error (naming the type).
        """
        _USED.pack_into(self.map, self.base + _STEP_AT, self.pid | ENCODING << 28 | index + 1)
        try:
            # a task returning None (side effects only, a common case): an empty record
            body = _NONE if outcome[1] is None and outcome[0] else pickle.dumps(outcome,
                                                                                 protocol=5)
        except BaseException as exc:  # SystemExit from a __reduce__ too: this task's error
            if not outcome[0]:  # an exception that does not pickle
                outcome = (False, *unsendable_exception(outcome[1], outcome[2], exc))
            elif isinstance(exc, SystemExit):
                outcome = (False, exc, format_remote(exc))
            else:
                outcome = (False, EncodeError(
                    f"the task's return value could not be pickled: {type(exc).__name__}: "
                    f"{exc}"), format_remote(exc))
            body = pickle.dumps(outcome, protocol=5)
        used = self.used
        end = used + _HEAD.size + len(body)
        at = self.base + _RECORDS_AT + used
        if len(body) > SPILL_AT or _RECORDS_AT + end > SLOT:
            if not self.path or _RECORDS_AT + used + _HEAD.size > SLOT:
                self.clear_step()
                return outcome  # nowhere to keep it: runs again after a crash
            self._spill(index, body)
            _HEAD.pack_into(self.map, at, index, _SPILLED)
            end = used + _HEAD.size
        else:
            _HEAD.pack_into(self.map, at, index, len(body))
            self.map[at + _HEAD.size:at + _HEAD.size + len(body)] = body
        _USED.pack_into(self.map, self.base + 8, end)  # the record is whole: publish it
        self.used = end
        return outcome

    def _spill(self, index: int, body: bytes) -> None:
        """Write a large outcome to its own file; counted in the slot's header first, so
        that the executor looks for it even if this process dies while writing."""
        self.spills += 1
        _USED.pack_into(self.map, self.base + 16, self.spills)
        name = spill_path(self.path, self.slot, self.batch, index)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with memoryview(body) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
        finally:
            os.close(fd)


def _read(ledger_map: mmap.mmap, start: int, used: int,
          spilled: Callable[[int], str]) -> dict[int, Outcome]:
    """The outcomes recorded; one that cannot be read back (its file gone, or its
    unpickling raises here) is left out: its task runs again."""
    found: dict[int, Outcome] = {}
    at, end = start, start + used
    while at < end:
        index, length = _HEAD.unpack_from(ledger_map, at)
        at += _HEAD.size
        body = at
        at += 0 if length == _SPILLED else length
        try:
            if length == _SPILLED:
                with open(spilled(index), "rb") as f:
                    found[index] = pickle.loads(f.read())
            else:
                found[index] = (pickle.loads(ledger_map[body:at]) if length
                                else _DONE_NONE)
        except BaseException as exc:  # sys.exit() in a __reduce__ too
            if isinstance(exc, KeyboardInterrupt):
                raise
    return found
