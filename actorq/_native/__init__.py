"""actorq's optional compiled helpers, each with a pure-Python fallback.

The C sources sit next to this file and are built by ``setup.py`` when a C compiler is
present at install time (``optional=True``: without one, the install goes on and the
fallbacks are used). ``NATIVE`` tells which is in use; ``ACTORQ_NO_NATIVE=1`` in the
environment forces the fallbacks (the test suite runs both).

- ``copy_into(dst, offset, src)``: one copy of a large buffer into shared memory
  (``_copy.c``: streaming stores, the GIL released; a copy of 2 MiB or more shared in
  chunks with a helper thread where the process may use two CPUs, ``COPY_THREADS``;
  ``ACTORQ_COPY_THREADS=1`` for none). The fallback assigns memoryviews.
- ``BlockView(mapping, offset, size, flag)``: a receiver's view of an out-of-band
  buffer in a mapped block, its own object per message, that stores 0 into the block's
  ``viewed`` word when the last array over it is gone (``_copy.c``). None without the C
  helpers (the fallback, a ctypes view watched by a weak reference, is
  actorq/_transport/oob.py's).
- ``u64_array(buf)``: the u64 slots of shared memory (a ring's header and record headers,
  a control block) as an array whose item access is one C call, each load an acquire and
  each store a release (``_ring.c``: ~8x fewer instructions per access than the
  fallback, a memoryview cast to ``'Q'``, which behaves the same).

- ``PoolCalls``: a pool call's routing, counting and first-attempt success hook
  (``_pool.c``: ``bare_call``, ``pick_first``, ``hook``), which the pools made while it
  is selected use; None without the C helpers (the fallback is actorq/_routing's
  Python, which takes the pool's lock around its counts: the C code counts only while
  nobody holds it, see _pool.c). Not loaded on a free-threaded CPython: its counts rely
  on the GIL.

- ``fence()``: a full memory barrier (``_ring.c``); None without the C helpers (the
  fallback, a ``threading.Lock`` taken and released, is actorq/_transport/channel.py's).
- ``lone_begin``, ``lone_commit``, ``write_reply``: an actor's lone call
  (actorq/_actorproc/handling.py ``serve_alone``, replies.py ``send_reply``) in three C
  calls (``_ring.c``, its last section): its start (the stop and predecessor checks, the
  crash attribution slots set, its sequence number read), its commit (counted, the
  record's head and handled count stored, the busy slot cleared, then a fence and the
  producer's want loaded) and its reply's write (a reply of plain data marshalled and
  written as its own record, the doorbell's hold decided). None without the C helpers:
  the Python code beside each call is the fallback, and stores the same bytes
  (tests/native/test_lone_call.py).
- ``serve_lone(hub, ctx)``: all of a lone call in one C call (``_ring.c``, its last
  section; handling.py ``drain``): read, run, committed and answered, the steps above
  with the hub's state set around the handler as ``serve_alone`` sets it; whatever is
  not the common case is handed back to the Python methods at the point it differs.
  None without the C helpers (``serve_alone`` then).
- ``send_lone(hub, target, msg)``: a caller's lone call written at once, sending.py
  ``_send_now`` in one C call (None without the C helpers: ``_send_now`` itself).
- ``LoneCaller``: ``ref.method`` bound in C (ref.py ``ActorRef._bind``): the common
  call (one argument of plain data) registered and sent as ``Sending.call`` does it,
  with ``send_lone``, without a Python frame; any other call is ``hub.call``'s. None
  without the C helpers (the Python closure then).
- ``hub_call``, ``hub_call_deadline``: ``Sending.call`` and ``call_deadline`` in C for
  one argument of plain data (else the hub's method), what the C pool calls send through
  (``_pool.c``), so that a pool's call costs what a ref's does; ``configure_calls``
  (actorq/_core/sending.py) gives them ``Reply`` and the token counter. None without
  the C helpers.

- ``ReplyCore``: the fields of a ``Reply`` and its construction in C, its ``done()`` one
  C call (``_ring.c``); None without the C helpers (the fallback is
  actorq/_core/reply.py's ``ReplyFields``). ``take_reply(core, pos, tail, pending)``: a
  synchronous caller's reply step (``SystemHub.wait_spin``) in one C call: the record at
  *pos* read and, when it is a lone plain reply to a ``ReplyCore`` nobody waits on but
  the caller (no event or callbacks; its ``on_outcome`` hook, if any, asked first as
  ``Reply.set_result`` asks it), the reply completed and the record committed (the new
  cursor returned); anything else comes back as ``read_plain`` returns it, for the
  Python path. The fallback is ``read_plain`` itself (``take_reply_py``).

``select(native)`` switches this process between the C helpers and the fallbacks for
what is made (and for the reply step taken) from then on (the tests run both, and both
against each other).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol


class U64Slots(Protocol):
    """u64 slots of shared memory: ``U64Array`` (C) or a memoryview cast to 'Q'."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...
    def release(self) -> None: ...
    def tolist(self) -> list[int]: ...


def _load(name: str) -> ModuleType | None:
    """The built C module *name* of this package, or None (not built, or forced off)."""
    if os.environ.get("ACTORQ_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


_copy = _load("_copy")
NATIVE = _copy is not None
# Whether copies of at least a MiB use streaming stores (a C build on a CPU with AVX2).
STREAMING = bool(_copy is not None and _copy.STREAMING)


_ring = _load("_ring")
HAVE_RING = _ring is not None  # the C ``U64Array`` is built (and not forced off)
# Whether the u64 slots of shared memory made now are the C ``U64Array`` (``select``).
NATIVE_RING = HAVE_RING


def _copy_into_py(dst: Any, offset: int, src: Any) -> int:
    """Copy the contiguous buffer *src* into *dst* at *offset*; return the bytes copied."""
    raw = memoryview(src).cast("B")
    n = raw.nbytes
    view = memoryview(dst).cast("B")  # (a numpy array's view has its own format)
    if offset < 0 or offset + n > view.nbytes:
        msg = (f"copy_into: {n} bytes at offset {offset} do not fit a buffer of "
               f"{view.nbytes} bytes")
        raise ValueError(msg)
    view[offset : offset + n] = raw
    return n


def cgroup_cpus(cpu_max: str) -> float | None:
    """The CPUs a cgroup v2 ``cpu.max`` (``"quota period"``, or ``"max period"``) allows,
    or None for no limit (or text that is not one)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if period > 0 else None


def cpu_limit(cgroup_file: str = "/proc/self/cgroup",
              root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup (a container's ``--cpus``), if any: cgroup
    v2's ``cpu.max``, or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, under
    *root* (the arguments: for tests)."""
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        controllers, path = fields[1], fields[2].rstrip("/")
        try:
            if controllers == "":  # v2, mounted alone or beside v1 ("unified")
                for top in (root, f"{root}/unified"):
                    if os.path.exists(f"{top}{path}/cpu.max"):
                        with open(f"{top}{path}/cpu.max") as f:
                            return cgroup_cpus(f.read())
            elif "cpu" in controllers.split(","):
                # (a v1 container without its own cgroup namespace lists the host's path
                # but mounts its own cgroup at the root)
                for base in (f"{root}/cpu{path}", f"{root}/cpu"):
                    if os.path.exists(f"{base}/cpu.cfs_quota_us"):
                        with open(f"{base}/cpu.cfs_quota_us") as q, open(
                                f"{base}/cpu.cfs_period_us") as p:
                            quota = q.read().strip()
                            return cgroup_cpus(f"{'max' if quota == '-1' else quota} "
                                               f"{p.read()}")
        except (OSError, ValueError):
            continue
    return None


def _copy_threads() -> int:
    """2 where this process may run on two CPUs or more, by its affinity and its cgroup's
    CPU quota (a helper thread without a CPU of its own would only be waited for);
    ``ACTORQ_COPY_THREADS`` (1 or 2) decides instead when it is set."""
    wanted = os.environ.get("ACTORQ_COPY_THREADS", "")
    if wanted in ("1", "2"):
        return int(wanted)
    limit = cpu_limit()
    cpus = len(os.sched_getaffinity(0))
    return 2 if cpus > 1 and (limit is None or limit >= 2) else 1


# Threads that copy a buffer of 2 MiB or more (``copy_into``): 1 without the C helpers.
COPY_THREADS = _copy_threads() if _copy is not None else 1
if _copy is not None:
    _copy.set_copy_threads(COPY_THREADS)
copy_into = _copy.copy_into if _copy is not None else _copy_into_py
BlockView: Any = _copy.BlockView if _copy is not None else None


def u64_array_py(buf: Any) -> U64Slots:
    """*buf* (writable, 8-byte aligned) as an array of u64: a memoryview cast to 'Q'."""
    view: U64Slots = memoryview(buf).cast("Q")
    return view


u64_array: Callable[[Any], U64Slots] = _ring.U64Array if _ring is not None else u64_array_py
# ``RingCore(buf, data, Record)``: a ring's record write and read in C, or None (the
# fallback is actorq/_transport/ring.py's ``RingCorePy``: this package imports nothing
# of actorq's)
RingCore: Any = _ring.RingCore if _ring is not None else None
# ``fence()``: a full memory barrier in C, or None (the fallback is a lock in channel.py)
fence: Callable[[], None] | None = _ring.fence if _ring is not None else None
# ``configure_calls(reply_type, next_token, safe_types, no_kwargs)``: what ``hub_call``
# and ``hub_call_deadline`` make replies with (actorq/_core/sending.py), or None
configure_calls: Callable[..., None] | None = (
    _ring.configure_calls if _ring is not None else None)
# A lone call's steps in an actor (actorq/_actorproc/handling.py ``serve_alone``,
# replies.py ``send_reply``), or None (the Python code beside them is the fallback):
# ``lone_begin``, ``lone_commit`` and ``write_reply`` (see _ring.c)
lone_begin: Callable[..., int] | None = None
lone_commit: Callable[..., int] | None = None
write_reply: Callable[..., int | None] | None = None
serve_lone: Callable[[Any, tuple[Any, ...]], int | tuple[int, Any]] | None = None
send_lone: Callable[[Any, int, tuple[Any, ...]], bool] | None = None
LoneCaller: Any = None
hub_call: Callable[..., Any] | None = None
hub_call_deadline: Callable[..., Any] | None = None


def _select_lone() -> None:
    global lone_begin, lone_commit, write_reply, serve_lone, send_lone, LoneCaller
    global hub_call, hub_call_deadline
    on = NATIVE_RING and _ring is not None
    lone_begin = _ring.lone_begin if on and _ring is not None else None
    lone_commit = _ring.lone_commit if on and _ring is not None else None
    write_reply = _ring.write_reply if on and _ring is not None else None
    serve_lone = _ring.serve_lone if on and _ring is not None else None
    send_lone = _ring.send_lone if on and _ring is not None else None
    LoneCaller = _ring.LoneCaller if on and _ring is not None else None
    hub_call = _ring.hub_call if on and _ring is not None else None
    hub_call_deadline = _ring.hub_call_deadline if on and _ring is not None else None


_select_lone()


ReplyCore: Any = _ring.ReplyCore if _ring is not None else None


def take_reply_py(core: Any, pos: int, tail: int | None, pending: dict[int, Any]) -> Any:
    """``take_reply`` without the C helpers: *core*'s ``read_plain`` (the Python path
    then decodes the record and completes its reply: ``Receiving._take_record``)."""
    return core.read_plain(pos, tail)


# ``take_reply(core, pos, tail, pending)``: the reply step in C, or ``take_reply_py``
take_reply: Callable[[Any, int, int | None, dict[int, Any]], Any] = (
    _ring.take_reply if _ring is not None else take_reply_py)


# The C pool calls count without a lock because they hold the GIL (see _pool.c): a
# free-threaded CPython has none, so there the Python path (with its lock) is used.
_pool = _load("_pool") if getattr(sys, "_is_gil_enabled", lambda: True)() else None
HAVE_POOL = _pool is not None  # the C pool calls are built (and not forced off)
# The C module of pool calls, to configure (actorq/_routing/core.py), or None
POOL_C: Any = _pool
# The C module of pool calls the pools made from now on use (``select``), or None
PoolCalls: Any = _pool


def select(native: bool) -> bool:
    """Use the C helpers (*native*, if they are built and not forced off by
    ``ACTORQ_NO_NATIVE``) or the pure-Python fallbacks for the shared-memory slots and
    the pools made from now on in this process; return whether the C slots are in use."""
    global u64_array, NATIVE_RING, RingCore, take_reply, PoolCalls
    PoolCalls = _pool if native else None
    NATIVE_RING = native and _ring is not None
    u64_array = _ring.U64Array if NATIVE_RING and _ring is not None else u64_array_py
    RingCore = _ring.RingCore if NATIVE_RING and _ring is not None else None
    # (the replies' C fields, ``ReplyCore``, are chosen once, when reply.py is imported;
    # ``take_reply`` completes only those, and leaves the others to the Python path)
    take_reply = _ring.take_reply if NATIVE_RING and _ring is not None else take_reply_py
    _select_lone()
    return NATIVE_RING

__all__ = ["COPY_THREADS", "HAVE_POOL", "HAVE_RING", "NATIVE", "NATIVE_RING", "POOL_C",
           "STREAMING", "BlockView", "PoolCalls", "ReplyCore", "RingCore", "U64Slots",
           "copy_into", "fence", "lone_begin", "lone_commit", "select", "take_reply",
           "take_reply_py", "u64_array", "write_reply"]
