"""Records: one pickle per burst, large buffers out of band, oversize records spilled.

A record of plain data only (a lone call or reply of scalars, small tuples and lists of
them) may instead be marshalled, which is faster both ways; ``load_payload`` tells the
two apart by the first byte (a pickle starts with its PROTO opcode, 0x80; a marshalled
list with ``[``).

Out-of-band buffers (of numpy arrays and ``pickle.PickleBuffer`` objects, at least
``oob_threshold`` bytes; a bytearray pickles in band) are copied once into a
shared-memory *block* and mapped, not copied, by the receiver: the array it decodes
views the block. A fresh segment per array would cost as much as
pickling in band (the kernel allocates and zeroes every page: ≈ 9 ms for 8 MiB here), so
blocks are pooled and reused by the sending process; and mapping a block costs its
receiver a page fault per page (≈ 0.8 ms for 8 MiB with MAP_POPULATE), so a receiver
maps each block once and keeps it mapped (``_block``, up to ``MAP_BYTES``). What an
array decoded over a block holds is a view of its own (a ``BlockView`` of the C
helpers, or a ctypes array over the shared mapping without them), so that its lifetime
is still known per message. A block's first page holds two flags that only its
receiver clears::

    [0] viewed       1 from the send, then the receiver's pid once it decoded the record,
                     0 once its last view of the data is gone (the ``BlockView`` every
                     array decoded over the block keeps alive stores it when it is
                     deallocated; without the C helpers, a weak reference with a
                     callback to the ctypes view does: ``_watched``)
    [8] uncommitted  1 until the record that carried it is committed (a record redelivered
                     after a crash must find the same bytes)
    data from offset 4096 (page aligned, so that it can be mapped on its own)

The sender reuses a block only when both flags are 0, or when the record was committed
and the process named in ``viewed`` is gone (a receiver killed while it held the array:
its finalizer never ran). A pool that is full (every block still viewed, or the byte
bound reached) falls back to a fresh segment, which the receiver unlinks at commit; so
does the spill path, for a record over half the ring.

A process's blocks are named ``<run prefix>b<pid>_<k>``, k = 0, 1, 2...; when the process
is gone, the system unlinks each one whose record was committed, and the rest once it
is (``Orphans``). A record that cannot be placed in shared memory (no room in /dev/shm)
gives back what it took and raises ``MessageTooLarge``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import marshal
import mmap
import os
import pickle
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from actorq._errors import MessageTooLarge
from actorq._native import BlockView, copy_into
from actorq._serialization import salvage_loads
from actorq._transport import pickling
from actorq._transport.ring import PICKLE_PROTO
from actorq._transport.shm import SHM_DIR, Segment

BLOCK_HEADER = 4096
MIN_BLOCK = 64 * 1024
POOL_BYTES = int(os.environ.get("ACTORQ_OOB_POOL_BYTES", 512 * 1024 * 1024))

# No room in /dev/shm, over a file size limit (RLIMIT_FSIZE), no memory to map it.
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.ENOMEM)
# The marshal version of a lone message (a call or a reply of plain data, a record of
# its own): 2, not marshal's default 4, whose shared-object table (versions 3 and up) is
# built by every dumps (a hash table) and filled by every loads (a list), though plain
# data has nothing worth sharing: 1.3k instructions less to write a call, 1k less to
# read it, 1k less to write a reply (callgrind). A burst of tells keeps version 4 (its
# messages repeat strings: the table makes it 10 % cheaper to write, 38 % to read).
# Any version reads back with ``marshal.loads``; none starts with ``PICKLE_PROTO``.
LONE_MARSHAL = 2
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

    def reclaim(self) -> bool:
        """Free the block if its record was committed and its receiver died holding it."""
        viewer = self.flags[0]
        if viewer <= 1 or self.flags[1] != 0 or _alive(viewer):
            return False
        self.flags[0] = 0
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


class BlockPool:
    """The reusable out-of-band blocks of one sending process."""

    def __init__(self, namer: Namer, max_bytes: int = POOL_BYTES) -> None:
        self._namer = namer
        # Blocks are named ``<run prefix>b<pid>_<k>``, k = 0, 1, 2... in this process,
        # so that the system finds a dead process's blocks by name (``Orphans``).
        self._prefix: str | None = getattr(namer, "prefix", None)
        self._next = 0
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
        copy_into(block.seg.buf, BLOCK_HEADER, raw)
        return block.seg.name, size, True

    def release(self, name: str) -> None:
        """Free the block *name* again: what was copied into it is not sent after all."""
        with self._lock:
            for block in self._blocks:
                if block.seg.name == name:
                    block.flags[1] = 0
                    block.flags[0] = 0

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
            if best is None and sum(block.reclaim() for block in self._blocks):
                return self._take(size)  # blocks of dead receivers are free now
            return best  # an oversized free block beats a fresh segment
        block = _Block(self._create(BLOCK_HEADER + capacity))
        self._blocks.append(block)
        self._bytes += capacity
        return block

    def _create(self, size: int) -> Segment:
        if self._prefix is None:
            return _create_named(self._namer, "b", size)
        while True:
            name = f"{self._prefix}b{os.getpid()}_{self._next}"
            self._next += 1
            try:
                return Segment.create(name, size)
            except FileExistsError:  # a process gone with this pid left it: next one
                continue

    def close(self) -> None:
        """Unmap every block (they are unlinked with the run's prefix)."""
        with self._lock:
            for block in self._blocks:
                block.flags.release()
                block.seg.close()
            self._blocks.clear()


class Orphans:
    """The pooled blocks of a run's processes that are gone, freed once nothing needs them.

    A process's blocks live as long as it does (its pool reuses them); when it is gone
    (crashed, killed, stopped), ``process_gone`` unlinks every block of it whose record
    was committed: a receiver that still views one keeps its mapping (an unlinked
    segment lives on while mapped; its memory is freed with the last mapping). A block
    whose record is not committed yet (still queued in a live receiver's ring, or to be
    delivered again) is needed by name: it stays pending, and ``sweep`` unlinks it once
    its receiver committed the record. Runs on the system's loop thread.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: set[str] = set()

    def process_gone(self, pid: int) -> bool:
        """Free the blocks of the run's process *pid*; True if some must wait (``sweep``).

        Its blocks are numbered from 0 without a gap (``BlockPool``), so they are found
        by name, not by listing /dev/shm (which holds thousands of names with a thousand
        actors)."""
        k = 0
        while os.path.exists(os.path.join(SHM_DIR, name := f"{self.prefix}b{pid}_{k}")):
            self.pending.add(name)
            k += 1
        return self.sweep() if self.pending else False

    def sweep(self) -> bool:
        """Unlink the pending blocks whose record is committed; True if some remain."""
        for name in list(self.pending):
            if _committed_or_gone(name):
                self.pending.discard(name)
                with _mapped_lock:  # this process no longer keeps it mapped either
                    _forget_names([name])
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                except FileNotFoundError:
                    pass
        return bool(self.pending)


def _committed_or_gone(name: str) -> bool:
    """Is the block *name* gone, or its ``uncommitted`` flag 0 (no record needs it)?"""
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return True
    if len(head) < 16:  # created, not sized yet: its process died in Segment.create
        return True
    return int.from_bytes(head[8:16], "little") == 0


def _create_named(namer: Namer, kind: str, size: int) -> Segment:
    """A new segment under *namer*'s next free name: a process gone with this pid (the
    kernel reuses pids) may have left one of the names this process would give."""
    while True:
        try:
            return Segment.create(namer(kind), size)
        except FileExistsError:
            continue


def _to_fresh_segment(raw: memoryview, namer: Namer) -> tuple[str, int]:
    size = raw.nbytes
    seg = _create_named(namer, "o", max(size, 1))
    try:
        copy_into(seg.buf, 0, raw)
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

    if len(msgs) == 1 and pickling.holds_array(msgs[0]):
        body = pickling.dumps(msgs, take_large)  # numpy arrays reduced cheaply
    else:
        body = pickle.dumps(msgs, protocol=5, buffer_callback=take_large)
    specs: list[tuple[str, int, bool]] = []
    try:
        if bufs:
            placed = 0  # counted once all are placed (a plain int: no generator per record)
            for buf in bufs:
                raw = buf.raw()
                specs.append(pool.put(raw) if pool is not None
                             else (*_to_fresh_segment(raw, namer), False))
                placed += raw.nbytes
            _traffic[0] += placed
            body = pickle.dumps((_OOB_TAG, specs, body), 5)
        if len(body) > max_inline:
            body = pickle.dumps((_SPILL_TAG, _to_fresh_segment(memoryview(body), namer)), 5)
    except OSError as exc:
        release_specs(specs, pool)
        if exc.errno not in _NO_ROOM:
            raise
        sizes = [b.raw().nbytes for b in bufs]
        what = (f"{len(sizes)} large buffer(s) of {sum(sizes)} bytes (the largest "
                f"{max(sizes)})" if len(specs) < len(bufs) else f"{len(body)} bytes")
        msg = (f"{len(msgs)} message(s) holding {what} could not be put in shared memory "
               f"({SHM_DIR}): {exc.strerror or exc}; not sent")
        raise MessageTooLarge(msg) from exc
    return body


def release_specs(specs: list[tuple[str, int, bool]], pool: BlockPool | None) -> None:
    """Take back the blocks and segments of a record that is not sent after all."""
    for name, _size, pooled in specs:
        if pooled and pool is not None:
            pool.release(name)
        else:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass


def release_payload(payload: bytes, pool: BlockPool | None) -> None:
    """Take back what ``encode_batch`` placed in shared memory for *payload*, a record
    that is not sent after all (its spill, its blocks and segments)."""
    if not payload or payload[0] != PICKLE_PROTO:
        return  # marshalled: nothing out of band
    obj = pickle.loads(payload)
    if isinstance(obj, list):
        return
    if obj[0] == _SPILL_TAG:
        name, size = obj[1]
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            inner = f.read(size)
        os.unlink(os.path.join(SHM_DIR, name))
        release_payload(inner, pool)
    elif obj[0] == _OOB_TAG:
        release_specs(obj[1], pool)


# -- receiving ------------------------------------------------------------------------------

class _Mapped:
    """One pooled block mapped by a receiver, kept mapped for the blocks that follow."""

    __slots__ = ("flags", "mm", "view_type")

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self.flags = memoryview(mm)[:16].cast("Q")
        # The type of a view of the whole data area: one per block capacity (ctypes keeps
        # array types for good, so never one per message size).
        self.view_type = ctypes.c_char * (len(mm) - BLOCK_HEADER)


# Pooled blocks this process has mapped, least recently used first, up to MAP_BYTES of
# them: a block's sender reuses it message after message, so mapping it once (and
# faulting its pages in once) is what makes the receiving side cost nothing per array.
_mapped: OrderedDict[str, _Mapped] = OrderedDict()
_mapped_bytes = 0
_mapped_lock = threading.Lock()
MAP_BYTES = POOL_BYTES
FORGET_CHECKS = 16  # cached blocks checked for a removed name each time one is added


def _fresh_mapped_lock() -> None:
    """In a child made by fork: the lock may have been held by a parent thread that the
    child does not have (see ``channel._fresh_fence_lock``)."""
    global _mapped_lock
    _mapped_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_mapped_lock)

_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _block(name: str) -> _Mapped:
    """The block *name*, mapped: from the cache, or now (its pages faulted in once)."""
    global _mapped_bytes
    with _mapped_lock:
        block = _mapped.get(name)
        if block is not None:
            _mapped.move_to_end(name)
            return block
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        finally:
            os.close(fd)
        block = _mapped[name] = _Mapped(mm)
        _mapped_bytes += size
        _forget_mapped(name)
        return block


def _forget_mapped(keep: str) -> None:
    """Drop the blocks whose name is gone (their sender's system closed, or swept; among
    the FORGET_CHECKS least recently used) and, over MAP_BYTES, the least recently used.
    A dropped block stays mapped until the last view of it is gone (each view holds the
    mapping), then it is unmapped."""
    global _mapped_bytes
    oldest = list(itertools.islice(_mapped, FORGET_CHECKS))  # a few per new block: bounded
    _forget_names([n for n in oldest if n != keep
                   and not os.path.exists(os.path.join(SHM_DIR, n))])
    while _mapped_bytes > MAP_BYTES and len(_mapped) > 1:
        _name, block = _mapped.popitem(last=False)
        _mapped_bytes -= len(block.mm)


def _forget_names(names: list[str]) -> None:
    """Stop keeping the blocks *names* mapped (with ``_mapped_lock`` held)."""
    global _mapped_bytes
    for name in names:
        block = _mapped.pop(name, None)
        if block is not None:
            _mapped_bytes -= len(block.mm)


def mapped_blocks(prefix: str = "") -> int:
    """How many pooled blocks (named with *prefix*) this process keeps mapped."""
    return sum(name.startswith(prefix) for name in _mapped)


def forget_mapped(prefix: str) -> None:
    """Stop keeping the blocks named with *prefix* mapped (a run whose system closes:
    its segments are unlinked, and a mapping kept would keep their memory). Arrays
    still viewing one keep it mapped until they are gone."""
    global _mapped_bytes
    with _mapped_lock:
        for name in [n for n in _mapped if n.startswith(prefix)]:
            _mapped_bytes -= len(_mapped.pop(name).mm)


# Without the C helpers (``BlockView``): the views of pooled blocks that arrays decoded
# here keep alive, each with its block's flags: when a view is gone, its callback
# clears ``viewed``. A weak reference with a callback, kept here, costs less than a
# ``weakref.finalize`` (a Python-level object made and called per array): 1,195,092 ->
# 1,188,118 instructions per 8 MiB array call, both sides (benchmarks/msgpath_harness.py
# --count array). At most one per block is alive: its sender reuses a block only once
# ``viewed`` is 0 again. Keyed by the reference's id (a
# ctypes view is not hashable, so neither is a weak reference to it).
_watched: dict[int, tuple[weakref.ref[Any], memoryview]] = {}


def _unwatch(ref: weakref.ref[Any]) -> None:
    entry = _watched.pop(id(ref), None)
    if entry is not None:
        entry[1][0] = 0  # the last view is gone: viewed = 0


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
    except BaseException as exc:  # sys.exit() in a __reduce__ too: salvaged
        if not salvage or payload[0] != PICKLE_PROTO or isinstance(exc, KeyboardInterrupt):
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
    op = obj[0]
    if type(op) is int:  # a marshalled burst of one op, bare: (op, messages) (Hub.encode)
        return [(op, 0, m) for m in obj[1]]
    if op != _SPILL_TAG and op != _OOB_TAG:  # a marshalled burst (Hub.encode)
        return list(obj)
    if obj[0] == _SPILL_TAG:
        name, size = obj[1]
        after_commit.append(name)
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            data = f.read(size)
        return decode_batch(memoryview(data), after_commit, track=track, salvage=salvage)
    _tag, specs, body = obj
    buffers = []
    for name, size, pooled in specs:
        _traffic[1] += size
        if not pooled:
            after_commit.append(name)
            buffers.append(memoryview(_map(name, 0, size))[:size])
            continue
        block = _block(name)
        flags = block.flags
        if track:
            flags[0] = _pid[0]  # the viewer, for the sender to reclaim the block if it dies
            # committed: uncommitted = 0 (a C call: no Python frame at the commit)
            after_commit.append(functools.partial(flags.__setitem__, 1, 0))
        # A view of the block that is its own object (the mapping is shared with the
        # messages that follow): every array unpickled over it holds it, so ``viewed``
        # is cleared when the last of them is gone.
        if BlockView is not None:
            buffers.append(memoryview(BlockView(block.mm, BLOCK_HEADER, size,
                                                0 if track else -1)))
            continue
        view = block.view_type.from_buffer(block.mm, BLOCK_HEADER)
        if track:
            watch = weakref.ref(view, _unwatch)
            _watched[id(watch)] = (watch, flags)
        buffers.append(memoryview(view).cast("B")[:size])
        del view
    try:
        return pickle.loads(body, buffers=buffers)  # type: ignore[no-any-return]
    except BaseException as exc:  # sys.exit() in a __reduce__ too: salvaged
        if not salvage or isinstance(exc, KeyboardInterrupt):
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
