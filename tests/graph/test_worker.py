"""The task worker's side (_graph/worker.py): its clock of the time spent waiting for a core,
and the wire form of a task's arguments."""

from __future__ import annotations

import marshal
import threading

import actorq
from actorq._graph import worker
from actorq._graph.graph import FLAT, Dep
from actorq._graph.worker import PICKLED, VALUE, RunQueueClock, fill_flat


def test_the_run_queue_clock_reads_this_threads_wait_and_follows_the_thread():
    clock = RunQueueClock()
    first = clock()
    assert isinstance(first, float)
    assert first >= 0.0
    assert clock() >= first  # a total so far: it never goes back
    seen: list[float] = []
    t = threading.Thread(target=lambda: seen.append(clock()))
    t.start()
    t.join(10)
    assert len(seen) == 1
    assert seen[0] >= 0.0  # read from the other thread's own file (opened again there)
    clock.close()
    clock.close()  # idempotent
    assert clock() >= 0.0  # opens again


def test_without_schedstat_the_wait_is_zero(monkeypatch):
    monkeypatch.setattr(worker, "SCHEDSTAT", "/nonexistent/schedstat")
    clock = RunQueueClock()
    assert clock() == 0.0
    assert clock() == 0.0
    clock.close()


def test_a_flat_template_is_filled_by_the_scheduler_only_with_plain_scalars():
    args = (7, Dep(1), "x", Dep(0), Dep(1))
    deps = (Dep(2), Dep(0))  # the node's dependencies: each an index into the run's values
    values = [(VALUE, None), (VALUE, "unused"), (VALUE, 1.5)]
    assert fill_flat(args, deps, values) == (7, None, "x", 1.5, None)
    # a pickled value stays for the worker to load (and fill): not sent half-filled
    values[0] = (PICKLED, b"...")
    assert fill_flat(args, deps, values) is None


def _total(*xs: float) -> float:
    return sum(xs)


def _pair(x: float) -> list[float]:
    return [x, x]


def _received(*xs: object) -> list[object]:
    return list(xs)


def test_flat_arguments_reach_the_task_filled_whatever_their_values_kind(system):
    g = actorq.Graph()
    a, b = g.task(_total, 1.0), g.task(_pair, 2.0)  # a scalar, and a list (pickled)
    plain = g.task(_total, a, 3.0, a)  # every value a scalar: filled by the scheduler
    mixed = g.task(_received, a, "s", b)  # one pickled value: filled by the worker
    assert plain.nested == FLAT
    assert mixed.nested == FLAT
    after = g.task(_total, 1.0, plain)
    result = system.run(g, workers=1)
    assert result.ok
    assert result[plain] == 5.0
    assert result[after] == 6.0
    assert result[mixed] == [1.0, "s", [2.0, 2.0]]


def _typed(*xs: object) -> list[str]:
    return [type(x).__name__ for x in xs]


def _echo(x: object) -> object:
    return x


def test_a_batch_of_plain_scalars_is_marshalled_and_the_types_arrive_exactly():
    code = {b"d" * 32: b"blob"}
    wire = [(0, b"d" * 32, (1, 2.5, "s", b"b", True, None, 1j), {}, None, False, None)]
    blob = worker.pack_plain(code, wire, "/store")
    assert not blob.startswith(b"\x80")  # not a pickle: run_plain reads it
    assert marshal.loads(blob) == (code, wire, "/store")
    assert [type(x) for x in marshal.loads(blob)[1][0][2]] == [
        int, float, str, bytes, bool, type(None), complex]


def test_tasks_get_their_arguments_types_whichever_way_their_batch_is_sent(system):
    # marshal writes any buffer as bytes: a bytearray or a list argument must not take
    # the plain (marshalled) way, whatever else shares its batch
    g = actorq.Graph()
    scalars = g.task(_typed, 1, 2.5, "s", b"b", True, None, 1j)
    roots = [g.task(_echo, v) for v in (3, 4.5, "t", b"u", False, None, 2j)]
    from_deps = g.task(_typed, *roots)  # values of plain dependencies, filled in
    buffer = g.task(_typed, bytearray(b"x"), 1)
    nested = g.task(_typed, [1, 2], (3,), {"k": 1})
    mixed = g.task(_typed, roots[0], bytearray(b"y"))
    result = system.run(g, workers=1)
    assert result.ok
    assert result[scalars] == result[from_deps] == [
        "int", "float", "str", "bytes", "bool", "NoneType", "complex"]
    assert result[buffer] == ["bytearray", "int"]
    assert result[nested] == ["list", "tuple", "dict"]
    assert result[mixed] == ["int", "bytearray"]


def test_a_batchs_outcome_is_marshalled_unless_it_holds_a_shared_value():
    plain = (0.01, 0.0, [(3, worker.OK, VALUE, 2.5, 1.0, 2.0),
                         (4, worker.OK, PICKLED, b"\x80\x05...", 2.0, 3.0),
                         (5, worker.ERR, 0, b"error", 3.0, 3.5),
                         (6, worker.NEED_CODE, 0, None, 0.0, 0.0)])
    packed = worker.pack_outcome(plain)
    assert type(packed) is bytes
    assert worker.unpack_outcome(packed) == plain
    shared = worker.pack_value(bytes(1 << 16), "aqtest_outcome_", 1024)
    assert shared[0] == worker.SHARED
    try:
        outcome = (0.01, 0.0, [(7, worker.OK, *shared, 1.0, 2.0)])
        assert worker.pack_outcome(outcome) is outcome  # a handle: left to pickle
        assert worker.unpack_outcome(outcome) is outcome
    finally:
        shared[1].unlink()
