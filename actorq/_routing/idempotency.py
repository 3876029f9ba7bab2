"""Idempotency keys: a call with a key in flight is joined; a completed one is answered
from a bounded store (TTL and size) instead of running again."""

from __future__ import annotations

import time
from typing import Any

from actorq._core.reply import Reply
from actorq._routing.members import MemberSet


class Idempotency(MemberSet):
    """The idempotency-key table of a pool."""

    __slots__ = ()  # MemberSet has the slots

    def _idem_lookup(self, idem: Any) -> Reply[Any] | None:
        try:
            hash(idem)
        except TypeError:
            msg = f"idempotency_key must be hashable, not {type(idem).__name__}"
            raise TypeError(msg) from None
        with self._lock:
            running = self._idem_running.get(idem)
            if running is not None:
                self._stats["idempotent_joins"] += 1
                return running
            done = self._idem_done.get(idem)
            if done is not None:
                expires, reply = done
                if expires > time.monotonic():
                    self._stats["idempotent_hits"] += 1
                    return reply
                del self._idem_done[idem]
        return None

    def _idem_register(self, idem: Any, outer: Reply[Any]) -> None:
        with self._lock:
            self._idem_running[idem] = outer

        def store(reply: Reply[Any]) -> None:
            with self._lock:
                self._idem_running.pop(idem, None)
                if reply.outcome()[1] is not None:
                    return  # a failure is not remembered: the next call runs again
                self._idem_done[idem] = (time.monotonic() + self._idem_ttl, reply)
                self._idem_done.move_to_end(idem)
                while len(self._idem_done) > self._idem_size:
                    self._idem_done.popitem(last=False)

        outer.add_done_callback(store)
