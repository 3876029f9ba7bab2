"""Helpers shared by the executor tests, in a module of their own so that a worker process
can import them by reference (``tests.executor.helpers.run_counted``): the tests folder
is not a package, but its modules are importable under their dotted path with the
worktree on ``sys.path`` (pytest's ``--import-mode=importlib`` names test modules so, and
the workers resolve the functions they are sent the same way).

Runs are counted by their side effects: one line ``<task> <pid>`` appended to a file
per run (``O_APPEND``: whole lines, from any number of processes).
"""

from __future__ import annotations

import os
import time
from collections import Counter


def record_run(i, runs):
    """Append the run of task *i* (and the process that ran it) to the file *runs*."""
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def run_counted(i, runs, value=None):
    """Task *i*: one line in *runs* per run; returns *value* (or *i*)."""
    record_run(i, runs)
    return i if value is None else value


def run_counts(runs):
    """How many times each task ran (a ``Counter``: task -> runs)."""
    with open(runs) as f:
        return Counter(int(line.split()[0]) for line in f)


def run_pids(runs):
    """The processes that ran the tasks recorded in *runs*."""
    with open(runs) as f:
        return {int(line.split()[1]) for line in f}


def wait_for_file(path, limit=60.0):
    """Wait until the test creates *path* (bounded: ``TimeoutError`` after *limit* s);
    return this process's pid."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.002)
    return os.getpid()


def queue_behind_blockers(ex, gate, submit):
    """Four blockers take the four message slots of a 2-worker executor (two per
    worker), so what *submit* submits queues and goes out in batches once the gate
    opens. Returns the blockers' futures and what *submit* returned."""
    blockers = [ex.submit(wait_for_file, gate) for _ in range(4)]
    futures = submit()
    open(gate, "w").close()
    return blockers, futures
