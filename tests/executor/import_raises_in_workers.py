"""A module whose import raises in an ``Executor`` worker (a library missing there, say):
the test process imports it freely; a worker, started by the fork server, imports it
when it is sent one of its functions, and the import raises. Import it inside a test,
never at the top of a test module (the workers import test modules too)."""

from __future__ import annotations

import multiprocessing

if multiprocessing.current_process().name.startswith("actorq:FunctionWorker"):
    raise ImportError("this library is not installed in the workers")


def never_runs_either(x):
    return x
