"""Named POSIX shared-memory segments: create, attach, close, unlink, and sweep.

We map ``/dev/shm/<name>`` directly rather than through
``multiprocessing.shared_memory.SharedMemory``: on Python 3.11 every attach registers the
segment with a resource tracker, which either unlinks a segment the system still owns when
an attaching process exits, or warns about segments already gone at interpreter exit.
Ownership is ours instead, and it is written down once:

* every segment name starts with the run prefix of the system that owns it
  (``aq_<pid>_<start>_<run>_``, see :mod:`actorq._ids`);
* the process that consumes a segment's contents unlinks it (rings: the system, at
  shutdown; out-of-band blocks: the receiver, once its record is committed);
* a closing system unlinks whatever is left under its own run prefix;
* :func:`sweep` unlinks the segments of runs whose owner process is gone (a SIGKILLed
  user process): every new system calls it, and so does ``actorq sweep``.
"""

from __future__ import annotations

import logging
import mmap
import os
import re

from actorq._ids import SEGMENT_PREFIX, process_stamp

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_NAME = re.compile(rf"^{SEGMENT_PREFIX}(\d+)_([0-9a-f]+)_")


class Segment:
    """One shared-memory segment mapped into this process.

    ``buf`` is a writable memoryview over the whole segment. ``close()`` unmaps it (this
    handle only); ``unlink()`` removes the name (the segment lives on while mapped).
    """

    __slots__ = ("_closed", "_mm", "buf", "name", "size")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        self.name = name
        self.size = len(mm)
        self._mm = mm
        self.buf = memoryview(mm)
        self._closed = False

    @classmethod
    def create(cls, name: str, size: int, *, prefault: bool | int = True) -> Segment:
        """Create the segment *name* of *size* bytes (fails if it exists).

        With *prefault* ``True``, every page is touched now, so the first messages do not
        pay page faults (docs/internals.md, "measured facts"); with a number of bytes,
        only the pages of that many bytes from the start are (a ring: where its first
        messages go; the rest is allocated when first written, so a thousand mostly idle
        actors do not each cost their rings' full size up front).
        """
        fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            if prefault is True:
                # Its pages are allocated now, or ENOSPC is raised here: a full /dev/shm
                # would otherwise end the first write to a missing page with SIGBUS.
                os.posix_fallocate(fd, 0, size)
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if prefault is True else 0)
            mm = mmap.mmap(fd, size, flags=flags)
        except BaseException:
            os.close(fd)
            _unlink_name(name)
            raise
        os.close(fd)
        if prefault is not True and prefault:
            touch(mm, min(int(prefault), size))
        return cls(name, mm)

    @classmethod
    def attach(cls, name: str, *, prefault: bool = True) -> Segment:
        """Map the existing segment *name* (raises ``FileNotFoundError`` if it is gone).

        With *prefault*, every page is mapped now (and allocated, if its creator had
        not touched it yet): pass ``False`` for a segment created with a partial
        prefault, whose untouched pages should stay unallocated.
        """
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if prefault else 0)
            mm = mmap.mmap(fd, size, flags=flags)
        finally:
            os.close(fd)
        return cls(name, mm)

    def close(self) -> None:
        """Unmap this handle. Views taken from ``buf`` must have been released."""
        if self._closed:
            return
        self._closed = True
        self.buf.release()
        try:
            self._mm.close()
        except BufferError:
            # A zero-copy reader still holds a view (an array decoded out of band):
            # leave the mapping to the garbage collector rather than crash.
            logger.debug("segment %s still has exported views; unmapped later", self.name)

    def unlink(self) -> None:
        """Remove the segment's name; idempotent."""
        _unlink_name(self.name)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, size={self.size})"


def touch(mm: mmap.mmap, size: int) -> None:
    """Write a zero to every page of the first *size* bytes of *mm* (allocates them)."""
    page = mmap.PAGESIZE
    for offset in range(0, size, page):
        mm[offset] = 0


def _unlink_name(name: str) -> bool:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        return False
    return True


def list_segments(prefix: str = SEGMENT_PREFIX) -> list[str]:
    """Return the names in ``/dev/shm`` that start with *prefix*."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def unlink_prefix(prefix: str) -> int:
    """Unlink every segment whose name starts with *prefix*; return how many."""
    return sum(_unlink_name(name) for name in list_segments(prefix))


def sweep() -> list[str]:
    """Unlink the segments of runs whose owner process is gone; return their names.

    An owner is alive only if a process with its pid exists *and* has the start time
    written in the name, so a reused pid does not keep a dead run's segments alive.
    """
    removed = []
    alive: dict[tuple[str, str], bool] = {}
    for name in list_segments():
        match = _NAME.match(name)
        if match is None:
            continue
        key = (match.group(1), match.group(2))
        if key not in alive:
            alive[key] = process_stamp(int(key[0])) == f"{key[0]}_{key[1]}"
        if not alive[key] and _unlink_name(name):
            removed.append(name)
    if removed:
        logger.info("swept %d shared-memory segment(s) left by dead runs", len(removed))
    return removed
