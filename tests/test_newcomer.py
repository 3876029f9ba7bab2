"""What a new user hits first (issue 14): refs of another system, failure output,
sync waiting on replies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from pathlib import Path
from typing import Any

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


class Sleeper(actorq.Actor):
    def nap(self, seconds: float, value: int) -> int:
        time.sleep(seconds)
        return value

    def fail(self) -> None:
        raise ValueError("no")

    def fan_out(self, workers: list[actorq.ActorRef[Any]]) -> list[int]:
        """Inside an actor: wait on replies from other actors with actorq.as_completed."""
        replies = [w.nap(0.0, i) for i, w in enumerate(workers)]
        return sorted(r.result() for r in actorq.as_completed(replies, timeout=30))


def test_sync_code_waits_for_any_or_all_replies(system: actorq.ActorSystem) -> None:
    """concurrent.futures.as_completed(replies) raised AttributeError; actorq.wait and
    actorq.as_completed do the same for replies, in order of completion."""
    slow, fast = system.spawn(Sleeper), system.spawn(Sleeper)
    system.wait_ready(slow)
    system.wait_ready(fast)
    slow_reply = slow.nap(30.0, 1)  # done only when we stop waiting for it (below)
    fast_replies = [fast.nap(0.0, i) for i in range(10)]
    order = list(actorq.as_completed(fast_replies, timeout=30))
    assert sorted(r.result() for r in order) == list(range(10))
    done, not_done = actorq.wait([slow_reply, *fast_replies], timeout=30,
                                 return_when="FIRST_COMPLETED")
    assert slow_reply in not_done
    assert done
    assert done <= set(fast_replies)
    failing = fast.fail()
    done, not_done = actorq.wait([failing, slow_reply], timeout=30,
                                 return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {failing}
    assert not_done == {slow_reply}
    with pytest.raises(actorq.CallTimeout, match=r"1 of 1 replies not done within 0\.2s"):
        list(actorq.as_completed([slow_reply], timeout=0.2))
    done, not_done = actorq.wait([slow_reply], timeout=0.2)  # a timeout returns, no error
    assert not done
    assert not_done == {slow_reply}
    with pytest.raises(ValueError, match="return_when"):
        actorq.wait([slow_reply], return_when="ANY")
    system.stop(slow)  # its pending call fails with ActorStopped: all done now
    done, not_done = actorq.wait([slow_reply], timeout=30)
    assert done == {slow_reply}
    assert not not_done
    assert isinstance(slow_reply.exception(), actorq.ActorStopped)
    workers = [system.spawn(Sleeper) for _ in range(3)]
    assert system.spawn(Sleeper).fan_out(workers).result() == [0, 1, 2]


def test_result_inside_async_code_warns_that_it_blocks_the_loop(
        system: actorq.ActorSystem) -> None:
    """reply.result() in the user's own async code silently blocked its loop: warn."""
    counter = system.spawn(Counter)

    async def main() -> int:
        with pytest.warns(RuntimeWarning, match="blocks this thread's running event loop"):
            value = counter.incr().result(timeout=30)
        return value + await counter.incr()

    assert asyncio.run(main()) == 3


def test_actorq_bench_writes_to_the_current_directory(tmp_path: Any, monkeypatch: Any) -> None:
    """`actorq bench` from an editable install wrote into the checkout's tracked
    benchmarks/results/ by default; now into the current directory (#14, kept by #12:
    tests/bench/test_workload.py runs it there)."""
    from actorq.bench.command import parser

    monkeypatch.chdir(tmp_path)
    assert parser().parse_args([]).out.resolve() == tmp_path.resolve()
    assert parser().parse_args(["--out", "/x"]).out == Path("/x")
    assert parser().parse_args(["--results-dir", "/x"]).out == Path("/x")  # the old name


class Parent(actorq.Actor):
    def spawn_child(self) -> int:
        return self.context.spawn(Counter).actor_id


def test_stopped_actors_are_forgotten_past_stopped_kept() -> None:
    """metrics()["actors"] kept every stopped child for the life of the system: past
    stopped_kept, the oldest are forgotten, with their shared memory."""
    with actorq.ActorSystem(call_timeout=30.0, stopped_kept=3) as system:
        parent = system.spawn(Parent, name="parent")
        for _ in range(6):
            child_id = parent.spawn_child().result()
            assert child_id > 0
            system.stop(parent)  # its child stops with it
            parent = system.spawn(Parent, name="parent")
        system.wait_ready(parent)
        actors = system.metrics()["actors"]
        states = [entry["state"] for entry in actors.values()]
        assert states.count("running") == 1  # the last parent
        assert len(actors) <= 5
        assert parent.spawn_child().result() > 0  # the system still works


def test_recipes_page_is_copied_from_code_that_runs() -> None:
    """docs/recipes.md's blocks come from examples/recipes.py (run by test_examples.py)
    and tests/test_recipe_testing.py (run by pytest)."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "recipes.md").read_text()
    sources = (root / "examples" / "recipes.py").read_text() + (
        root / "tests" / "test_recipe_testing.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 6
    for block in blocks:
        assert block in sources, f"not in examples/recipes.py:\n{block}"


def test_a_local_class_says_to_define_it_at_the_top_level(system: actorq.ActorSystem) -> None:
    """A value of a class defined inside a function cannot be sent: the error says where
    to define it instead."""

    class Local:
        pass

    counter = system.spawn(Counter)
    with pytest.raises(TypeError, match="define it at the top level of a module"):
        counter.call("incr", Local())
