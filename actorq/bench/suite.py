"""Suites: named benchmarks shipped in the package, their options, report and registry.

A suite is a module (or a package, like ``overload``) in ``actorq/bench/suites/`` that
defines ``SUITE = Suite(...)``; the registry finds every such module, so a new suite
(``pool``, ``graph``) is one new file. :func:`run_suite` validates the request (suite
name, output folder) before anything runs, runs the suite and writes its report::

    run_suite("messaging", quick=True, out="results/")
        -> SUITE.run(SuiteOptions)            the suite measures, interleaving its peers
        -> SuiteReport                        results, ratios, machine, extra sections
        -> write_report(report, out)          <suite>.json, <suite>.md, <suite>*.png
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actorq._errors import BenchError
from actorq.bench.output import SCHEMA, Plot, SuiteReport, write_report

if TYPE_CHECKING:
    from actorq.bench.faults import FaultPlan

__all__ = [
    "SCHEMA",
    "Plot",
    "Suite",
    "SuiteOptions",
    "SuiteReport",
    "check_out_dir",
    "find_suite",
    "run_suite",
    "suites",
]

SUITES_PACKAGE = "actorq.bench.suites"


def _quiet(_text: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SuiteOptions:
    """How to run a suite.

    Attributes:
        quick: the short form (seconds, for CI and a first look).
        repeats: recorded repeats per figure, overriding the suite's own count.
        params: overrides of the suite's named parameters (``--set key=value``).
        faults: the faults to inject (suites that support them), or None.
        progress: called with a line of text at each step (the CLI prints it on
            stderr); None for silence.
    """

    quick: bool = False
    repeats: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    faults: FaultPlan | None = None
    progress: Callable[[str], None] | None = None

    def parameters(self, full: Mapping[str, Any], quick: Mapping[str, Any],
                   repeat_keys: Sequence[str] = ()) -> dict[str, Any]:
        """Return the suite's parameters: full or quick, then ``repeats``, then ``params``.

        Raises:
            BenchError: a key of ``params`` the suite does not have.
        """
        p = dict(quick if self.quick else full)
        if self.repeats is not None:
            p.update(dict.fromkeys(repeat_keys, self.repeats))
        unknown = sorted(set(self.params) - set(p))
        if unknown:
            msg = (f"unknown parameter(s) {', '.join(unknown)}; this suite has: "
                   f"{', '.join(sorted(p))}")
            raise BenchError(msg)
        for key, value in self.params.items():
            p[key] = _like(p[key], value, key)
        return p

    def say(self, text: str) -> None:
        """Report progress (no-op without a ``progress`` callback)."""
        (self.progress or _quiet)(text)


def _like(default: Any, value: Any, key: str) -> Any:
    """Convert *value* (maybe text from the command line) to the type of *default*."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        msg = f"parameter {key}={value!r}: expected a {type(default).__name__}"
        raise BenchError(msg) from None
    if default is None:
        try:
            return float(value) if "." in value else int(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True, slots=True)
class Suite:
    """A named benchmark shipped in the package.

    Attributes:
        name: what ``actorq bench NAME`` runs.
        summary: one line for ``actorq bench --list``.
        run: measures; blocks for the whole run.
        missing: returns why the suite cannot run here (a feature or an optional
            package not present), or None.
        repeat_keys: the parameters ``--repeats`` sets.
        supports_faults: whether ``--faults`` applies.
    """

    name: str
    summary: str
    run: Callable[[SuiteOptions], SuiteReport]
    missing: Callable[[], str | None] = lambda: None
    repeat_keys: tuple[str, ...] = ()
    supports_faults: bool = False


def suites() -> dict[str, Suite]:
    """Return every suite in ``actorq/bench/suites/``, by name, sorted.

    A module there is a suite if it defines ``SUITE``; a module whose import fails is
    left out (its error is raised by :func:`find_suite` when asked for by name).
    """
    package = importlib.import_module(SUITES_PACKAGE)
    found: dict[str, Suite] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{SUITES_PACKAGE}.{info.name}")
        except ImportError:
            continue
        suite = getattr(module, "SUITE", None)
        if isinstance(suite, Suite):
            found[suite.name] = suite
    return dict(sorted(found.items()))


def find_suite(name: str) -> Suite:
    """Return the suite called *name*.

    Raises:
        BenchError: no such suite (the message lists the known ones).
    """
    known = suites()
    if name in known:
        return known[name]
    msg = (f"unknown suite {name!r}; the suites are: {', '.join(known)} (or give a workload "
           "as module:function)")
    raise BenchError(msg)


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Create *out* if needed and check that a file can be written there; return it.

    Raises:
        BenchError: the folder cannot be created or written to.
    """
    path = Path(out)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".actorq-bench-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if created:
            _remove_empty(path)
        msg = f"cannot write the report to {str(path)!r}: {exc.strerror or exc}"
        raise BenchError(msg) from exc
    return path


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def run_suite(name: str, *, quick: bool = False, repeats: int | None = None,
              params: Mapping[str, Any] | None = None, faults: FaultPlan | None = None,
              out: str | os.PathLike[str] | None = None,
              progress: Callable[[str], None] | None = None) -> SuiteReport:
    """Run the suite *name* and return its report; with *out*, also write it there.

    Blocks for the whole run (``quick``: seconds; full: minutes). Everything is checked
    before anything runs.

    Args:
        name: a suite of :func:`suites` (``actorq bench --list``).
        quick: the short form.
        repeats: recorded repeats per figure (default: the suite's).
        params: overrides of the suite's parameters.
        faults: faults to inject (only suites with ``supports_faults``).
        out: a folder for ``<name>.json``, ``<name>.md`` and the plots.
        progress: called with a line of text at each step.

    Returns:
        The :class:`SuiteReport`.

    Raises:
        BenchError: unknown suite, suite not available here, bad parameter,
            *repeats* < 1, faults given to a suite without them, unwritable *out*.
    """
    suite = find_suite(name)
    why = suite.missing()
    if why is not None:
        msg = f"suite {name!r} cannot run here: {why}"
        raise BenchError(msg)
    if repeats is not None and repeats < 1:
        msg = f"repeats must be at least 1, not {repeats!r}"
        raise BenchError(msg)
    if faults is not None and not suite.supports_faults:
        with_faults = [s.name for s in suites().values() if s.supports_faults]
        msg = (f"suite {name!r} does not inject faults; --faults works with: "
               f"{', '.join(with_faults)} and with workloads")
        raise BenchError(msg)
    out_dir = check_out_dir(out) if out is not None else None
    options = SuiteOptions(quick=quick, repeats=repeats, params=dict(params or {}),
                           faults=faults, progress=progress)
    report = _run(suite, options)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _run(suite: Suite, options: SuiteOptions) -> SuiteReport:
    started, load_before = time.monotonic(), os.getloadavg()
    report = suite.run(options)
    report.meta.setdefault("mode", "quick" if options.quick else "full")
    report.meta.setdefault("wall_seconds", round(time.monotonic() - started, 1))
    # other work on the machine skews every figure: a load above 0 before the run means
    # someone else was using the CPUs
    report.meta.setdefault("load_average_before", [round(x, 2) for x in load_before])
    report.meta.setdefault("load_average_after", [round(x, 2) for x in os.getloadavg()])
    report.meta.setdefault("argv", sys.argv[1:])
    return report
