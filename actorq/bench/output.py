"""A suite's report on the terminal and on disk: JSON, Markdown and PNG plots.

    <out>/<suite>.json     the document (schema ``actorq.bench/1``), every sample
    <out>/<suite>.md       the same figures for people, with the plots linked
    <out>/<suite>*.png     the plots (matplotlib, the ``plot`` extra; skipped with a note)

Files are written atomically (a temporary file, then ``os.replace``): an interrupted
run leaves the previous report, never half of one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actorq.bench.report import (
    machine_info,
    render_markdown,
    results_table,
    verdicts_table,
    write_atomic,
)

if TYPE_CHECKING:
    from actorq.bench.timing import BenchResult, Verdict

__all__ = ["SCHEMA", "Plot", "SuiteReport", "matplotlib_missing", "terminal_text",
           "write_report"]

logger = logging.getLogger(__name__)

# The version of the JSON document (docs/benchmarks.md, "The JSON schema"). Bump the
# number when a field changes meaning or goes away; adding a field keeps it.
SCHEMA = "actorq.bench/1"


@dataclass(frozen=True, slots=True)
class Plot:
    """A PNG a report draws: *draw(path)* writes it (matplotlib imported inside)."""

    filename: str
    caption: str
    draw: Callable[[Path], None]


@dataclass(slots=True)
class SuiteReport:
    """What a suite measured: results, ratios to its peers, and how it ran.

    Attributes:
        suite: the suite's name (``"messaging"``, ``"workload"``, ...).
        title: the report's heading.
        results: every figure, with every sample.
        verdicts: ratios to a peer of the same run, and limits.
        meta: run parameters (mode, parameters, wall time, load before and after).
        extra: suite-specific JSON-ready data (time series, bookkeeping, faults).
        sections: Markdown sections shown before the results table.
        plots: the PNGs the report can draw.
        machine: the machine description (:func:`machine_info`).
    """

    suite: str
    title: str
    results: list[BenchResult]
    verdicts: list[Verdict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document (schema :data:`SCHEMA`, docs/benchmarks.md)."""
        return {"schema": SCHEMA, "suite": self.suite, "title": self.title,
                "machine": self.machine, "meta": self.meta,
                "verdicts": [v.summary() for v in self.verdicts],
                "results": [r.summary() for r in self.results], **self.extra}


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn here, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install 'actorq[plot]'): no plots drawn"
    return None


def terminal_text(report: SuiteReport) -> str:
    """Return the report as the terminal shows it: ratios first, then every figure."""
    parts = [report.title, ""]
    if report.verdicts:
        parts += ["Ratios to peers of the same run, and limits:", "",
                  verdicts_table(report.verdicts), ""]
    parts += [*report.sections, results_table(report.results), ""]
    machine = report.machine
    parts.append(f"machine: {machine.get('cpus_usable')} of {machine.get('cpu_count')} CPUs "
                 f"({machine.get('cpu_model')}), load {report.meta.get('load_average_before')}"
                 f" before, Python {machine.get('python')}, {machine.get('code')}")
    return "\n".join(parts)


def write_report(report: SuiteReport, out: str | os.PathLike[str]) -> list[Path]:
    """Write *report* into the folder *out*; return the paths written.

    The plots are drawn first, so that the JSON and Markdown can say which were drawn
    (``meta.plots``) or why not.

    Raises:
        OSError: a file could not be written.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    drawn: list[str] = []
    why_not = matplotlib_missing() if report.plots else None
    if why_not is None:
        for plot in report.plots:
            path = folder / plot.filename
            plot.draw(path)
            written.append(path)
            drawn.append(plot.filename)
    report.meta["plots"] = drawn if why_not is None else why_not
    base = folder / report.suite
    doc = report.to_json()
    write_atomic(base.with_suffix(".json"), json.dumps(doc, indent=2, ensure_ascii=False,
                                                       allow_nan=False) + "\n")
    write_atomic(base.with_suffix(".md"), markdown(report, drawn))
    return [base.with_suffix(".json"), base.with_suffix(".md"), *written]


def markdown(report: SuiteReport, drawn: list[str]) -> str:
    """Return the Markdown page: machine, run, ratios, suite sections, plots, results."""
    page = render_markdown(report.results, report.verdicts, report.machine,
                           title=report.title, meta=report.meta)
    captions = {p.filename: p.caption for p in report.plots}
    extra = [*report.sections]
    extra += [f"![{captions[name]}]({name})\n" for name in drawn]
    if not extra:
        return page
    return page.replace("## Results\n", "\n".join(extra) + "\n## Results\n", 1)
