"""Routers: pick the member that gets a call. Pure (no I/O, no threads of their own).

Each router sees the members that may take a call now (their circuit lets it through),
in the pool's member order, and returns one of them. What they read of a member:

    in_flight   calls the pool sent it and has no answer for yet (the pool's own count:
                it knows without asking the kernel, and it is what a call waits behind)
    ewma        its recent latency, seconds (exponentially weighted, per completed call)

round_robin    the next one in turn
least_loaded   the fewest calls in flight (ties: in turn)
fastest        the lowest expected finish time, ``ewma * (in_flight + 1)``: a member
               that is slow, or already has work queued, gets less
hash           consistent hashing of the call's ``key`` on a ring of virtual nodes: the
               same key goes to the same member, and a resize moves about 1/n of keys
"""

from __future__ import annotations

import pickle
from bisect import bisect_left
from collections.abc import Hashable, Sequence
from typing import Any, Protocol
from zlib import crc32

ROUTINGS = ("round_robin", "least_loaded", "fastest", "hash")
VNODES = 128  # virtual nodes per member on the hash ring
# Keys of these exact types always hash, and two equal ones are the same key on the ring
# (1 and True, or 1 and 1.0, are equal dict keys but not the same ring key: other types
# are not cached). A cache of their slots spares a call its hash and its bucket
# (benchmarks/callgrind_pool_call.py, hash_repeat); this many keys at most, then it
# starts afresh (a few MB at most; a resize empties it).
PLAIN_KEYS = frozenset({str, int, bytes})
SLOT_CACHE_KEYS = 65_536
# An int key's place on the ring: Fibonacci hashing (the key times 2**64 / golden ratio,
# modulo 2**64; Knuth, TAOCP vol. 3, 6.4), whose top bits, the ones the ring's order
# reads, spread consecutive keys evenly. Any other key's place: the CRC-32 of its bytes
# (``_key_bytes``), Fibonacci-hashed the same way. Both are the same in every process and
# every run (not ``hash()``, which is salted per process). Per new key (callgrind):
# blake2b (digest_size=8) 5.9k instructions, md5 6.4k, sha1 6.7k, crc32 1.8k. A CRC is
# not a cryptographic hash: someone who picks the keys can pile them on one member;
# 32 bits only, which for a ring of a few thousand virtual nodes is plenty.
FIBONACCI = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
# The ring's places are cut into 2**b equal buckets (the top b bits of a place), about
# BUCKETS_PER_POINT per virtual node, at most 2**MAX_BUCKET_BITS (512 KiB of table): a
# bucket that holds no virtual node names its owner, so a key's slot is one index, no
# bisect (an int key's place and slot: 1.5k instructions against 3.4k with a bisect and
# a cache miss; callgrind); the 1/BUCKETS_PER_POINT or so of keys that fall in a bucket
# with a node in it bisect as before. The owner is the bisect's, so no key moves.
BUCKETS_PER_POINT = 8
MAX_BUCKET_BITS = 16


class Member(Protocol):
    """What a router reads of a pool member."""

    @property
    def id(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def ewma(self) -> float: ...


class Router:
    """Base class: ``choose(candidates, key)`` returns one of *candidates* (not empty)."""

    __slots__ = ("_turn",)  # (read and written in C too: actorq/_native/_pool.c)

    name = "?"
    needs_key = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Any], key: Any = None) -> Any:
        """Return the member of *candidates* that gets the call."""
        raise NotImplementedError

    def resized(self, member_ids: Sequence[int], slots: Sequence[int] | None = None) -> None:
        """The pool's members are now *member_ids*, in *slots* (their places; default
        ``0..n-1``). Only ``hash`` keeps state on it."""


class RoundRobin(Router):
    """Each member in turn."""

    __slots__ = ()

    name = "round_robin"

    def choose(self, candidates: Sequence[Any], key: Any = None) -> Any:
        self._turn += 1
        return candidates[self._turn % len(candidates)]


class LeastLoaded(Router):
    """The fewest calls in flight; ties broken in turn, so that idle members share."""

    __slots__ = ()

    name = "least_loaded"

    def choose(self, candidates: Sequence[Any], key: Any = None) -> Any:
        n = len(candidates)
        self._turn += 1
        start = self._turn % n
        best = candidates[start]
        low = best.in_flight
        if low == 0:
            return best
        for i in range(1, n):
            m = candidates[(start + i) % n]
            load = m.in_flight
            if load < low:
                best, low = m, load
                if load == 0:
                    break
        return best


class Fastest(Router):
    """The lowest expected finish time, ``ewma * (in_flight + 1)``.

    A member without a latency sample yet has ``ewma == 0``: it is tried first, which is
    how it gets one. Ties go in turn.
    """

    __slots__ = ()

    name = "fastest"

    def choose(self, candidates: Sequence[Any], key: Any = None) -> Any:
        n = len(candidates)
        self._turn = turn = self._turn + 1
        start = turn % n
        best = candidates[start]
        if n == 1:
            return best  # no other to weigh it against (and no range to make)
        low = best.ewma * (best.in_flight + 1)
        for i in range(1, n):
            m = candidates[(start + i) % n]
            cost = m.ewma * (m.in_flight + 1)
            if cost < low:
                best, low = m, cost
        return best


def key_point(key: Any) -> int:
    """The position of *key* on the hash ring: stable across processes for plain data.

    Raises ``TypeError`` for a key that cannot be hashed (nothing is sent then).
    """
    kind = type(key)  # the common keys first, exactly: no ABC check, no second hash()
    if kind is int:
        point: int = (key * FIBONACCI) & MASK64
        return point
    if kind is str:
        data = b"s" + key.encode("utf-8", "surrogatepass")
    elif kind is bytes:
        data = b"b" + key
    elif isinstance(key, int) and kind is not bool:  # an IntEnum: where its int goes
        return (int(key) * FIBONACCI) & MASK64
    else:
        data = _key_bytes(key)
    point = (crc32(data) * FIBONACCI) & MASK64
    return point


def _key_bytes(key: Any) -> bytes:
    if not isinstance(key, Hashable):
        msg = f"a hash pool's key must be hashable, not {type(key).__name__}"
        raise TypeError(msg)
    try:
        hash(key)  # a tuple holding a list is Hashable by type, and fails here
    except TypeError as exc:
        msg = f"a hash pool's key must be hashable: {exc}"
        raise TypeError(msg) from None
    if isinstance(key, str):
        data = b"s" + key.encode("utf-8", "surrogatepass")
    elif isinstance(key, bytes):
        data = b"b" + key
    elif isinstance(key, int):
        data = b"i" + str(key).encode()
    else:
        try:  # tuples, floats, frozensets of plain data: the same bytes in every process
            data = b"p" + pickle.dumps(key, protocol=4)
        except Exception:
            data = b"h" + str(hash(key)).encode()
    return data


class ConsistentHash(Router):
    """Keys on a ring of ``VNODES`` virtual nodes per member.

    A key goes to the first virtual node clockwise from it whose member may take the
    call; a member added or removed takes or gives about 1/n of the keys, and a member
    whose circuit is open hands its keys to the next ones on the ring, and gets them back
    once it closes.
    """

    __slots__ = ("_after", "_bucket_mask", "_buckets", "_cache", "_owners", "_points",
                 "_shift", "_slots", "vnodes")

    name = "hash"
    needs_key = True

    def __init__(self, vnodes: int = VNODES) -> None:
        super().__init__()
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[int] = []
        self._after: list[int] = []
        self._buckets: list[int] = [-1, -1]  # a bucket's owner, -1: bisect (see _bucket_owners)
        self._shift = 63  # a place's bucket: place >> _shift (the top bits)
        self._bucket_mask = 1
        self._slots = 0  # members on the ring
        self._cache: dict[Any, int] = {}  # str/bytes key -> its slot on this ring

    def resized(self, member_ids: Sequence[int], slots: Sequence[int] | None = None) -> None:
        # placed by member *slot* (not actor id): a restarted or replaced member keeps
        # its place, and the same pool in another process builds the same ring; a
        # member retired from the middle takes only its own keys with it
        places = range(len(member_ids)) if slots is None else slots
        ring = sorted((key_point(f"member-{slot}-{v}"), slot)
                      for slot in places for v in range(self.vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [s for _, s in ring]
        # the owner of the first point at or after an index of bisect: the ring's last
        # index wraps to its first (no modulo per key)
        self._after = [*self._owners, *self._owners[:1]]
        bits = min(MAX_BUCKET_BITS, max(1, (BUCKETS_PER_POINT * len(ring) - 1).bit_length()))
        self._shift = 64 - bits
        self._bucket_mask = (1 << bits) - 1
        self._buckets = _bucket_owners(self._points, self._after, bits)
        self._slots = len(set(places))
        self._cache = {}  # a new ring: its slots for keys (slot_for)

    def slot_for(self, key: Any, allowed: set[int] | None = None) -> int:
        """The member slot *key* maps to (the first one in *allowed* clockwise)."""
        if allowed is None and type(key) in PLAIN_KEYS:
            slot = self._cache.get(key)
            return self._cache_slot(key) if slot is None else slot
        points, owners = self._points, self._owners
        n = len(points)
        i = self._index(key)
        if allowed is None:
            return owners[i]
        for step in range(n):
            slot = owners[(i + step) % n]
            if slot in allowed:
                return slot
        msg = "no member may take the call"
        raise LookupError(msg)

    def _cache_slot(self, key: Any) -> int:
        """The slot of a plain *key* not in the cache: found on the ring by its bucket
        (or a bisect), and cached."""
        cache = self._cache
        if len(cache) >= SLOT_CACHE_KEYS:
            cache.clear()
        if type(key) is int:
            # its place's bucket, ((key * FIBONACCI) & MASK64) >> _shift: the same
            # bits, read with a big int less
            slot = self._buckets[(key * FIBONACCI >> self._shift) & self._bucket_mask]
            if slot < 0:
                slot = self._after[bisect_left(self._points, (key * FIBONACCI) & MASK64)]
        else:
            point = key_point(key)
            slot = self._buckets[point >> self._shift]
            if slot < 0:
                slot = self._after[bisect_left(self._points, point)]
        cache[key] = slot
        return slot

    def _index(self, key: Any) -> int:
        """The index on the ring of the first virtual node clockwise from *key*."""
        return bisect_left(self._points, key_point(key)) % len(self._points)

    def choose(self, candidates: Sequence[Any], key: Any = None) -> Any:
        if len(candidates) == self._slots:  # every member may take it: no set to build
            if type(key) in PLAIN_KEYS:  # slot_for's cached path, written out (each call)
                cache = self._cache
                slot = cache.get(key)
                if slot is None:
                    slot = self._cache_slot(key)
            else:
                slot = self.slot_for(key)
            for m in candidates:
                if m.slot == slot:
                    return m
        by_slot = {m.slot: m for m in candidates}
        return by_slot[self.slot_for(key, set(by_slot))]


def _bucket_owners(points: list[int], after: list[int], bits: int) -> list[int]:
    """For each of the ``2**bits`` buckets of the ring's places (by their top bits),
    the slot every key in it maps to, or -1 if a virtual node lies inside it (a key
    there must bisect). *points*: the ring's places, sorted; *after*: the owner of the
    first place at or after each bisect index (``ConsistentHash._after``)."""
    shift = 64 - bits
    owners = [-1] * (1 << bits)
    prev = -1  # the bucket of the place before
    for k, point in enumerate(points):
        bucket = point >> shift
        if bucket > prev + 1:  # the buckets between the two places: k places before them
            owners[prev + 1:bucket] = [after[k]] * (bucket - prev - 1)
        prev = bucket
    if prev + 1 < len(owners):
        owners[prev + 1:] = [after[len(points)]] * (len(owners) - prev - 1)
    return owners


def make_router(routing: str) -> Router:
    """The router named *routing* (``ValueError`` for an unknown name)."""
    if routing == "round_robin":
        return RoundRobin()
    if routing == "least_loaded":
        return LeastLoaded()
    if routing == "fastest":
        return Fastest()
    if routing == "hash":
        return ConsistentHash()
    msg = f"routing must be one of {', '.join(ROUTINGS)}; not {routing!r}"
    raise ValueError(msg)
