"""The journal across runs: one run at a time, and attempts counted across a SIGKILL.

Each test runs the graph in real subprocesses (their own actor systems) sharing one
journal file: a second live run is refused naming the first one's pid, and a run
killed with SIGKILL leaves the record of what it had started, so that the next run
reports those tasks as run again (``TaskStats.interrupted``, counted in ``attempts``).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

import actorq
from actorq._graph.journal import Journal
from actorq.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
N = 12  # tasks t0..t11, then "total" of them all
QUICK = 4  # t0..t3 finish at once; the others block while MODE=block

SCRIPT = textwrap.dedent('''
    import json, os, sys, threading
    import actorq

    def step(effects, gate, i):
        with open(effects, "a") as f:
            f.write(f"s{i}\\n")  # started
        if i >= QUICK and os.environ["MODE"] == "block":
            wake = threading.Event()
            for _ in range(12000):  # until the test opens the gate (or kills us)
                if os.path.exists(gate):
                    break
                wake.wait(0.01)
        with open(effects, "a") as f:
            f.write(f"e{i}\\n")  # ended
        return i * 3

    def total(*xs):
        return sum(xs)

    if __name__ == "__main__":
        effects, gate, journal = sys.argv[1:4]
        g = actorq.Graph()
        parts = [g.task(step, effects, gate, i, key=f"t{i}") for i in range(N)]
        end = g.task(total, *parts, key="total")
        with actorq.ActorSystem() as system:
            try:
                r = system.run(g, workers=2, journal=journal)
            except actorq.GraphError as exc:
                print("GraphError:", exc, flush=True)
                sys.exit(3)
            tasks = {n.key: [r.stats.tasks[n].attempts, r.stats.tasks[n].interrupted,
                             r.stats.tasks[n].from_journal] for n in parts + [end]}
            print(json.dumps({"total": r[end], "tasks": tasks, "attempts": r.stats.attempts,
                              "interrupted": r.stats.extra["interrupted"],
                              "unclean": r.stats.extra["journal_unclean"]}), flush=True)
''').replace("QUICK", str(QUICK)).replace("N)", f"{N})")


@pytest.fixture
def job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    effects, gate, journal = tmp_path / "effects", tmp_path / "gate", tmp_path / "run.db"

    def start(mode):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MODE": mode}
        return subprocess.Popen([sys.executable, str(script), str(effects), str(gate),
                                 str(journal)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def lines():
        return effects.read_text().split() if effects.exists() else []

    def done_rows():
        if not journal.exists():
            return {}
        with closing(sqlite3.connect(journal)) as db:
            return dict(db.execute("SELECT key, attempts FROM tasks WHERE state = 'done'"))

    return start, lines, done_rows, gate, journal


def _blocked(lines):
    """The blocking tasks that started (both workers are then held by them)."""
    return {x[1:] for x in lines() if x.startswith("s") and int(x[1:]) >= QUICK}


def _finish(proc):
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])


def test_a_second_live_run_on_the_same_journal_is_refused_naming_the_first(job):
    start, lines, done_rows, gate, journal = job
    first = start("block")
    try:
        wait_until(lambda: len(_blocked(lines)) == 2 and len(done_rows()) == QUICK,
                   timeout=120, message="the first run holds both workers")
        seen, rows = lines(), done_rows()
        second = start("free")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 3, err
        assert "is in use by another run that is still going" in out
        assert f"(pid {first.pid}, started " in out
        assert lines() == seen  # the second run ran nothing
        assert done_rows() == rows  # and wrote nothing
        gate.write_text("go")  # the first run ends normally
        result = _finish(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
    assert result["total"] == sum(i * 3 for i in range(N))
    assert result["interrupted"] == 0
    assert not result["unclean"]
    assert not os.path.exists(f"{journal}.lock")  # removed by the run that held it
    assert not os.path.exists(f"{journal}.starts")  # every task finished

    again = _finish(start("free"))  # free again: everything comes from the journal
    assert again["total"] == result["total"]
    assert all(from_journal for _, _, from_journal in again["tasks"].values())
    assert not again["unclean"]


def test_tasks_cut_off_by_a_sigkill_are_counted_as_run_again(job):
    start, lines, done_rows, _gate, journal = job
    first = start("block")
    try:
        wait_until(lambda: len(_blocked(lines)) == 2 and len(done_rows()) == QUICK,
                   timeout=120, message="the first run holds both workers")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the program and every worker of it
        first.communicate(timeout=10)
    cut_off = _blocked(lines)  # started, never finished: both workers' tasks
    assert len(cut_off) == 2
    assert os.path.exists(f"{journal}.lock")  # its pid stays; its lock went with it

    second = start("free")  # the lock of a killed run does not block the next one
    result = _finish(second)
    assert result["total"] == sum(i * 3 for i in range(N))
    assert result["unclean"]
    tasks = result["tasks"]
    runs = lines()
    for i in range(N):
        attempts, interrupted, from_journal = tasks[f"t{i}"]
        if i < QUICK:  # done and journaled before the kill: not run again
            assert (attempts, interrupted, from_journal) == (1, 0, True), i
            assert runs.count(f"s{i}") == 1
            continue
        assert not from_journal
        assert attempts == 1 + interrupted, i  # no retries: one attempt in this run
        if str(i) in cut_off:  # it was running when the program died
            assert interrupted == 1, i
            assert runs.count(f"s{i}") == 2
        else:  # perhaps sent (queued behind the blocked ones), never started
            assert interrupted in (0, 1), i
            assert runs.count(f"s{i}") == 1
    assert tasks["total"] == [1, 0, False]
    assert result["interrupted"] == sum(1 for a, n, _ in tasks.values() if n) >= 2
    assert result["attempts"] == sum(a for a, _, _ in tasks.values())
    rows = done_rows()  # the journal keeps the counts across the interruption
    assert all(rows[f"t{i}"] == tasks[f"t{i}"][0] for i in range(N))
    assert not os.path.exists(f"{journal}.starts")  # every task finished: forgotten

    third = _finish(start("free"))
    assert third["interrupted"] == 0
    assert not third["unclean"]
    assert all(from_journal for _, _, from_journal in third["tasks"].values())
    assert third["tasks"][f"t{min(int(x) for x in cut_off)}"][0] == 2  # from the row


def test_the_lock_is_per_open_journal_also_within_one_process(tmp_path):
    """Two runs of one process (threads, run_async) conflict the same way; closing
    the first frees the journal."""
    path = tmp_path / "run.db"
    first = Journal(path, "digest", 3)
    try:
        with pytest.raises(actorq.GraphError, match=rf"in use .*\(pid {os.getpid()}, "):
            Journal(path, "digest", 3)
    finally:
        first.close()
    assert not os.path.exists(f"{path}.lock")
    Journal(path, "digest", 3).close()


def test_a_starts_file_left_beside_a_deleted_journal_is_not_counted(tmp_path):
    """Deleting run.db after a killed run starts afresh: the old starts do not count."""
    path = tmp_path / "run.db"
    first = Journal(path, "digest", 3)
    first.started(["t0", "t1"])
    first.close()  # not complete: the starts stay
    again = Journal(path, "digest", 3)
    assert again.prior == {"t0": 1, "t1": 1}  # the same journal: counted
    again.close()
    path.unlink()
    fresh = Journal(path, "digest", 3)
    try:
        assert not fresh.prior
        assert not os.path.exists(f"{path}.starts")
    finally:
        fresh.close()

