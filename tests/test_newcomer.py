"""What a new user hits first (issue 14): refs of another system, failure output,
sync waiting on replies."""

from __future__ import annotations

import pytest

import actorq


class Counter(actorq.Actor):
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def test_a_ref_of_another_system_is_refused_and_stops_nothing() -> None:
    """Two systems number their actors alike: s1.stop(ref_of_s2) once stopped s1's own
    actor #1. Every method taking a ref checks its run id."""
    with actorq.ActorSystem(call_timeout=20.0) as s1, \
            actorq.ActorSystem(call_timeout=20.0) as s2:
        mine = s1.spawn(Counter)
        theirs = s2.spawn(Counter)
        assert mine.actor_id == theirs.actor_id  # the trap: same id, other system
        assert mine.incr().result() == 1
        assert theirs.incr().result() == 1
        for method in (s1.stop, s1.wait_ready, s1.pid_of):
            with pytest.raises(ValueError, match="belongs to another actor system") as info:
                method(theirs)
            assert s2.run_id in str(info.value)
            assert s1.run_id in str(info.value)
        with pytest.raises(ValueError, match="another actor system"):
            s1.stop(s2.supervisor())
        with pytest.raises(TypeError, match="needs an ActorRef"):
            s1.stop("Counter-1")  # type: ignore[arg-type]
        # nothing was stopped: both actors still answer
        assert mine.incr().result() == 2
        assert theirs.incr().result() == 2
        assert s1.run_id in repr(mine)
        assert s2.run_id in repr(theirs)
        s2.stop(theirs)
        assert s2.pid_of(theirs) is None
        assert s1.pid_of(mine) is not None


def test_error_messages_name_the_way_out(system: actorq.ActorSystem) -> None:
    """A misspelt option suggests the right one; a private name on a ref says why it is
    not a handler; a failed lookup reads as a sentence, without doubled quotes."""
    with pytest.raises(TypeError, match=r"'windw' \(did you mean 'window'\?\)"):
        actorq.ActorSystem(windw=5)
    counter = system.spawn(Counter, name="c")
    with pytest.raises(AttributeError, match="names starting with '_' are never handlers"):
        counter._private()
    with pytest.raises(AttributeError):
        counter.__array__  # noqa: B018 - a protocol probe stays a plain AttributeError
    with pytest.raises(KeyError) as info:
        system.lookup("nobody")
    assert str(info.value) == "no actor named 'nobody'"
    assert isinstance(info.value, actorq.ActorqError)
