"""Records: one pickle per burst, large buffers out of band, oversize records spilled.

A record of plain data only (a lone call or reply of scalars, small tuples and lists of
them) may instead be marshalled, which is faster both ways; ``load_payload`` tells the
two apart by the first byte (a pickle starts with its PROTO opcode, 0x80; a marshalled
list with ``[``).

Out-of-band buffers (numpy arrays, bytearrays of at least ``oob_threshold`` bytes) are
copied once into a shared-memory *block* and mapped, not copied, by the receiver: the
array it decodes views the block. A fresh segment per array would cost as much as
pickling in band (the kernel allocates and zeroes every page: ≈ 9 ms for 8 MiB here), so
blocks are pooled and reused by the sending process. A block's first page holds two flags
that only its receiver clears::

    [0] viewed       1 until the receiver's last view of the data is gone (weakref.finalize
                     on the mapping the decoded array keeps alive)
    [8] uncommitted  1 until the record that carried it is committed (a record redelivered
                     after a crash must find the same bytes)
    data from offset 4096 (page aligned, so that it can be mapped on its own)

The sender reuses a block only when both flags are 0. A pool that is full (every block
still viewed, or the byte bound reached) falls back to a fresh segment, which the
receiver unlinks at commit; so does the spill path, for a record over half the ring.
"""

from __future__ import annotations

import marshal
import mmap
import os
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

from actorq._serialization import salvage_loads
from actorq._transport.shm import SHM_DIR, Segment

BLOCK_HEADER = 4096
MIN_BLOCK = 64 * 1024
POOL_BYTES = int(os.environ.get("ACTORQ_OOB_POOL_BYTES", 512 * 1024 * 1024))

PICKLE_PROTO = pickle.PROTO[0]  # 0x80: the first byte of every pickle we write
_OOB_TAG = "\x00aq-oob"
_SPILL_TAG = "\x00aq-spill"

Namer = Callable[[str], str]

# Bytes this process sent and received out of band (buffers copied into blocks, and
# buffers mapped from them): ``traffic()``, shown by ``system.metrics()``. Plain ints
# bumped once per buffer over the threshold, never per message.
_traffic = [0, 0]


def traffic() -> tuple[int, int]:
    """(bytes sent, bytes received) out of band by this process so far."""
    return _traffic[0], _traffic[1]


class _Block:
    __slots__ = ("capacity", "flags", "seg")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.capacity = seg.size - BLOCK_HEADER
        self.flags = seg.buf[:16].cast("Q")

    def free(self) -> bool:
        return self.flags[0] == 0 and self.flags[1] == 0


class BlockPool:
    """The reusable out-of-band blocks of one sending process."""

    def __init__(self, namer: Namer, max_bytes: int = POOL_BYTES) -> None:
        self._namer = namer
        self._blocks: list[_Block] = []
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def put(self, raw: memoryview) -> tuple[str, int, bool]:
        """Copy *raw* into a free block (or a fresh segment); return (name, size, pooled)."""
        size = raw.nbytes
        with self._lock:
            block = self._take(size)
            if block is None:
                return (*_to_fresh_segment(raw, self._namer), False)
            block.flags[0] = 1
            block.flags[1] = 1
        block.seg.buf[BLOCK_HEADER : BLOCK_HEADER + size] = raw.cast("B")
        return block.seg.name, size, True

    def _take(self, size: int) -> _Block | None:
        best = None
        for block in self._blocks:
            if block.capacity >= size and block.free() and (
                    best is None or block.capacity < best.capacity):
                best = block
        if best is not None and best.capacity <= 4 * max(size, MIN_BLOCK):
            return best
        capacity = max(MIN_BLOCK, 1 << (size - 1).bit_length())
        if self._bytes + capacity > self._max:
            return best  # an oversized free block beats a fresh segment
        block = _Block(Segment.create(self._namer("b"), BLOCK_HEADER + capacity))
        self._blocks.append(block)
        self._bytes += capacity
        return block

    def close(self) -> None:
        """Unmap every block (they are unlinked with the run's prefix)."""
        with self._lock:
            for block in self._blocks:
                block.flags.release()
                block.seg.close()
            self._blocks.clear()


def _to_fresh_segment(raw: memoryview, namer: Namer) -> tuple[str, int]:
    size = raw.nbytes
    seg = Segment.create(namer("o"), max(size, 1))
    try:
        seg.buf[:size] = raw.cast("B")
    finally:
        seg.close()
    return seg.name, size


def encode_batch(msgs: list[Any], *, oob_threshold: int, max_inline: int, namer: Namer,
                 pool: BlockPool | None = None) -> bytes:
    """Pickle a burst of messages as one record payload (see the module docstring)."""
    bufs: list[pickle.PickleBuffer] = []

    def take_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= oob_threshold:
            bufs.append(buf)
            return False
        return True

    body = pickle.dumps(msgs, protocol=5, buffer_callback=take_large)
    if bufs:
        _traffic[0] += sum(b.raw().nbytes for b in bufs)
        specs = [pool.put(b.raw()) if pool is not None
                 else (*_to_fresh_segment(b.raw(), namer), False) for b in bufs]
        body = pickle.dumps((_OOB_TAG, specs, body), 5)
    if len(body) > max_inline:
        body = pickle.dumps((_SPILL_TAG, _to_fresh_segment(memoryview(body), namer)), 5)
    return body


# -- receiving ------------------------------------------------------------------------------

_headers: dict[str, memoryview] = {}  # block name -> its flags, mapped once per process
_headers_lock = threading.Lock()


def _fresh_headers_lock() -> None:
    """In a child made by fork: the lock may have been held by a parent thread that the
    child does not have (see ``channel._fresh_fence_lock``)."""
    global _headers_lock
    _headers_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_headers_lock)


def _flags_of(name: str) -> memoryview:
    with _headers_lock:
        flags = _headers.get(name)
        if flags is None:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
            try:
                mm = mmap.mmap(fd, BLOCK_HEADER, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
            flags = _headers[name] = memoryview(mm)[:16].cast("Q")
        return flags


def _clear(flags: memoryview, index: int) -> None:
    flags[index] = 0


def _map(name: str, offset: int, size: int) -> mmap.mmap:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        return mmap.mmap(fd, offset + size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    finally:
        os.close(fd)


def decode_batch(payload: memoryview, after_commit: list[Any], *, track: bool = True,
                 salvage: bool = False) -> list[Any]:
    """Unpickle a record payload.

    What must happen once the record is committed goes to *after_commit*: segment names
    to unlink (fresh segments, spills) and callables (a pooled block's ``uncommitted``
    flag to clear). With ``track=False`` (a peek that must not free anything: the system
    reading a dead actor's record) blocks are mapped but their flags left alone. With
    *salvage*, a batch that does not unpickle as a whole comes back as ``Salvaged``
    (``_serialization.salvage_loads``) instead of raising.
    """
    try:
        obj = load_payload(payload)
    except Exception:
        if not salvage or payload[0] != PICKLE_PROTO:
            raise
        obj = salvage_loads(payload)
    return decode_loaded(obj, after_commit, track=track, salvage=salvage)


def load_payload(payload: memoryview) -> Any:
    """The object a record payload holds: a pickle, or a marshalled list of plain data."""
    if payload[0] == PICKLE_PROTO:
        return pickle.loads(payload)
    return marshal.loads(payload)


def decode_loaded(obj: Any, after_commit: list[Any], *, track: bool = True,
                  salvage: bool = False) -> list[Any]:
    """``decode_batch`` for a payload already unpickled once (*obj*)."""
    if isinstance(obj, list):  # a list, or a Salvaged one
        return obj
    if obj[0] != _SPILL_TAG and obj[0] != _OOB_TAG:  # a marshalled burst (Hub.encode)
        return list(obj)
    if obj[0] == _SPILL_TAG:
        name, size = obj[1]
        after_commit.append(name)
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            data = f.read(size)
        return decode_batch(memoryview(data), after_commit, track=track, salvage=salvage)
    _tag, specs, body = obj
    _traffic[1] += sum(size for _name, size, _pooled in specs)
    buffers = []
    for name, size, pooled in specs:
        if not pooled:
            after_commit.append(name)
            buffers.append(memoryview(_map(name, 0, size))[:size])
            continue
        mm = _map(name, 0, BLOCK_HEADER + size)
        if track:
            flags = _flags_of(name)
            weakref.finalize(mm, _clear, flags, 0)  # the last view is gone: viewed = 0
            after_commit.append(lambda f=flags: _clear(f, 1))  # committed: uncommitted = 0
        buffers.append(memoryview(mm)[BLOCK_HEADER : BLOCK_HEADER + size])
        del mm
    try:
        return pickle.loads(body, buffers=buffers)  # type: ignore[no-any-return]
    except Exception:
        if not salvage:
            raise
        return salvage_loads(body, buffers)  # type: ignore[no-any-return]


def run_after_commit(actions: list[Any]) -> None:
    """Unlink fresh out-of-band and spill segments; release pooled blocks."""
    for action in actions:
        if callable(action):
            action()
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, action))
        except FileNotFoundError:
            pass
