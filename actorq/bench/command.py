"""``actorq bench``: run suites or your own workloads, compare two runs.

    actorq bench --list
    actorq bench [SUITE ...] [--quick] [--repeats N] [--set KEY=VALUE] [--faults PLAN]
    actorq bench mypkg.mod:workload [mypkg.mod:peer ...] [--repeats N] [--warmup N]
                 [--timeout S] [--faults PLAN]
    actorq bench --compare BASE.json NEW.json [--threshold 0.05]

Reports go to ``--out`` (default: the current directory, never the installed package):
``<suite>.json``, ``<suite>.md`` and the plots. Exit status: 0, 1 when ``--compare``
found a figure worse beyond the threshold and the noise, 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actorq._errors import BenchError

__all__ = ["EXIT_BAD_INPUT", "EXIT_REGRESSION", "main", "script_main"]

EXIT_REGRESSION = 1
EXIT_BAD_INPUT = 2
DEFAULT_SUITE = "messaging"


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def parser(prog: str = "actorq bench") -> argparse.ArgumentParser:
    """The argument parser of ``actorq bench``."""
    p = argparse.ArgumentParser(
        prog=prog, description="Run actorq's benchmark suites, or measure your own "
        "workload (module:function) side by side with peers; compare two runs.",
        epilog="See docs/benchmarks.md for the JSON schema, fault plans and CI use.")
    p.add_argument("targets", nargs="*", metavar="SUITE|module:workload",
                   help=f"suites (default: {DEFAULT_SUITE}), or workloads: the first is "
                   "measured, the others are peers it is compared with")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--quick", action="store_true", help="the short form (seconds)")
    p.add_argument("--repeats", type=int, help="recorded repeats per figure")
    p.add_argument("--warmup", type=int, default=1, help="workloads: unrecorded runs first")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="workloads: seconds a set-up or a repeat may take (default 300)")
    p.add_argument("--out", "--results-dir", type=Path, default=Path(),
                   help="folder for <suite>.json/.md/.png (default: the current directory)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite parameter (see the JSON's meta.parameters)")
    p.add_argument("--faults", metavar="PLAN",
                   help="inject faults, e.g. kill@1.5,stop@3+0.5,raise@4,oom@5 or kill~0.5")
    p.add_argument("--compare", nargs=2, metavar=("BASE.json", "NEW.json"),
                   help="compare two result files; exit 1 on a regression")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="--compare: smallest change that counts (default 0.05 = 5%%)")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "actorq bench") -> int:
    """Run ``actorq bench`` with *argv*; return the exit status."""
    args = parser(prog).parse_args(argv)
    try:
        return _dispatch(args)
    except BenchError as exc:
        _err(f"{prog}: error: {exc}")
        return EXIT_BAD_INPUT


def _dispatch(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if args.compare:
        return _compare(args.compare, args.threshold)
    targets = args.targets or [DEFAULT_SUITE]
    workloads = [t for t in targets if ":" in t]
    if workloads and len(workloads) != len(targets):
        msg = "give suites or workloads (module:function), not both"
        raise BenchError(msg)
    from actorq.bench.faults import FaultPlan
    from actorq.bench.suite import check_out_dir, find_suite

    faults = FaultPlan.parse(args.faults) if args.faults else None
    params = _params(args.params)
    if workloads:
        if params:
            msg = "--set applies to suites, not to workloads"
            raise BenchError(msg)
        out = check_out_dir(args.out)
        return _workloads(workloads, args, faults, out)
    for name in targets:  # every name is checked before the first suite runs
        find_suite(name)
    out = check_out_dir(args.out)
    for name in targets:
        _suite(name, args, params, faults, out)
    return 0


def _params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--set {item!r}: write KEY=VALUE"
            raise BenchError(msg)
        params[key.strip()] = value.strip()
    return params


def _progress() -> Any:
    started = time.monotonic()

    def say(text: str) -> None:
        _err(f"[{time.monotonic() - started:7.1f} s] {text}")
    return say


def _list() -> int:
    from actorq.bench.suite import suites

    for suite in suites().values():
        why = suite.missing()
        state = f" (not available here: {why})" if why else ""
        faults = " [--faults]" if suite.supports_faults else ""
        _out(f"{suite.name:<11} {suite.summary}{faults}{state}")
    _out("module:fn  your own workload: a function taking an ActorSystem and returning the "
         "work done, or a class with setup/run/teardown [--faults kill,stop]")
    return 0


def _suite(name: str, args: argparse.Namespace, params: dict[str, str], faults: Any,
           out: Path) -> None:
    from actorq.bench.output import terminal_text, write_report
    from actorq.bench.suite import run_suite

    report = run_suite(name, quick=args.quick, repeats=args.repeats, params=params,
                       faults=faults, progress=_progress())
    paths = write_report(report, out)
    _out(terminal_text(report))
    _out(f"\nwrote {', '.join(str(p) for p in paths)}")


def _workloads(specs: list[str], args: argparse.Namespace, faults: Any, out: Path) -> int:
    from actorq.bench.output import terminal_text, write_report
    from actorq.bench.workload import run_workload

    report = run_workload(*specs, repeats=args.repeats or 5, warmup=args.warmup,
                          timeout=args.timeout, faults=faults, progress=_progress())
    paths = write_report(report, out)
    _out(terminal_text(report))
    _out(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


def _compare(files: Sequence[str], threshold: float) -> int:
    from actorq.bench.regress import changes_table, compare_files

    changes = compare_files(files[0], files[1], threshold=threshold)
    _out(changes_table(changes))
    worse = [c.name for c in changes if c.verdict == "worse"]
    if worse:
        _out(f"\n{len(worse)} figure(s) got worse beyond {threshold:.0%} and beyond the "
             f"noise: {', '.join(worse)}")
        return EXIT_REGRESSION
    _out(f"\nno figure got worse beyond {threshold:.0%} and beyond the noise")
    return 0


def script_main(suite: str, results: Path) -> int:
    """Entry point of ``benchmarks/bench_<x>.py``: the suite, written to *results*.

    The scripts' historic ``--results-dir`` is a synonym of ``--out``.
    """
    argv = sys.argv[1:]
    if not any(a.split("=")[0] in ("--out", "--results-dir") for a in argv):
        argv += ["--out", os.fspath(results)]
    return main([suite, *argv], prog=os.path.basename(sys.argv[0]))
