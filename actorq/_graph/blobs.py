"""The journal's blob store: large results kept in files beside the journal.

With ``journal="run.db"``, a large result (one that lives in shared memory) is not copied
into SQLite: the worker that computed it copies its segment into ``run.db.blobs/<name>``
and the journal row references the file (the segment's layout, pickled: a few dozen
bytes). Its bytes never pass through the scheduler. On resume, the scheduler checks a
blob and copies it into a fresh segment, for the dependents that still need it.

File layout::

    [0:8]    magic b"AQBLOB1\\0"
    [8:16]   size of the segment (little-endian u64)
    [16:32]  blake2b-128 digest of the segment's bytes
    [32:]    the segment's bytes (pickle body and page-aligned buffers, see actorq._shared)

A file is written under a temporary name and renamed, so a complete name means a
complete file (up to a crash of the machine itself: then the digest catches it). A blob
that is missing or fails its check is *not* an error: its task runs again (logged).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
import pickle
import struct
from typing import Any

from actorq._shared import SHM_DIR, SharedObject

logger = logging.getLogger(__name__)

MAGIC = b"AQBLOB1\0"
HEADER = struct.Struct("<8sQ16s")
_seq = itertools.count()


def store_for(journal_path: str) -> str:
    """The blob folder of the journal at *journal_path*."""
    return journal_path + ".blobs"


def reference(obj: SharedObject) -> bytes:
    """What the journal row keeps for a blob: the segment's name and layout."""
    return pickle.dumps((obj.name, obj.nbytes, obj.body, obj.buffers), protocol=5)


def blob_name(ref: bytes) -> str:
    """The file name in the store of a row's *ref*."""
    name: str = pickle.loads(ref)[0]
    return name


def _map(path: str, size: int) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def save(store: str, obj: SharedObject) -> None:
    """Copy the segment of *obj* into the store (worker side); logs and gives up on OSError.

    Giving up loses nothing but the shortcut: with no file, the task runs again on resume.
    """
    final = os.path.join(store, obj.name)
    tmp = f"{final}.{os.getpid()}.tmp"
    try:
        with _map(os.path.join(SHM_DIR, obj.name), obj.nbytes) as mm, \
                memoryview(mm) as view, view[: obj.nbytes] as data:
            digest = hashlib.blake2b(data, digest_size=16).digest()
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, memoryview(HEADER.pack(MAGIC, obj.nbytes, digest)))
                _write_all(fd, data)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except OSError as exc:
        logger.warning("could not keep a large result in the journal's blob store %r (%s); "
                       "its task will run again if the run is resumed", store, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _write_all(fd: int, data: memoryview) -> None:
    done = 0
    while done < data.nbytes:
        done += os.write(fd, data[done:])


def load(store: str, ref: bytes, run_prefix: str) -> SharedObject | str:
    """Check the blob of *ref* and copy it into a fresh segment of the run (scheduler side).

    Returns the new handle, or a sentence saying why the blob cannot be used (missing,
    truncated, another size, a digest that does not match); a bad file is removed.
    """
    found = _load(store, ref, run_prefix)
    if isinstance(found, str):
        try:
            os.unlink(os.path.join(store, blob_name(ref)))
        except OSError:  # missing already
            pass
    return found


def _load(store: str, ref: bytes, run_prefix: str) -> SharedObject | str:
    name, nbytes, body, buffers = pickle.loads(ref)
    path = os.path.join(store, name)
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"its blob {path!r} is missing"
    if size != HEADER.size + nbytes:
        return f"its blob {path!r} has {size} bytes, not {HEADER.size + nbytes}"
    with _map(path, size) as mm, memoryview(mm) as view, view[HEADER.size:] as data:
        magic, length, digest = HEADER.unpack(view[: HEADER.size].tobytes())
        if magic != MAGIC or length != nbytes:
            return f"its blob {path!r} is not an actorq blob of {nbytes} bytes"
        if hashlib.blake2b(data, digest_size=16).digest() != digest:
            return f"its blob {path!r} is corrupt (its digest does not match)"
        seg = _segment(data, run_prefix)
    return SharedObject(seg, nbytes, body, buffers)


def _segment(data: memoryview, run_prefix: str) -> str:
    name = f"{run_prefix}g{os.getpid()}_j{next(_seq)}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(data.nbytes, 1))
        done = 0
        while done < data.nbytes:
            done += os.pwrite(fd, data[done:], done)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return name


def sweep(store: str, keep: Any) -> int:
    """Remove files of the store that no row references (*keep*: names); return how many.

    They are left by a run killed between a worker's write and the journal's commit, or
    by a task journaled again since.
    """
    removed = 0
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return 0
    for name in names:
        if name not in keep:
            try:
                os.unlink(os.path.join(store, name))
                removed += 1
            except OSError:
                pass
    return removed
