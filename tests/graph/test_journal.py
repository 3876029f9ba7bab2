"""The journal: skip finished tasks on a re-run, resume after SIGKILL, refuse another graph."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import actorq
from actorq._graph.blobs import blob_name
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
    import numpy as np
    import actorq

    def step(path, i, large):
        time.sleep(0.05)
        with open(path, "a") as f:
            f.write(f"t{i}\\n")
        if large:  # 2 MiB: kept in shared memory, journaled in the blob store
            return np.full(256 * 1024, i * 3, dtype=np.int64)
        return i * 3

    def total(*xs):
        return int(sum(int(np.sum(x)) for x in xs))

    if __name__ == "__main__":
        effects, journal, large = sys.argv[1], sys.argv[2], sys.argv[3] == "large"
        g = actorq.Graph()
        parts = [g.task(step, effects, i, large, key=f"t{i}") for i in range(40)]
        end = g.task(total, *parts, key="total")
        with actorq.ActorSystem() as system:
            before = system.metrics()["system"]
            result = system.run(g, workers=2, journal=journal)
            after = system.metrics()["system"]
            moved = sum(after[k] - before[k] for k in ("oob_bytes_sent", "oob_bytes_received"))
            print("total", result[end], "from_journal", result.stats.from_journal,
                  "moved", moved, "inband", result.stats.inband_bytes, flush=True)
''')

LARGE = 256 * 1024  # elements of one large result


@pytest.mark.parametrize("size", ["small", "large"])
def test_resume_after_sigkill_of_the_whole_program(tmp_path, size):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    effects, journal = tmp_path / "effects", tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(effects), str(journal), size]
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
    want = sum(i * 3 for i in range(40)) * (LARGE if size == "large" else 1)
    assert f"total {want} from_journal {len(done)} moved 0 " in again.stdout
    runs = effects.read_text().split()
    for key in done:  # journaled as done: never run again
        assert runs.count(key) == 1, key
    assert set(runs) == {f"t{i}" for i in range(40)}  # every task ran, at least once
    with closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT kind, length(result) FROM tasks WHERE state = 'done'").fetchall()
    assert len(rows) == 41
    assert max(length for _kind, length in rows) < 1024  # no large result in SQLite
    blobs = sorted(os.listdir(f"{journal}.blobs"))
    if size == "large":  # one file per large result, the orphans of the killed run swept
        assert len(blobs) == 40
        assert all(os.path.getsize(f"{journal}.blobs/{b}") > 2 * 1024 * 1024 for b in blobs)
    else:
        assert blobs == []


def make_array(path, i, mib):
    with open(path, "a") as f:
        f.write(f"x{i}\n")
    return np.random.default_rng(i).random(mib * 1024 * 1024 // 8)


def checksum(a):
    return float(a.sum())


def arrays(effects, n=4, mib=8, sums=True):
    g = actorq.Graph()
    xs = [g.task(make_array, effects, i, mib, key=f"x{i}") for i in range(n)]
    ss = [g.task(checksum, x, key=f"s{i}") for i, x in enumerate(xs)] if sums else []
    return g, xs, ss


def blob_files(journal):
    return sorted(os.listdir(f"{journal}.blobs"))


def test_large_results_go_to_the_blob_store_not_through_the_scheduler(system, tmp_path):
    effects, journal = str(tmp_path / "effects"), str(tmp_path / "run.db")
    g, _xs, ss = arrays(effects)
    before = system.metrics()["system"]
    tracemalloc.start()
    try:
        first = system.run(g, workers=2, journal=journal)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = system.metrics()["system"]
    want = [float(np.random.default_rng(i).random(1024 * 1024).sum()) for i in range(4)]
    assert [first[s] for s in ss] == pytest.approx(want)
    # 32 MiB were journaled, and none of it went through the scheduler's process
    assert sum(after[k] - before[k] for k in ("oob_bytes_sent", "oob_bytes_received")) == 0
    assert peak < 4 * 1024 * 1024
    assert first.stats.inband_bytes < 64 * 1024
    assert len(blob_files(journal)) == 4
    with closing(sqlite3.connect(journal)) as db:
        assert db.execute("SELECT max(length(result)) FROM tasks").fetchone()[0] < 1024

    g2, _xs2, ss2 = arrays(effects)
    second = system.run(g2, workers=2, journal=journal)
    assert [second[s] for s in ss2] == [first[s] for s in ss]
    assert second.stats.from_journal == 8
    assert second.stats.shared_bytes_peak == 0  # the sums are done: no blob was loaded
    assert sorted(Path(effects).read_text().split()) == ["x0", "x1", "x2", "x3"]


def test_a_missing_or_corrupt_blob_runs_its_task_again(system, tmp_path):
    effects, journal = str(tmp_path / "effects"), str(tmp_path / "run.db")
    g, xs, _ = arrays(effects, n=3, mib=1, sums=False)  # sinks: their values are needed
    first = system.run(g, journal=journal)
    with closing(sqlite3.connect(journal)) as db:
        refs = dict(db.execute("SELECT key, result FROM tasks"))
    os.unlink(f"{journal}.blobs/{blob_name(refs['x0'])}")
    corrupt = f"{journal}.blobs/{blob_name(refs['x1'])}"
    with open(corrupt, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))

    g2, xs2, _ = arrays(effects, n=3, mib=1, sums=False)
    second = system.run(g2, journal=journal)
    for a, b in zip(xs, xs2, strict=True):
        np.testing.assert_array_equal(second[b], first[a])
    assert second.stats.extra["journal_blobs_rerun"] == 2
    assert second.stats.from_journal == 1
    assert sorted(Path(effects).read_text().split()) == ["x0", "x0", "x1", "x1", "x2"]
    assert len(blob_files(journal)) == 3  # the bad ones replaced, not accumulated


def test_a_journal_of_the_earlier_format_is_refused_with_the_reason(system, tmp_path):
    journal = tmp_path / "run.db"
    with closing(sqlite3.connect(journal)) as db:
        db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO meta VALUES ('format', 'actorq-journal-1')")
        db.commit()
    g, _ = build(str(tmp_path / "e"), n=2)
    with pytest.raises(actorq.GraphError, match=r"earlier version of actorq.*delete it"):
        system.run(g, journal=str(journal))


BURST = textwrap.dedent('''
    import sys, time
    import actorq

    def tick(path, i):
        time.sleep(0.001)
        with open(path, "a") as f:
            f.write(f"b{i}\\n")
        return i

    def total(*xs):
        return sum(xs)

    if __name__ == "__main__":
        effects, journal, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        g = actorq.Graph()
        parts = [g.task(tick, effects, i, key=f"b{i}") for i in range(n)]
        end = g.task(total, *parts, key="total")
        with actorq.ActorSystem() as system:
            result = system.run(g, workers=2, journal=journal)
            extra = result.stats.extra
            print("total", result[end], "from_journal", result.stats.from_journal,
                  "rows", extra["journal_rows"], "unclean", extra["journal_unclean"],
                  flush=True)
''')


def test_sigkill_during_a_burst_of_commits_loses_only_uncommitted_rows(tmp_path):
    """Tiny tasks finish by the hundred per second, so the writer thread commits while
    the program is killed: every task either comes back from the journal or runs
    again, and none runs more often than that."""
    n = 3000
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    effects, journal = tmp_path / "effects", tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(effects), str(journal), str(n)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: effects.exists() and len(effects.read_text().split()) >= n // 5,
                   timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with closing(sqlite3.connect(journal)) as db:
        done = {k for (k,) in db.execute("SELECT key FROM tasks WHERE state = 'done'")}
        assert db.execute("SELECT v FROM meta WHERE k = 'open'").fetchone() is not None
    before = effects.read_text().split()
    assert 0 < len(done) < n
    assert done <= set(before)  # only what ran was journaled

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # the rows of this run are all committed before it reports them (n - resumed + total)
    assert (f"total {sum(range(n))} from_journal {len(done)} "
            f"rows {n + 1 - len(done)} unclean True") in again.stdout
    runs = effects.read_text().split()
    assert len(runs) - len(before) == n - len(done)  # the second run ran exactly the rest
    counts = {f"b{i}": 0 for i in range(n)}
    for key in runs:
        counts[key] += 1
    for key, count in counts.items():
        # journaled: ran once, before the kill; not journaled: ran now, and perhaps also
        # before the kill (finished, but its row was not committed yet): never more
        assert count == 1 if key in done else 1 <= count <= 2, (key, count)
    lost = sum(1 for key in set(before) - done)  # finished before the kill, re-ran
    assert lost == sum(1 for key, c in counts.items() if c == 2)
    with closing(sqlite3.connect(journal)) as db:
        assert db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0] \
            == n + 1
        assert db.execute("SELECT v FROM meta WHERE k = 'open'").fetchone() is None


def _writers():
    import threading

    return [t for t in threading.enumerate() if t.name == "actorq-graph-journal"]


def _boom(x):
    raise ValueError(f"boom {x}")


def _touch_then_sleep(path, seconds):
    import time

    open(path, "w").close()
    time.sleep(seconds)
    return seconds


def _open_mark(journal):
    with closing(sqlite3.connect(journal)) as db:
        return db.execute("SELECT v FROM meta WHERE k = 'open'").fetchone()


def test_the_writer_thread_ends_with_the_run_also_on_failure_and_cancel(system, tmp_path):
    import asyncio

    journal = str(tmp_path / "run.db")
    g, _end = build(str(tmp_path / "e"), n=30)
    result = system.run(g, journal=journal)
    assert result.stats.extra["journal_rows"] == 31  # all committed before it returned
    assert not result.stats.extra["journal_unclean"]
    assert not _writers()
    assert _open_mark(journal) is None

    failing = actorq.Graph()
    roots = [failing.task(record, str(tmp_path / "f"), i, key=f"f{i}") for i in range(5)]
    failing.task(_boom, roots[0], key="boom")
    out = system.run(failing, journal=str(tmp_path / "fail.db"), fail_fast=True)
    assert not out.ok
    assert not _writers()
    assert _open_mark(str(tmp_path / "fail.db")) is None

    slow = actorq.Graph()
    marker = tmp_path / "started"
    done_first = slow.task(record, str(tmp_path / "s"), 1, key="first")
    held = slow.task(_touch_then_sleep, str(marker), 60, key="held")
    slow.task(total, done_first, held, key="end")
    cancelled = str(tmp_path / "cancel.db")

    async def main():
        g2, _end2 = build(str(tmp_path / "e2"), n=30)
        done = await system.run_async(g2, journal=str(tmp_path / "async.db"))
        assert done.stats.extra["journal_rows"] == 31  # awaited, every row committed
        assert not _writers()
        task = asyncio.ensure_future(system.run_async(slow, workers=2, journal=cancelled))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until(marker.exists, timeout=30))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not _writers()
    assert _open_mark(cancelled) is None
    with closing(sqlite3.connect(cancelled)) as db:  # what finished before was written
        assert {k for (k,) in db.execute("SELECT key FROM tasks")} <= {"first"}


def test_bad_journals_are_refused_before_anything_runs_and_left_alone(system, tmp_path):
    """A directory, another program's SQLite database, a damaged journal and another
    graph's journal: each a clear GraphError before any worker starts or task runs,
    and nothing of ours written into the file (the leak guard checks processes and
    segments)."""
    from actorq._graph.journal import Journal

    marker = tmp_path / "ran"
    g = actorq.Graph()
    g.task(record, str(marker), 1, key="t")
    before = set(system.metrics()["actors"])

    folder = tmp_path / "a-folder"
    folder.mkdir()
    other_app = tmp_path / "app.db"
    with closing(sqlite3.connect(other_app)) as db:
        db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        db.commit()
    damaged = tmp_path / "damaged.db"
    j = Journal(damaged, g.digest(), len(g))
    j.done("t", 1, 1, b"x" * 5000)
    j.close()
    data = bytearray(damaged.read_bytes())
    data[100:] = bytes((i * 7) & 0xFF for i in range(100, len(data)))  # past the header
    damaged.write_bytes(bytes(data))
    foreign = tmp_path / "foreign.db"
    Journal(foreign, "the digest of another graph", 7).close()

    blocked = tmp_path / "blocked.db"
    (tmp_path / "blocked.db.blobs").write_text("a file where the blob folder would go")

    cases = [(folder, "cannot be opened"),
             (blocked, r"its blob folder .*blocked\.db\.blobs' cannot be created"),
             (other_app, r"a SQLite database but not an actorq journal \(its tables: users\)"),
             (damaged, r"not an actorq journal, or it is corrupt \(database disk image"),
             (foreign, r"belongs to a different graph \(7 tasks")]
    for path, message in cases:
        with pytest.raises(actorq.GraphError, match=message):
            system.run(g, journal=str(path))
        assert not _writers(), path
    assert not marker.exists()  # no task ran
    assert set(system.metrics()["actors"]) == before  # no worker was started
    assert not (tmp_path / "app.db.blobs").exists()
    assert not (tmp_path / "a-folder.blobs").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")]  # let go
    with closing(sqlite3.connect(other_app)) as db:  # the other program's file untouched
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        assert names == {"users"}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with closing(sqlite3.connect(foreign)) as db:
        assert db.execute("SELECT v FROM meta WHERE k = 'graph'").fetchone()[0] \
            == "the digest of another graph"
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


FULL_DISK = textwrap.dedent('''
    import resource, signal, sys
    import actorq

    def blob(i):
        return bytes([i % 256]) * 20_000  # small (in SQLite, not the blob store)

    if __name__ == "__main__":
        if sys.argv[2] == "limited":  # files may not grow past 3 MiB: the journal fills up
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, resource.RLIM_INFINITY))
        g = actorq.Graph()
        nodes = [g.task(blob, i) for i in range(400)]
        with actorq.ActorSystem() as system:
            try:
                r = system.run(g, workers=2, journal=sys.argv[1])
            except actorq.GraphError as exc:
                print("GraphError:", exc)
            else:
                ok = all(r[n] == blob(i) for i, n in enumerate(nodes))
                print("ok", ok, "from_journal", r.stats.from_journal)
''')


def test_a_journal_that_cannot_be_written_during_the_run_ends_it_with_an_error(tmp_path):
    script, journal = tmp_path / "full.py", tmp_path / "run.db"
    script.write_text(FULL_DISK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(mode):
        done = subprocess.run([sys.executable, str(script), str(journal), mode], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = run("limited")
    assert f"GraphError: journal {str(journal)!r} could not be written" in out
    with closing(sqlite3.connect(journal)) as db:  # what was committed is intact
        committed = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
    assert committed < 400
    out = run("unlimited")  # resumed: the committed rows are skipped, the rest runs
    assert f"ok True from_journal {committed}" in out
