"""Whole objects kept in shared memory and handed around by handle (job-graph results).

A base module (importable from every layer; it needs only the standard library): the
layers built on the kernel use it instead of reaching into ``_transport``.

The public face of this layer for code above the kernel: a producer that wants a large
value to reach several consumers without passing through a middleman calls
:func:`share`; it pickles the value once (protocol 5, large buffers out of band) into a
fresh segment of its run and returns a small :class:`SharedObject` handle. Any process of
the run can :meth:`~SharedObject.load` it: the segment is mapped read-only and numpy
arrays (any out-of-band buffer) view the mapping, so no byte is copied. Whoever owns
the value's lifetime (the graph scheduler) calls :meth:`~SharedObject.unlink` once no
one will load it again; mappings taken before stay valid until their last view goes.

Segment layout (page-aligned parts, so that each buffer can be mapped and viewed)::

    [0]                 pickle body (in-band part)
    [align(body)]       buffer 0
    [align(...)]        buffer 1 ...

A closing system unlinks what is left under its run prefix, and a dead run's segments
are swept (``shm.sweep``), so a handle lost with its process leaks nothing for long.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
from dataclasses import dataclass
from typing import Any

SHM_DIR = "/dev/shm"
PAGE = mmap.PAGESIZE
_seq = itertools.count()


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True, slots=True)
class SharedObject:
    """A handle to a value kept in a shared-memory segment (see :func:`share`).

    Attributes:
        name: the segment's name (under its run's prefix).
        nbytes: bytes the segment holds.
        body: (offset, size) of the pickle body.
        buffers: (offset, size) of each out-of-band buffer.
    """

    name: str
    nbytes: int
    body: tuple[int, int]
    buffers: tuple[tuple[int, int], ...]

    def load(self) -> Any:
        """Map the segment read-only and unpickle the value; arrays view the mapping.

        Raises ``FileNotFoundError`` if the segment was unlinked already.
        """
        fd = os.open(os.path.join(SHM_DIR, self.name), os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, max(self.nbytes, 1), flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        view = memoryview(mm)
        bufs = [view[off:off + size] for off, size in self.buffers]
        off, size = self.body
        return pickle.loads(view[off:off + size], buffers=bufs)

    def unlink(self) -> bool:
        """Remove the segment's name (mappings already taken stay valid); idempotent."""
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            return False
        return True


def share(value: Any, run_prefix: str, threshold: int) -> SharedObject | None:
    """Put *value* in a fresh shared-memory segment if it is large; else return None.

    Large means: its out-of-band buffers (numpy arrays, bytearrays, ...) or its in-band
    pickle reach *threshold* bytes. The value is pickled once; the segment is written
    with ``pwrite`` (no mapping in this process). Raises what pickling raises.
    """
    bufs: list[pickle.PickleBuffer] = []
    body = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    if len(body) + sum(r.nbytes for r in raws) < threshold:
        return None
    return share_pickled(body, run_prefix, raws)


def share_pickled(body: bytes, run_prefix: str,
                  raws: list[memoryview] | None = None) -> SharedObject:
    """Put an already pickled value (*body*, and its out-of-band *raws*) in a fresh segment."""
    raws = raws or []
    layout = []
    offset = _align(len(body))
    for raw in raws:
        layout.append((offset, raw.nbytes))
        offset = _align(offset + raw.nbytes)
    total = max(offset, 1)
    name = f"{run_prefix}g{os.getpid()}_{next(_seq)}"
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, total)
        _pwrite_all(fd, memoryview(body), 0)
        for raw, (off, _size) in zip(raws, layout, strict=True):
            _pwrite_all(fd, raw.cast("B"), off)
    except BaseException:
        os.close(fd)
        os.unlink(os.path.join(SHM_DIR, name))
        raise
    os.close(fd)
    return SharedObject(name, total, (0, len(body)), tuple(layout))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done:], offset + done)
