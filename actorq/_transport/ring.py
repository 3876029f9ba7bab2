"""Single-producer single-consumer ring buffer over a memoryview (shared memory).

Layout (every field u64, 8-byte aligned; each writer's fields on their own 64-byte line,
docs/internals.md: a u64 straddling a cache line tears under concurrent reads)::

    line 0 (consumer writes)  [0] head      bytes consumed (committed), monotonic
                              [8] handled   messages handled (the credit return)
                              [16] cur_rec  position of the record being handled
                              [24] cur_sub  messages of that record already handled
                              [32] reader   1 (READER_SPINNING) while a thread of the
                                            consumer spins on this ring: no doorbell
                                            needed; 2 (READER_EXPECTED): a caller that
                                            just sent a lone call will spin here soon
                                            (the reply's doorbell may wait briefly)
    line 1 (producer writes)  [64] tail     bytes published, monotonic
                              [72] sent     messages published
                              [80] want     1 while producers wait for credit (doorbell me)
                              [88..112]     producer statistics: waiting, waits, wait ns,
                                            Backpressure raised
    line 2 (fixed)            [128] capacity, [136] magic
    data                      capacity bytes from offset 256

    record: u32 length | u32 count | payload | pad to 8
    wrap marker: u32 0xFFFFFFFF where a record did not fit before the end

The producer writes the record, then publishes ``tail``: x86-64 keeps stores in order,
so a consumer that sees the new tail sees the record (with the C helpers, every load of
a slot is an acquire and every store a release, which keeps that order on any CPU:
actorq/_native/_ring.c). ``head``/``tail`` only grow; a
position in the data area is ``counter % capacity``. A record holds at most half the
ring. The consumer advances ``head`` only after the record's messages were handled
("commit after handle"), so what a crashed consumer had not finished is still there
for its successor; ``cur_rec``/``cur_sub`` say how much of the head record was done.
This module is pure: no syscalls, no pickling (``read_plain`` unmarshals plain data, as
``marshal.loads`` of the payload would), so it can be property-tested in-process.
"""

from __future__ import annotations

import marshal
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from actorq import _native

HEADER = 256
MAGIC = 0x61637471_72696E67  # "actqring"
WRAP = 0xFFFFFFFF
REC_HEADER = 8
# pickle's PROTO opcode, the first byte of every pickle we write: a payload that does not
# start with it is marshalled (oob.py writes both)
PICKLE_PROTO = 0x80

# u64 slots in the header
H_HEAD, H_HANDLED, H_CUR_REC, H_CUR_SUB, H_READER = 0, 1, 2, 3, 4
H_TAIL, H_SENT, H_WANT, H_WAITING, H_WAITS, H_WAIT_NS, H_BACKPRESSURE = 8, 9, 10, 11, 12, 13, 14
H_CAPACITY, H_MAGIC = 16, 17
# values of ``H_READER``
READER_SPINNING = 1  # a thread of the consumer polls this ring: never ring for it
READER_EXPECTED = 2  # one is about to: a reply's doorbell may wait for it a moment


def record_size(length: int) -> int:
    """Bytes a payload of *length* bytes takes in the ring, header and padding included."""
    return REC_HEADER + ((length + 7) & ~7)


class Record(NamedTuple):
    """A record seen by the consumer: its payload (a view into the ring) and where it ends."""

    pos: int  # counter position of the record header (after any wrap marker)
    payload: memoryview
    count: int  # type: ignore[assignment]  # shadows tuple.count on purpose: the name reads best
    end: int  # counter position just past this record: the head once it is committed


class Loaded(NamedTuple):
    """A record whose marshalled payload was decoded as it was read (``Ring.read_plain``):
    the same fields as ``Record``, the messages instead of the payload's view."""

    pos: int
    msgs: Any
    count: int  # type: ignore[assignment]  # as Record's
    end: int


_new_tuple = tuple.__new__
_unmarshal = marshal.loads
_marshal = marshal.dumps


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """Flow-control figures of one ring, read from its header.

    Attributes:
        sent: messages the producer has written.
        handled: messages the consumer has handled (committed).
        in_flight: ``sent - handled``: the credits in use on this ring.
        waiting_producers: producers waiting for credit right now.
        waits: times a producer had to wait for credit.
        wait_seconds: total time producers waited.
        backpressure: ``Backpressure`` errors raised to producers.
    """

    sent: int
    handled: int
    in_flight: int
    waiting_producers: int
    waits: int
    wait_seconds: float
    backpressure: int


class _TryWrite(Protocol):
    def __call__(self, payload: bytes | memoryview, count: int = 1, /) -> int: ...


class _ReadAt(Protocol):
    def __call__(self, pos: int, tail: int | None = None, /) -> Record | None: ...


class _ReadPlain(Protocol):
    def __call__(self, pos: int, tail: int | None = None, /) -> Record | Loaded | None: ...


class Ring:
    """One SPSC ring; the producer and the consumer each hold their own ``Ring`` object.

    Its record write and read (``try_write``, ``read_at``) are those of its ``core``: the
    C ``RingCore`` where actorq's native helpers are built (actorq/_native/_ring.c: one
    C call each, a fifth of the instructions), else ``RingCorePy`` below, the reference;
    the bytes in the ring are the same (a writer of one kind, a reader of the other).
    """

    __slots__ = ("capacity", "core", "data", "hdr", "max_payload", "read_at", "read_plain",
                 "try_write")
    # the core's bound methods, looked up once here. The hottest callers (a lone call,
    # its reply, their reads) call ``ring.core.try_write(...)`` instead: a method held in
    # a slot is called through a lookup the interpreter cannot specialise (~200
    # instructions more than the core's own method, benchmarks/msgpath_harness.py)
    try_write: _TryWrite
    read_at: _ReadAt
    # read_at, a marshalled payload (plain data: not a pickle, whose first byte is its
    # PROTO opcode) decoded as it is read: a ``Loaded`` record then, no view of the ring
    # made (the hubs' hot reads: ``Hub.drain``, ``SystemHub.wait_spin``); any other
    # payload comes back as ``read_at`` returns it, also one that does not unmarshal
    read_plain: _ReadPlain

    def __init__(self, buf: memoryview, *, init: bool = False) -> None:
        if len(buf) < HEADER + 64 or (len(buf) - HEADER) & 7:
            msg = f"ring buffer of {len(buf)} bytes: need {HEADER} + a multiple of 8"
            raise ValueError(msg)
        # the u64 slots (header, record headers) as one C call per access where the
        # native helpers are built (acquire loads, release stores), else memoryviews
        self.hdr = _native.u64_array(buf[:HEADER])
        self.data = buf[HEADER:]
        if init:
            for i in range(len(self.hdr)):
                self.hdr[i] = 0
            self.hdr[H_CAPACITY] = len(self.data)
            self.hdr[H_MAGIC] = MAGIC
        elif self.hdr[H_MAGIC] != MAGIC or self.hdr[H_CAPACITY] != len(self.data):
            msg = "not an actorq ring (bad magic or capacity)"
            raise ValueError(msg)
        self.capacity = len(self.data)
        self.max_payload = self.capacity // 2 - REC_HEADER
        native = _native.RingCore
        # (the C core holds a view of its own, buf[:], as the views above are: buf itself
        # is never exported, so that ``Segment.close`` can release it whatever is alive)
        self.core: RingCorePy = (native(buf[:], self.data, Record, Loaded)
                                 if native is not None else RingCorePy(self.hdr, self.data))
        self.try_write = self.core.try_write
        self.read_at = self.core.read_at
        self.read_plain = self.core.read_plain

    def resume_producing(self) -> None:
        """Read the producer's counts again (``tail``, ``sent``): this object was made
        while another producer still wrote (a spare process, prepared ahead, takes over
        from the actor it replaces: ``ActorHubState.take_over``)."""
        self.core.resume()

    @staticmethod
    def size_for(capacity: int) -> int:
        """Bytes of buffer a ring with *capacity* data bytes needs."""
        return HEADER + capacity

    def statistics(self) -> RingStatistics:
        """This ring's flow-control figures (a snapshot of its header)."""
        hdr = self.hdr
        sent, handled = hdr[H_SENT], hdr[H_HANDLED]
        return RingStatistics(sent, handled, sent - handled, hdr[H_WAITING], hdr[H_WAITS],
                              hdr[H_WAIT_NS] / 1e9, hdr[H_BACKPRESSURE])

    def release(self) -> None:
        """Release the views on the buffer (so that its segment can be closed)."""
        self.core.release()
        self.data.release()
        self.hdr.release()

    # -- producer side ---------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes free right now (the producer's view)."""
        return self.capacity - (self.hdr[H_TAIL] - self.hdr[H_HEAD])

    def in_flight(self) -> int:
        """Messages published but not yet handled: the credits in use."""
        return self.hdr[H_SENT] - self.hdr[H_HANDLED]

    # -- consumer side ---------------------------------------------------------------

    def has_data(self) -> bool:
        """True if a record is published past ``head``."""
        return self.hdr[H_TAIL] != self.hdr[H_HEAD]

    def head(self) -> int:
        """The committed head position."""
        return self.hdr[H_HEAD]

    def mark_progress(self, rec_pos: int, handled_in_record: int) -> None:
        """Record that *handled_in_record* messages of the record at *rec_pos* are done.

        ``cur_sub`` is written before ``cur_rec``: a crash between the two re-delivers one
        message rather than skipping any.
        """
        hdr = self.hdr
        hdr[H_CUR_SUB] = handled_in_record
        if hdr[H_CUR_REC] != rec_pos:
            hdr[H_CUR_REC] = rec_pos

    def skip_count(self, rec_pos: int) -> int:
        """Messages of the record at *rec_pos* already handled (by a previous consumer)."""
        return self.hdr[H_CUR_SUB] if self.hdr[H_CUR_REC] == rec_pos else 0

    def commit(self, end: int, handled: int) -> None:
        """Advance head to *end* and count *handled* more messages as handled (credit)."""
        self.hdr[H_HANDLED] += handled
        self.hdr[H_HEAD] = end

    def used_bytes(self) -> int:
        """Bytes between head and tail (wrap padding included)."""
        return self.hdr[H_TAIL] - self.hdr[H_HEAD]


class RingCorePy:
    """A ring's record write and read, and the producer's own counts: the pure-Python
    reference of the C ``RingCore`` (actorq/_native/_ring.c), which does the same to
    the same bytes."""

    # sent, tail: the producer's own counts (only a producer writes them; a producer
    # object reads them once, here, and then keeps them: each header load is a
    # memoryview item, ~250 instructions, two per record written)
    __slots__ = ("cached_head", "capacity", "data", "hdr", "max_payload", "qwords", "sent",
                 "tail", "words")

    def __init__(self, hdr: _native.U64Slots, data: memoryview) -> None:
        self.hdr, self.data = hdr, data  # (the ``Ring``'s: it releases them)
        self.words = data.cast("I")  # a wrap marker: u32
        self.qwords = data.cast("Q")  # a record header as one u64 (little-endian)
        self.capacity = len(data)
        self.max_payload = self.capacity // 2 - REC_HEADER
        self.resume()

    def resume(self) -> None:
        """Read the producer's counts from the header (again)."""
        hdr = self.hdr
        self.cached_head = hdr[H_HEAD]
        self.tail = hdr[H_TAIL]  # meaningful on the producer's object only
        self.sent = hdr[H_SENT]

    def release(self) -> None:
        """Release this core's own views of the data area."""
        self.qwords.release()
        self.words.release()

    # -- producer side ---------------------------------------------------------------

    def try_write(self, payload: bytes | memoryview, count: int = 1, /) -> int:
        """Append one record holding *count* messages; return the new tail (the counter
        position just past the record: never 0), or 0 if it does not fit now.

        Raises ``ValueError`` if the payload could never fit (over half the ring).
        """
        n = len(payload)
        if n > self.max_payload:
            msg = f"record of {n} bytes exceeds the ring's limit of {self.max_payload}"
            raise ValueError(msg)
        tail = self.tail  # this producer's own: nobody else writes it
        cap = self.capacity
        need = REC_HEADER + ((n + 7) & ~7)
        pos = tail % cap
        to_end = cap - pos
        end = tail + need if need <= to_end else tail + to_end + need
        if end - self.cached_head > cap:
            self.cached_head = self.hdr[H_HEAD]
            if end - self.cached_head > cap:
                return 0
        if need > to_end:
            self.words[pos >> 2] = WRAP
            pos = 0
        self.qwords[pos >> 3] = n | count << 32  # u32 length, u32 count: one store
        self.data[pos + REC_HEADER : pos + REC_HEADER + n] = payload
        hdr = self.hdr
        self.sent = sent = self.sent + count
        hdr[H_SENT] = sent
        self.tail = end
        hdr[H_TAIL] = end  # publish last
        return end

    def write_lone(self, msg: Any, version: int, limit: int, /) -> int:
        """A lone message to an idle receiver (``Sending._send_now``): -2 if the receiver
        has not handled every message sent (busy), else ``[msg]`` marshalled with
        *version* and, if at most *limit* bytes, written as a record of one message:
        the new tail, 0 if it does not fit now, -1 if it is over *limit*."""
        if self.sent != self.hdr[H_HANDLED]:
            return -2
        body = _marshal([msg], version)
        if len(body) > limit:
            return -1
        return self.try_write(body, 1)

    # -- consumer side ---------------------------------------------------------------

    def read_at(self, pos: int, tail: int | None = None, /) -> Record | None:
        """Return the record at counter position *pos*, or None if *pos* is the tail
        (*tail*: the tail if the caller just read it, else it is read here)."""
        if tail is None:
            tail = self.hdr[H_TAIL]
        if pos == tail:
            return None
        cap = self.capacity
        off = pos % cap
        head = self.qwords[off >> 3]  # u32 length, u32 count: one load
        n = head & 0xFFFFFFFF
        if n == WRAP:
            pos += cap - off
            if pos == tail:  # pragma: no cover - a wrap marker is always followed by a record
                return None
            off = 0
            head = self.qwords[0]
            n = head & 0xFFFFFFFF
        if n > self.max_payload:
            msg = f"corrupt ring: record length {n} at position {pos}"
            raise RuntimeError(msg)
        start = off + REC_HEADER
        # Record(...) without the Python frame of a NamedTuple's __new__ (once per record)
        return _new_tuple(Record, (pos, self.data[start : start + n], head >> 32,
                                   pos + REC_HEADER + ((n + 7) & ~7)))

    def read_plain(self, pos: int, tail: int | None = None, /) -> Record | Loaded | None:
        """``read_at``, a marshalled payload decoded (``Ring.read_plain``)."""
        rec = self.read_at(pos, tail)
        if rec is None:
            return None
        payload = rec.payload
        if payload and payload[0] != PICKLE_PROTO:
            try:
                msgs = _unmarshal(payload)
            except Exception:  # the caller decodes it again, and reports it
                return rec
            payload.release()
            return _new_tuple(Loaded, (rec.pos, msgs, rec.count, rec.end))
        return rec
