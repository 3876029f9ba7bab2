"""Public benchmark harness: measure users' actors and graphs, and our peer runs.

- ``run_suite(name)`` runs a suite shipped in the package (``suites()``: messaging,
  restart, overload, faults) and returns a :class:`SuiteReport`; ``write_report``
  writes its JSON (schema ``actorq.bench/1``), Markdown and plots.
- ``run_workload("mypkg.mod:fn", ...)`` measures your own workload (a function taking
  an ``ActorSystem`` and returning the work done, or a class with ``setup``/``run``/
  ``teardown``) side by side with peers, in a child process bounded by a timeout.
- ``measure(fn)`` runs a callable in this process with warm-up and repeats and
  returns a :class:`BenchResult` (median, p10-p90 and min-max, every sample);
  ``measure_interleaved`` runs several side by side; ``compare`` gives the ratio to a
  peer measured in the same run.
- ``compare_files(base, new)`` tells, per figure, whether a run got worse beyond a
  threshold and beyond the noise (bootstrap CI); ``FaultPlan`` parses ``--faults``.

The command line is ``actorq bench`` (``actorq.bench.command``); nothing else here
prints.

Example::

    from actorq.bench import compare, measure
    ours = measure(lambda: send(10_000), work=10_000, unit="msg/s", name="ours")
    peer = measure(lambda: peer_send(10_000), work=10_000, unit="msg/s", name="peer")
    compare(ours, peer, at_least=5.0).met
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actorq._errors import BenchError
    from actorq.bench.faults import FaultPlan
    from actorq.bench.output import SuiteReport, write_report
    from actorq.bench.regress import Change, compare_files, compare_runs
    from actorq.bench.report import (
        code_version,
        format_value,
        machine_info,
        render_markdown,
        results_table,
        verdicts_table,
        write_atomic,
        write_results,
    )
    from actorq.bench.suite import Suite, SuiteOptions, run_suite, suites
    from actorq.bench.timing import (
        BenchResult,
        Case,
        Verdict,
        check,
        compare,
        measure,
        measure_interleaved,
        percentile,
    )
    from actorq.bench.workload import run_workload

# Imported on first use (PEP 562): a suite's actor classes may be unpickled in actor
# processes, and what this package imports would be paid for in each (memory, and the
# time of a restart). ``from actorq.bench import measure`` works as usual.
_HOME = {
    "BenchError": "actorq._errors", "FaultPlan": "actorq.bench.faults",
    "write_report": "actorq.bench.output", "SuiteReport": "actorq.bench.output",
    "Change": "actorq.bench.regress",
    "compare_files": "actorq.bench.regress", "compare_runs": "actorq.bench.regress",
    "run_workload": "actorq.bench.workload",
    **dict.fromkeys(("code_version", "format_value", "machine_info", "render_markdown",
                     "results_table", "verdicts_table", "write_atomic", "write_results"),
                    "actorq.bench.report"),
    **dict.fromkeys(("Suite", "SuiteOptions", "run_suite", "suites"),
                    "actorq.bench.suite"),
    **dict.fromkeys(("BenchResult", "Case", "Verdict", "check", "compare", "measure",
                     "measure_interleaved", "percentile"), "actorq.bench.timing"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        msg = f"module 'actorq.bench' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BenchError",
    "BenchResult",
    "Case",
    "Change",
    "FaultPlan",
    "Suite",
    "SuiteOptions",
    "SuiteReport",
    "Verdict",
    "check",
    "code_version",
    "compare",
    "compare_files",
    "compare_runs",
    "format_value",
    "machine_info",
    "measure",
    "measure_interleaved",
    "percentile",
    "render_markdown",
    "results_table",
    "run_suite",
    "run_workload",
    "suites",
    "verdicts_table",
    "write_atomic",
    "write_report",
    "write_results",
]
