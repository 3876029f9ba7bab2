"""A death notice before the kernel has torn the process down: a robust mutex.

From SIGKILL to the kernel reporting a process gone (its pidfd readable; under
forkserver, the fork server's report on the sentinel comes later still) takes ≈ 1.4 ms
for a small Python process here, ≈ 3 ms for an actor, and tens of ms with more memory
mapped: the kernel tears the address space down first (``exit_mm``) and reports the exit
after. A *robust* futex held by a thread is released at the start of that teardown: glibc
keeps the list of the robust mutexes each thread holds, and the kernel, as the thread
exits, marks each one ``OWNER_DIED`` and wakes a waiter (``exit_robust_list``, before
``mmput``). Measured here: 0.17 ms after SIGKILL against 1.36 ms for the pidfd (a small
process), 1.4 ms against 34 ms with 64 MiB mapped.

How it is used:

* each actor process, right after its boot message, locks a process-shared robust mutex
  in its control block from its main thread (``hold``), and never unlocks it;
* the system's ``Watcher`` thread waits on the mutexes of its running actors at once
  (``futex_waitv``, up to ``MAX_WATCHED``), and calls back with the exit status of each
  that dies. By then the dying process runs no user code any more: SIGKILL and
  ``exit_group`` signal every thread before the first one starts exiting, and
  ``PF_EXITING``, checked in ``/proc/<pid>/stat`` before the notice is believed, is set
  before the mutex is released; the exit status is there too (``exit_code``, set at the
  start of ``do_exit``).

Whatever this cannot see (more actors than ``MAX_WATCHED``, a libc without robust
mutexes, a notice missed in a race) is still seen by the sentinel, later.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

OFFSET = 2048  # where the mutex lives in an actor's control block (bytes 2048..2111)
MUTEX_BYTES = 64  # pthread_mutex_t is 40 bytes on x86-64 and aarch64 glibc

FUTEX_WAITERS = 0x80000000
FUTEX_OWNER_DIED = 0x40000000
FUTEX_TID_MASK = 0x3FFFFFFF
PF_EXITING = 0x4
MAX_WATCHED = 127  # futex_waitv takes 128 futexes; one is the watcher's own bell
# The mutex's futex word read through a control block's 8-byte slots (``ControlBlock``):
# ``slots[LIFE_SLOT] & SLOT_OWNER_DIED`` is set from the moment its holder died until the
# next instance locks it (a caller waiting on that actor then stops spinning).
LIFE_SLOT = OFFSET // 8
SLOT_OWNER_DIED = FUTEX_OWNER_DIED << (32 if sys.byteorder == "big" else 0)

_SYS_FUTEX = 202
_SYS_FUTEX_WAITV = 449
_FUTEX_WAKE = 1
_FUTEX_WAKE_OP = 5
_FUTEX_PRIVATE = 128
_FUTEX2_SIZE_U32 = 0x02
_FUTEX2_PRIVATE = 128
# FUTEX_WAKE_OP: *uaddr2 |= 1 << 31, atomically (the waiters bit; no wake-up condition)
_OR_WAITERS = ((2 | 8) << 28) | (31 << 12)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall_c = _libc.syscall
_syscall_c.restype = ctypes.c_long


def _syscall(*args: int) -> int:
    """syscall(2) with every argument a C long (ctypes would pass a bare int as a C int,
    truncating addresses)."""
    return int(_syscall_c(*(ctypes.c_long(a) for a in args)))


def _available() -> bool:
    return all(hasattr(_libc, name) for name in (
        "pthread_mutexattr_setrobust", "pthread_mutexattr_setpshared", "pthread_mutex_init",
        "pthread_mutex_trylock", "pthread_mutex_consistent"))


AVAILABLE = _available() and os.uname().sysname == "Linux"


def init(buf: memoryview) -> None:
    """Make ``buf[OFFSET:OFFSET + MUTEX_BYTES]`` a process-shared robust mutex (unlocked)."""
    if not AVAILABLE:
        return
    attr = ctypes.create_string_buffer(64)
    mutex = (ctypes.c_char * MUTEX_BYTES).from_buffer(buf, OFFSET)
    try:
        _libc.pthread_mutexattr_init(attr)
        _libc.pthread_mutexattr_setpshared(attr, 1)
        _libc.pthread_mutexattr_setrobust(attr, 1)
        _libc.pthread_mutex_init(mutex, attr)
        _libc.pthread_mutexattr_destroy(attr)
    finally:
        del mutex


class Held:
    """The mutex of one control block, mapped now and locked by ``lock`` (from the
    thread that is to hold it for as long as the process lives).

    A warm spare prepared for an actor maps it ahead (an ``mmap`` of a file the dying
    predecessor is still unmapping can wait for that teardown); the restart then only
    locks it.

    Made from *path*, it maps the file's first page itself; made from *block* (``in_block``:
    the control block as this process mapped it already), it is a view of that mapping,
    which must stay mapped while the mutex is locked, and may be unmapped only after
    ``close``.
    """

    def __init__(self, path: str | None, block: memoryview | None = None) -> None:
        self._mm: mmap.mmap | None = None
        where: mmap.mmap | memoryview
        if block is None:
            assert path is not None
            fd = os.open(path, os.O_RDWR)
            try:
                where = self._mm = mmap.mmap(fd, OFFSET + MUTEX_BYTES, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        else:
            where = block
        self._mutex = (ctypes.c_char * MUTEX_BYTES).from_buffer(where, OFFSET)
        self.locked = False

    def lock(self) -> None:
        """Lock it from the calling thread, never to unlock it."""
        # trylock: a predecessor still alive (it should not be) must not hang this boot;
        # this process then just goes without the early notice
        rc = _libc.pthread_mutex_trylock(self._mutex)
        if rc == errno.EOWNERDEAD:  # the previous instance died holding it: ours now
            _libc.pthread_mutex_consistent(self._mutex)
        elif rc != 0:
            logger.debug("life lock not taken: %s", os.strerror(rc))
            return
        self.locked = True

    def close(self) -> None:
        """Unmap it, or let go of its view of the block (only if not locked: a locked
        mutex stays mapped until exit)."""
        if not self.locked:
            del self._mutex
            if self._mm is not None:
                self._mm.close()


def mapped(path: str) -> Held | None:
    """Map the mutex of the control block at *path*, to ``lock`` it later."""
    if not AVAILABLE:
        return None
    try:
        return Held(path)
    except OSError:
        return None


def in_block(block: memoryview) -> Held | None:
    """The mutex of the control block *block* (a mapping of its whole first page this
    process holds already), to ``lock`` later: no second mapping of the file (an
    actor's start maps its control block anyway; a mapping of its own cost the start
    ≈ 0.2 ms and ≈ 23 copied pages, issue 15)."""
    if not AVAILABLE:
        return None
    return Held(None, block)


def hold(path: str) -> Held | None:
    """Lock the mutex of the control block at *path* (call from the main thread, once)."""
    held = mapped(path)
    if held is not None:
        held.lock()
    return held


class _FutexWaitv(ctypes.Structure):
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class _Entry:
    __slots__ = ("mm", "pid", "word")

    def __init__(self, path: str, pid: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, OFFSET + MUTEX_BYTES, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.word = ctypes.c_uint32.from_buffer(self.mm, OFFSET)
        self.pid = pid

    def close(self) -> None:
        del self.word
        self.mm.close()


def exit_status(pid: int) -> int | None:
    """The wait status of *pid* if it is exiting (``PF_EXITING``), else None."""
    # (os.read, not a file object: 15 µs of CPU against 30 here; the system's loop
    # thread asks this of the fork server at each SIGKILL death: lean.LeanProcess)
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
        finally:
            os.close(fd)
    except (OSError, IndexError):
        return None
    # after the command: state is field 3, flags field 9, exit_code field 52
    if len(fields) < 50 or not int(fields[6]) & PF_EXITING:
        return None
    return int(fields[-1])


YIELD_NICE = 10  # about a tenth of a default process's share of the CPU


def yield_cpu(pid: int) -> None:
    """Lower the exiting process *pid* to nice ``YIELD_NICE``, every thread of it.

    What is left of its exit is the kernel tearing its address space down, ≈ 2 ms of CPU
    for an actor here: on a busy machine that would be taken from the process booting in
    its place, which then answers no earlier than if the death had been heard late. Not
    19: on a machine loaded far beyond its cores the teardown would then wait seconds
    (its memory is freed and its exit reported that much later).
    """
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, YIELD_NICE)
        except OSError:
            pass


def exitcode_of(status: int) -> int:
    """A wait status as ``multiprocessing`` writes an exit code (-signal, or the code)."""
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


class _Armed:
    """The watcher's locks: those it waits on (a ``futex_waitv`` slot each, in
    ``slots[:n]``, the bell in ``slots[n]``) and those not locked yet (``pending``)."""

    def __init__(self) -> None:
        self.slots = (_FutexWaitv * (MAX_WATCHED + 1))()
        self.keys: list[object] = []  # the key of slots[i]
        self.armed: dict[object, _Entry] = {}
        self.pending: dict[object, _Entry] = {}

    @property
    def n(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.armed) + len(self.pending)

    def entries(self) -> list[tuple[object, _Entry]]:
        return list(self.armed.items())

    def arm(self, key: object, entry: _Entry) -> None:
        slot = self.slots[len(self.keys)]
        slot.val = entry.pid | FUTEX_WAITERS
        slot.uaddr = ctypes.addressof(entry.word)
        slot.flags = _FUTEX2_SIZE_U32
        self.keys.append(key)
        self.armed[key] = entry

    def disarm(self, key: object) -> _Entry | None:
        """Take *key*'s slot away (the last one moves into it); its entry stays open."""
        entry = self.armed.pop(key, None)
        if entry is not None:
            i = self.keys.index(key)
            last = len(self.keys) - 1
            if i != last:
                self.slots[i] = self.slots[last]  # (copies the struct)
                self.keys[i] = self.keys[last]
            self.keys.pop()
        return entry

    def drop(self, key: object) -> None:
        """Forget *key*, armed or pending, and unmap its lock."""
        entry = self.disarm(key) or self.pending.pop(key, None)
        if entry is not None:
            entry.close()

    def wait(self, seen: int, bell_addr: int) -> int:
        """``futex_waitv`` on the armed locks and the bell (*seen*: its value when we
        last looked); the index of what woke us, or -1."""
        bell = self.slots[self.n]
        bell.val, bell.uaddr, bell.flags = seen, bell_addr, _FUTEX2_SIZE_U32 | _FUTEX2_PRIVATE
        rc = _syscall(_SYS_FUTEX_WAITV, ctypes.addressof(self.slots), self.n + 1, 0, 0, 0)
        if rc < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT):
            raise OSError(ctypes.get_errno(), "futex_waitv failed")
        return rc

    def close_all(self) -> None:
        for entry in [*self.armed.values(), *self.pending.values()]:
            entry.close()
        self.armed.clear()
        self.pending.clear()
        self.keys.clear()


class Watcher:
    """One thread waiting on the life locks of many processes at once.

    ``watch(key, path, pid)`` from any thread; *on_death(key, pid, status)* is called
    from the watcher's thread when the process *pid* (which holds the mutex in the
    control block at *path*) is exiting, at most once per ``watch``.
    """

    def __init__(self, on_death: Callable[[object, int, int], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._todo: list[tuple[str, object, str, int]] = []  # (what, key, path, pid)
        self._bell = ctypes.c_uint32(0)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.armed = 0  # processes the thread waits on now (the kernel will wake it)

    def watch(self, key: object, path: str, pid: int) -> None:
        """Start watching *pid* (replaces what was watched under *key*)."""
        self._post(("watch", key, path, pid))

    def forget(self, key: object) -> None:
        """Stop watching *key* (its process exited, or it is stopped)."""
        self._post(("forget", key, "", 0))

    def close(self) -> None:
        """Stop the thread and unmap everything (waits for the thread)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._ring()
        if thread is not None:
            thread.join(5.0)

    def _post(self, item: tuple[str, object, str, int]) -> None:
        if not AVAILABLE:
            return
        with self._lock:
            if self._closed:
                return
            self._todo.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="actorq-lifelock",
                                                daemon=True)
                self._thread.start()
        self._ring()

    def _ring(self) -> None:
        self._bell.value += 1
        _syscall(_SYS_FUTEX, ctypes.addressof(self._bell), _FUTEX_WAKE | _FUTEX_PRIVATE, 1,
                 0, 0, 0)

    def _run(self) -> None:
        armed = _Armed()
        try:
            self._serve(armed)
        except Exception:
            logger.exception("the life-lock watcher stopped (deaths are still seen, later)")
        finally:
            armed.close_all()

    def _serve(self, armed: _Armed) -> None:
        """Wait on every armed lock and the bell at once; act on what woke us.

        A wake by the bell alone (a watch or a forget posted) only applies what was
        posted: the other locks are where they were, and their slots stay as they are
        (re-reading each of up to ``MAX_WATCHED`` locks at every post cost the user's
        process ≈ 0.26 ms per actor started in a burst, issue 15). Any other wake (a lock
        released, a value that had changed before the wait, a signal) looks at all.
        """
        bell_addr = ctypes.addressof(self._bell)
        look_at_all = True
        while True:
            seen = self._bell.value
            with self._lock:
                if self._closed:
                    return
                todo, self._todo = self._todo, []
            for what, key, path, pid in todo:
                armed.drop(key)
                if what == "watch" and len(armed) < MAX_WATCHED:
                    try:
                        armed.pending[key] = _Entry(path, pid)
                    except OSError:
                        pass
            for key, entry in list(armed.pending.items()):
                self._arm_or_drop(armed, key, entry)
            if look_at_all:
                for key, entry in armed.entries():
                    if entry.word.value != entry.pid | FUTEX_WAITERS:
                        armed.disarm(key)
                        self._arm_or_drop(armed, key, entry)
            self.armed = armed.n
            rc = armed.wait(seen, bell_addr)
            look_at_all = rc != armed.n  # not the bell alone

    def _arm_or_drop(self, armed: _Armed, key: object, entry: _Entry) -> None:
        """Arm *entry* if its process holds the lock; report and drop it if it died;
        else leave it pending (not locked yet: the bell rings on news)."""
        word = entry.word.value
        if word & FUTEX_TID_MASK != entry.pid or word & FUTEX_OWNER_DIED:
            if self._dead(key, entry):
                armed.pending.pop(key, None)
                entry.close()
            else:
                armed.pending[key] = entry
            return
        if not word & FUTEX_WAITERS:  # ask the kernel to wake us (atomic OR)
            addr = ctypes.addressof(entry.word)
            _syscall(_SYS_FUTEX, addr, _FUTEX_WAKE_OP, 0, 0, addr, _OR_WAITERS)
        armed.pending.pop(key, None)
        armed.arm(key, entry)

    def _dead(self, key: object, entry: _Entry) -> bool:
        """The word says its owner died (or never held it): report it if it is exiting."""
        if not entry.word.value & FUTEX_OWNER_DIED:
            return False  # not locked by it yet: keep waiting (the bell rings on news)
        status = exit_status(entry.pid)
        if status is None:
            # released but not exiting (exec), or already reaped: leave it to the sentinel
            return True
        yield_cpu(entry.pid)
        try:
            self._on_death(key, entry.pid, status)
        except Exception:
            logger.exception("life-lock death callback failed")
        return True
