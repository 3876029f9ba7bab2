"""The fork server's preload, and the guard against a main module without
``if __name__ == "__main__":`` (``actorq._process.spawn`` explains why the fork server
imports the user's main module once).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.spawn
import os
import sys

from actorq._process import deathsig, spawn


def exit_if_importing_main() -> None:
    """Called by ``ActorSystem()``. In an actor process that is importing the user's main
    module again (spawn does, before the actor boots; forkserver once, in the fork
    server itself, to preload it: by path, or by name under ``python -m``), a system
    created at import time means the module has no ``if __name__ == "__main__":``
    guard: exit at once, quietly, with ``EXIT_MAIN_UNGUARDED``. The system says it once,
    in the user's process (a traceback from every child, and restarts of a failure that
    repeats, only hid it)."""
    proc = multiprocessing.current_process()
    if getattr(proc, "_inheriting", False) and (
            proc.name.startswith("actorq:") or proc.name == "MainProcess"):
        # "MainProcess": the fork server, importing the main module to preload it
        # (actorq._process.spawn); the system reads its exit status
        os._exit(spawn.EXIT_MAIN_UNGUARDED)


def preload_main() -> None:
    """In the fork server, at its preload: import the user's main module once, as
    ``__mp_main__``, by name or by path as each child would (``spawn.main_to_preload``),
    so that the processes it forks find it imported (``actorq._process.spawn``). A main
    that fails to import here is left to each child, as before."""
    given = os.environ.pop(spawn.PRELOAD_MAIN_ENV, None)
    if not given:
        return
    main, argv = json.loads(given)
    proc = multiprocessing.current_process()
    proc._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing's preload
    try:
        # each child gets the user's argv too; then the import multiprocessing's
        # prepare does in a child (which finds it done: the same name, or path)
        multiprocessing.spawn.prepare({"sys_argv": argv, **main})
    except BaseException:  # each child imports it again, and says why
        pass
    finally:
        del proc._inheriting  # type: ignore[attr-defined]


def adopt_parent_path() -> bool:
    """In the fork server, at its preload: take the user's process's ``sys.path``, and put
    back the variables it was started with (``actorq._process.spawn``); warn if actorq
    came from elsewhere than the user's (``python -E`` ignores the variables). Watch
    the process that started it: the fork server exits when it dies
    (``deathsig.serve_owner``). False, and nothing done but the variables put back, in
    a process forked from a fork server that did not read them."""
    given = os.environ.pop(spawn.PARENT_PATH_ENV, None)
    if not given:
        return False
    data = json.loads(given)
    for name, value in data["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if data["owner"] != os.getppid():
        # not the fork server: a process it forked, which inherited the variables
        # because the fork server never imported actorq to read them (under python -E
        # it ignores the PYTHONPATH that finds it); multiprocessing prepares this one
        os.environ.pop(spawn.PRELOAD_MAIN_ENV, None)
        return False
    deathsig.serve_owner(data["owner"])
    sys.path[:] = data["sys_path"]
    here = spawn.actorq_root()
    if os.path.realpath(here) != os.path.realpath(data["root"]):
        # (nobody configured logging in the fork server: straight to stderr)
        sys.stderr.write(f"actorq: the fork server imported actorq from {here}, the "
                         f"program from {data['root']}: actors run the fork server's copy\n")
    return True
