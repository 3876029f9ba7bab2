"""The journal: skip finished tasks on a re-run, resume after SIGKILL, refuse another graph."""

from __future__ import annotations

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
from actorq.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]


def record(path, i):
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i * i


def total(*xs):
    return sum(xs)


def build(side_effects, n=20):
    g = actorq.Graph()
    parts = [g.task(record, side_effects, i, key=f"t{i}") for i in range(n)]
    return g, g.task(total, *parts, key="total")


def test_rerun_skips_finished_tasks_and_returns_their_results(system, tmp_path):
    effects = str(tmp_path / "effects")
    journal = str(tmp_path / "run.db")
    g, end = build(effects)
    first = system.run(g, journal=journal)
    assert first[end] == sum(i * i for i in range(20))
    g2, end2 = build(effects)
    second = system.run(g2, journal=journal)
    assert second[end2] == first[end]
    assert second.stats.from_journal == len(g2)
    assert second.stats.tasks[end2].from_journal
    assert second.stats.attempts == first.stats.attempts  # nothing was attempted again
    assert second.stats.batches == 0
    assert len(Path(effects).read_text().split()) == 20  # nothing ran twice


def test_failed_tasks_run_again_on_the_next_run(system, tmp_path):
    journal = str(tmp_path / "run.db")
    flag = tmp_path / "ok"

    def build_it():
        g = actorq.Graph()
        return g, g.task(_needs_flag, str(flag), key="needs-flag")

    g, n = build_it()
    assert not system.run(g, journal=journal).ok
    flag.write_text("go")
    g, n = build_it()
    assert system.run(g, journal=journal)[n] == "go"


def _needs_flag(path):
    with open(path) as f:
        return f.read()


def test_journal_of_another_graph_is_refused(system, tmp_path):
    journal = str(tmp_path / "run.db")
    g, _ = build(str(tmp_path / "e"), n=3)
    system.run(g, journal=journal)
    other, _ = build(str(tmp_path / "e"), n=4)
    with pytest.raises(actorq.GraphError,
                       match=r"belongs to a different graph .*4 tasks.*this graph has 5.*delete"):
        system.run(other, journal=journal)


SCRIPT = textwrap.dedent('''
    import sys, time
    import actorq

    def step(path, i):
        time.sleep(0.05)
        with open(path, "a") as f:
            f.write(f"t{i}\\n")
        return i * 3

    def total(*xs):
        return sum(xs)

    if __name__ == "__main__":
        effects, journal = sys.argv[1], sys.argv[2]
        g = actorq.Graph()
        parts = [g.task(step, effects, i, key=f"t{i}") for i in range(40)]
        end = g.task(total, *parts, key="total")
        with actorq.ActorSystem() as system:
            result = system.run(g, workers=2, journal=journal)
            print("total", result[end], "from_journal", result.stats.from_journal, flush=True)
''')


def test_resume_after_sigkill_of_the_whole_program(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    effects, journal = tmp_path / "effects", tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(effects), str(journal)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: effects.exists() and len(effects.read_text().split()) >= 12,
                   timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the program and every worker of it
        proc.wait(10)
    with closing(sqlite3.connect(journal)) as db:
        done = {k for (k,) in db.execute("SELECT key FROM tasks WHERE state = 'done'")}
    ran_before = effects.read_text().split()
    assert 0 < len(done) < 40
    assert done <= set(ran_before)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"total {sum(i * 3 for i in range(40))}" in again.stdout
    assert f"from_journal {len(done)}" in again.stdout
    runs = effects.read_text().split()
    for key in done:  # journaled as done: never run again
        assert runs.count(key) == 1, key
    assert set(runs) == {f"t{i}" for i in range(40)}  # every task ran, at least once
