"""A batch whose worker is killed mid-way: the tasks it finished are not run again.

Runs are counted by their side effects (a line appended to a file per run), across a
real SIGKILL of the worker process in the middle of a batch.
"""

from __future__ import annotations

import glob
import os
import pickle
import signal

import pytest

import actorq
from actorq._executor import ledger
from tests.executor.helpers import (
    queue_behind_blockers,
    record_run,
    run_counted,
    run_counts,
    run_pids,
    wait_for_file,
)


def run_once(i, runs, kill_marker, kill_at):
    """Record a run of task *i*; task *kill_at* first SIGKILLs its worker, once."""
    if i == kill_at:
        try:
            os.close(os.open(kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    record_run(i, runs)
    return i * 10


def run_once_big(i, runs, kill_marker, kill_at):
    """``run_once``; tasks 0..2 return outcomes that would not fit together in a slot."""
    run_once(i, runs, kill_marker, kill_at)
    return big_outcome(i)


def big_outcome(i):
    return bytes([i]) * (ledger.SLOT // 2 + 1) if i < 3 else i


def test_a_worker_killed_mid_batch_does_not_rerun_the_tasks_it_finished(tmp_path):
    gate, runs, marker = (str(tmp_path / n) for n in ("gate", "runs", "killed"))
    with actorq.Executor(2) as ex:
        ex.submit(int).result(timeout=60)  # both workers up
        # four blockers take the four message slots (two per worker): what follows queues
        blockers = [ex.submit(wait_for_file, gate) for _ in range(4)]
        futures = [ex.submit(run_once, i, runs, marker, 3) for i in range(20)]
        open(gate, "w").close()
        # the first answer sends a quarter of the queue, tasks 0..4, as one batch: its
        # worker finishes 0, 1 and 2, then task 3 kills it
        assert [f.result(timeout=120) for f in futures] == [i * 10 for i in range(20)]
        for b in blockers:
            b.result(timeout=60)
        assert os.path.exists(marker)  # the kill did happen
        counts, pids = run_counts(runs), run_pids(runs)
        assert counts == dict.fromkeys(range(20), 1)  # every task ran exactly once
        stats = ex.pool.statistics()
        assert stats.retries >= 1
        assert len(pids) >= 2
        path = ex._ledger
    assert not os.path.exists(path)  # the ledger goes with the executor


def test_large_outcomes_of_a_killed_batch_are_not_rerun_and_their_files_go(tmp_path):
    """The finished tasks' outcomes are over ``SPILL_AT``: kept in files beside the
    ledger, read by the retry, removed once the batch is answered."""
    gate, runs, marker = (str(tmp_path / n) for n in ("gate", "runs", "killed"))
    with actorq.Executor(2) as ex:
        ex.submit(int).result(timeout=60)
        blockers = [ex.submit(wait_for_file, gate) for _ in range(4)]
        futures = [ex.submit(run_once_big, i, runs, marker, 3) for i in range(20)]
        open(gate, "w").close()
        for i, f in enumerate(futures):
            assert f.result(timeout=120) == big_outcome(i)
        for b in blockers:
            b.result(timeout=60)
        assert os.path.exists(marker)
        counts = run_counts(runs)
        assert counts == dict.fromkeys(range(20), 1)  # tasks 0..2 (spilled) not rerun
        assert ex.pool.statistics().retries >= 1
        assert glob.glob(glob.escape(ex._ledger) + "_*") == []  # taken with the replies


def test_a_slot_is_free_again_once_its_batch_is_answered(tmp_path):
    with actorq.Executor(1) as ex:
        slots = len(ex._free_slots)
        for _ in range(3):
            out = list(ex.map(abs, range(-300, 300)))
            assert out == [abs(i) for i in range(-300, 300)]
        assert len(ex._free_slots) == slots


def refuse_here(pid):
    if os.getpid() != pid:
        raise ValueError(f"refuses to unpickle outside process {pid}")
    return OnlyIn(pid)


class OnlyIn:
    """Pickles anywhere; unpickles only in the process *pid*."""

    def __init__(self, pid):
        self.pid = pid

    def __reduce__(self):
        return refuse_here, (self.pid,)


def only_in_this_worker(i, runs):
    record_run(i, runs)
    return OnlyIn(os.getpid())  # the executor's process cannot rebuild it


def test_an_argument_that_fails_to_unpickle_in_a_batch_fails_only_its_task(tmp_path):
    """An argument that needs pickling travels pickled by the executor and is rebuilt
    by the worker in its task: only that task fails (naming the argument, its type and
    the function), each of the others runs once."""
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    with actorq.Executor(2) as ex:
        ex.submit(int).result(timeout=60)
        blockers, futures = queue_behind_blockers(ex, gate, lambda: [
            ex.submit(run_counted, i, runs, OnlyIn(os.getpid()) if i == 5 else None)
            for i in range(40)])
        for i, f in enumerate(futures):
            if i == 5:
                with pytest.raises(actorq.DecodeError, match=r"argument 2 \(OnlyIn\) of "
                                   r"run_counted\(\) could not be unpickled in the worker "
                                   r".*refuses to unpickle"):
                    f.result(timeout=60)
            else:
                assert f.result(timeout=60) == i
        for b in blockers:
            b.result(timeout=60)
        counts = run_counts(runs)
        assert counts == {i: 1 for i in range(40) if i != 5}


def test_a_result_that_fails_to_unpickle_in_a_batch_fails_only_its_task(tmp_path):
    """The batch ran, its reply did not unpickle here: the others' outcomes are taken
    from the ledger (not run again); only the bad one fails."""
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    with actorq.Executor(2) as ex:
        ex.submit(int).result(timeout=60)
        blockers, futures = queue_behind_blockers(ex, gate, lambda: [
            ex.submit(only_in_this_worker, i, runs) if i == 7 else
            ex.submit(run_counted, i, runs) for i in range(40)])
        for i, f in enumerate(futures):
            if i == 7:
                with pytest.raises(actorq.DecodeError, match=r"return value.*could not be "
                                   r"unpickled.*refuses to unpickle"):
                    f.result(timeout=60)
            else:
                assert f.result(timeout=60) == i
        for b in blockers:
            b.result(timeout=60)
        counts = run_counts(runs)
        assert counts == dict.fromkeys(range(40), 1)  # nothing ran twice


class NoPickle:
    def __reduce__(self):
        raise TypeError("NoPickle refuses pickling")


def make_unpicklable(i):
    return NoPickle() if i == 2 else i


def test_an_unpicklable_result_in_a_batch_fails_only_its_task(tmp_path):
    gate = str(tmp_path / "gate")
    with actorq.Executor(1) as ex:
        ex.submit(int).result(timeout=60)
        blockers = [ex.submit(wait_for_file, gate) for _ in range(2)]
        futures = [ex.submit(make_unpicklable, i) for i in range(6)]
        open(gate, "w").close()
        for i, f in enumerate(futures):
            if i == 2:
                with pytest.raises(pickle.PicklingError, match=r"return value of "
                                   r"make_unpicklable\(\) could not be pickled.*NoPickle "
                                   r"refuses") as info:
                    f.result(timeout=60)
                assert isinstance(info.value, actorq.EncodeError)
                assert isinstance(info.value, TypeError)  # as before, and as pickle raises
            else:
                assert f.result(timeout=60) == i
        for b in blockers:
            b.result(timeout=60)


# -- the ledger itself ----------------------------------------------------------------------


def test_a_retry_takes_the_outcomes_its_dead_attempt_recorded():
    path = ledger.create(2)
    try:
        first = ledger.open_map(path)
        rec = ledger.BatchRecord(first, 1, batch=7)
        assert rec.done == {}
        rec.record(0, (True, "zero", ""))
        rec.record(2, (False, ValueError("two"), "tb"))
        first.close()  # the worker is gone; what it wrote stays in the file
        again = ledger.open_map(path)
        retry = ledger.BatchRecord(again, 1, batch=7)
        assert sorted(retry.done) == [0, 2]
        assert retry.done[0] == (True, "zero", "")
        assert isinstance(retry.done[2][1], ValueError)
        retry.record(1, (True, "one", ""))  # appends after what was there
        assert sorted(ledger.BatchRecord(again, 1, batch=7).done) == [0, 1, 2]
        other = ledger.BatchRecord(again, 0, batch=7)  # another slot: nothing
        assert other.done == {}
        reused = ledger.BatchRecord(again, 1, batch=8)  # the slot's next batch starts empty
        assert reused.done == {}
        assert ledger.BatchRecord(again, 1, batch=8).done == {}
        again.close()
    finally:
        ledger.remove(path)
        ledger.remove(path)  # already gone: fine
    assert not os.path.exists(path)


def test_an_outcome_too_large_for_its_slot_is_returned_but_not_kept():
    path = ledger.create(1)
    try:
        m = ledger.open_map(path)
        rec = ledger.BatchRecord(m, 0, batch=1)
        big = b"x" * (ledger.SLOT + 1)
        assert rec.record(0, (True, big, "")) == (True, big, "")
        rec.record(1, (True, "small", ""))
        assert ledger.BatchRecord(m, 0, batch=1).done == {1: (True, "small", "")}
        m.close()
    finally:
        ledger.remove(path)


def test_a_large_outcome_is_spilled_to_a_file_read_by_the_retry_and_removed():
    path = ledger.create(2)
    try:
        m = ledger.open_map(path)
        rec = ledger.BatchRecord(m, 1, batch=4, path=path)
        big = (True, b"y" * (ledger.SPILL_AT + 1), "")
        assert rec.record(0, big) == big
        rec.record(1, (True, "small", ""))
        spilled = ledger.spill_path(path, 1, 4, 0)
        assert os.path.getsize(spilled) > ledger.SPILL_AT
        assert ledger.BatchRecord(m, 1, batch=4, path=path).done == {
            0: big, 1: (True, "small", "")}  # what a retry finds
        os.unlink(spilled)  # a file that went missing: its task just runs again
        assert ledger.BatchRecord(m, 1, batch=4, path=path).done == {1: (True, "small", "")}
        again = ledger.BatchRecord(m, 1, batch=4, path=path)
        again.record(0, big)  # the retry spills it anew
        ledger.take_spills(m, path, 1)  # the batch is answered: its files go
        assert not os.path.exists(spilled)
        ledger.BatchRecord(m, 0, batch=5, path=path).record(2, big)
        m.close()
    finally:
        ledger.remove(path)  # the ledger and every file left beside it
    assert glob.glob(glob.escape(path) + "*") == []


def test_ledger_files_are_named_as_actorq_segments():
    path = ledger.create(1)
    try:
        assert os.path.basename(path).startswith(f"aq_{os.getpid()}_")
    finally:
        ledger.remove(path)


def test_a_task_that_returned_none_is_kept_as_an_empty_record():
    path = ledger.create(1)
    try:
        m = ledger.open_map(path)
        rec = ledger.BatchRecord(m, 0, batch=3)
        rec.record(0, (True, None, ""))
        rec.record(1, (False, None, ""))  # a failure is never the empty record
        rec.record(2, (True, 0, ""))
        done = ledger.BatchRecord(m, 0, batch=3).done
        assert done == {0: (True, None, ""), 1: (False, None, ""), 2: (True, 0, "")}
        m.close()
    finally:
        ledger.remove(path)
