"""The ``actorq`` command: run the demo or the benchmarks, list and sweep shared memory.

    actorq demo [--limit N --actors K ...]   run examples/cpu_demo.py (options go to it)
    actorq bench [SUITE | module:fn] [...]   run a benchmark suite or your own workload
                                             (actorq.bench.command; --list, --compare)
    actorq segments                          list actorq's segments in /dev/shm, live or stale
    actorq sweep                             unlink the segments of runs whose owner is gone

Also ``python -m actorq ...``. The demo lives in the source repository (``examples/``),
not in the installed package: from a checkout (an editable install) it is found beside
the package; otherwise the command says where to get it. The benchmark suites ship in
the package (``actorq.bench.suites``), so ``actorq bench`` works from any directory.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from actorq._ids import SEGMENT_PREFIX, process_stamp
from actorq._transport.shm import SHM_DIR, list_segments, sweep

# Segment names are ``aq_<owner pid>_<owner start time, hex>_<run>_<rest>`` (actorq._ids).
_OWNER = re.compile(rf"^{SEGMENT_PREFIX}(\d+)_([0-9a-f]+)_")

EXIT_MISSING = 2


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def repo_root() -> Path:
    """Return the directory above the ``actorq`` package (a checkout's root, when editable)."""
    return Path(__file__).resolve().parent.parent


def run_script(relative: str, argv: Sequence[str]) -> int:
    """Run *relative* (a path under the repository root) as ``__main__``; return its exit code."""
    path = repo_root() / relative
    if not path.is_file():
        _out(f"{relative} not found (looked for {path}): the examples and benchmarks are part "
             "of the actorq source repository, not of the installed package; run this from "
             f"a checkout installed with 'pip install -e .', or there: python {relative}")
        return EXIT_MISSING
    # As `python <path>` would: argv[0] is the script, its folder comes first on sys.path.
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc.code)
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _out(str(code))  # sys.exit("message") prints the message and exits with 1
    return 1


def owner_state(name: str) -> tuple[int | None, str]:
    """Return (owner pid, ``"live"`` | ``"stale"`` | ``"unknown"``) for a segment *name*.

    ``stale`` means what :func:`actorq._transport.shm.sweep` removes: the owner process is
    gone, or its pid now belongs to a process with another start time.
    """
    match = _OWNER.match(name)
    if match is None:
        return None, "unknown"
    pid, start = int(match.group(1)), match.group(2)
    alive = process_stamp(pid) == f"{pid}_{start}"
    return pid, "live" if alive else "stale"


def _size(name: str) -> int | None:
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_size
    except OSError:
        return None


def cmd_segments(_args: argparse.Namespace) -> int:
    """List actorq's segments in /dev/shm with their size, owner pid and state."""
    names = list_segments(SEGMENT_PREFIX)
    if not names:
        _out(f"no actorq segments in {SHM_DIR}")
        return 0
    counts = {"live": 0, "stale": 0, "unknown": 0}
    _out(f"{'state':<8} {'owner':>8} {'bytes':>10}  name")
    for name in names:
        pid, state = owner_state(name)
        size = _size(name)
        counts[state] += 1
        _out(f"{state:<8} {pid if pid is not None else '-':>8} "
             f"{size if size is not None else '-':>10}  {name}")
    summary = f"{len(names)} segment(s): {counts['live']} live, {counts['stale']} stale"
    if counts["unknown"]:
        summary += f", {counts['unknown']} with a name actorq did not make"
    if counts["stale"]:
        summary += " (remove the stale ones with: actorq sweep)"
    _out(summary)
    return 0


def cmd_sweep(_args: argparse.Namespace) -> int:
    """Unlink the segments of runs whose owner process is gone; print what was removed."""
    removed = sweep()
    for name in removed:
        _out(f"removed {name}")
    if removed:
        _out(f"swept {len(removed)} segment(s) left by dead runs")
    else:
        _out("nothing to sweep: no segments of dead runs")
    return 0


def _parser() -> argparse.ArgumentParser:
    from actorq import __version__

    parser = argparse.ArgumentParser(
        prog="actorq", description="actorq: actors in their own processes, talking through "
        "shared-memory mailboxes.")
    parser.add_argument("--version", action="version", version=f"actorq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # demo and bench pass every option on to their script (so `actorq demo --help` is
    # the demo's own help): hence add_help=False and parse_known_args below.
    sub.add_parser("demo", add_help=False,
                   help="run the CPU demo, examples/cpu_demo.py (options go to it)")
    sub.add_parser("bench", add_help=False,
                   help="run a benchmark suite or your own workload; compare runs "
                   "(actorq bench --help)")
    sub.add_parser("segments", help=f"list actorq's shared-memory segments in {SHM_DIR}")
    sub.add_parser("sweep", help="unlink the segments of runs whose owner process is gone")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``actorq`` command with *argv* (default: ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return run_script("examples/cpu_demo.py", rest)
    if args.command == "bench":
        from actorq.bench.command import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "segments":
        return cmd_segments(args)
    return cmd_sweep(args)
