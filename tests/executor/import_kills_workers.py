"""A module whose import ends an ``Executor`` worker (``os._exit``), as a module that
segfaults in a C extension's import, or that the OOM killer always meets, would: the
test process imports it freely. Workers are started by the fork server, which has not
imported it, so each worker that is sent one of its functions imports it and dies.
Import it inside a test, never at the top of a test module: the workers import test
modules too (to rebuild their functions and classes), and would die of it."""

from __future__ import annotations

import multiprocessing
import os

if multiprocessing.current_process().name.startswith("actorq:FunctionWorker"):
    os._exit(7)


def never_runs(x):
    return x
