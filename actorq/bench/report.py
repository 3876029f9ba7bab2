"""JSON output plus a readable Markdown table.

``write_results`` writes two files from the same figures: a JSON document for tools
(every sample, every verdict, the machine) and a Markdown page for people. Both are
written atomically (a temporary file, then ``os.replace``), so an interrupted run
never leaves half a report behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from actorq.bench.timing import BenchResult, Verdict

__all__ = [
    "format_value",
    "machine_info",
    "render_markdown",
    "results_table",
    "verdicts_table",
    "write_results",
]

# Versions worth recording next to the figures (a missing package is recorded as None).
PACKAGES = ("actorq", "numpy", "psutil", "uvloop", "cloudpickle", "faster-fifo", "loky",
            "dask", "distributed", "ray", "matplotlib")


def machine_info() -> dict[str, Any]:
    """Return what a figure depends on: CPUs, memory, Python, package versions, date.

    Returns:
        A JSON-ready mapping; ``date`` is the current UTC time in ISO 8601.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "code": _code(),
    }


def _code() -> str:
    """The commit measured when actorq runs from a git checkout, else its version."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        return code_version(root)
    from actorq import __version__

    return f"actorq {__version__} (installed)"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    import importlib.metadata  # here, not at the top: heavy, and only reports need it

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def format_value(value: float, unit: str = "") -> str:
    """Format *value* with about three significant digits (thousands separated).

    Args:
        value: the number; ``nan`` or ``inf`` is shown as ``"-"``.
        unit: appended after a space (``"x"`` is appended directly: ``"5.2x"``).

    Returns:
        The text, e.g. ``"1,234,567 msg/s"``, ``"45.2 µs"``, ``"0.0123 s"``.
    """
    if not math.isfinite(value):
        return "-"
    size = abs(value)
    if size >= 1000:
        text = f"{value:,.0f}"
    elif size >= 100:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1 or size == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}"


def _range(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"{format_value(low)} .. {format_value(high)}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def results_table(results: Sequence[BenchResult]) -> str:
    """Return a Markdown table of *results*: median, p10-p90, min-max, repeats.

    Args:
        results: the rows, in order; a skipped result shows its reason.

    Returns:
        The table, without a trailing newline.
    """
    rows = []
    for r in results:
        if r.skipped is not None:
            rows.append([r.group, r.name, "skipped", "-", "-", r.unit, "0", r.skipped])
            continue
        better = "higher" if r.higher_is_better else "lower"
        rows.append([r.group, r.name, format_value(r.median), _range(r.p10, r.p90),
                     _range(r.min, r.max), r.unit, str(len(r.samples)),
                     "; ".join(filter(None, [f"{better} is better", r.note]))])
    header = ["Group", "Benchmark", "Median", "p10 .. p90", "min .. max", "Unit", "n", "Note"]
    return _table(header, rows)


def _target(v: Verdict) -> str:
    if v.target is None:
        return "-"
    sign = "≥" if v.goal == "at_least" else "≤"
    return f"{sign} {format_value(v.target, v.unit)}"


def verdicts_table(verdicts: Sequence[Verdict]) -> str:
    """Return a Markdown table of *verdicts*: value, spread, target and whether it is met.

    Args:
        verdicts: the rows, in order.

    Returns:
        The table, without a trailing newline.
    """
    met = {True: "yes", False: "**NO**", None: "n/a"}
    rows = [[v.name, format_value(v.value, v.unit), _range(v.low, v.high), _target(v),
             met[v.met], v.detail] for v in verdicts]
    return _table(["Check", "Value", "Spread", "Target", "Met", "Detail"], rows)


def render_markdown(results: Sequence[BenchResult], verdicts: Sequence[Verdict] = (),
                    machine: Mapping[str, Any] | None = None, *,
                    title: str = "actorq benchmarks", meta: Mapping[str, Any] | None = None,
                    ) -> str:
    """Return the Markdown page: title, machine, verdicts, then every result.

    Args:
        results: benchmark results.
        verdicts: ratios and limits (section left out when empty).
        machine: as from :func:`machine_info` (section left out when None).
        title: the page's heading.
        meta: run parameters (mode, message counts, ...), listed under the machine.

    Returns:
        The page, ending with a newline.
    """
    parts = [f"# {title}", ""]
    if machine is not None:
        parts += ["## Machine", "", *_bullets(machine), ""]
    if meta:
        parts += ["## Run", "", *_bullets(meta), ""]
    if verdicts:
        parts += ["## Targets", "", verdicts_table(verdicts), ""]
    parts += ["## Results", "", results_table(results), ""]
    return "\n".join(parts)


def _bullets(items: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in items.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"- {key}: {inner}")
        else:
            lines.append(f"- {key}: {value}")
    return lines


def write_results(results: Sequence[BenchResult], path_json: str | os.PathLike[str],
                  path_md: str | os.PathLike[str], *, verdicts: Sequence[Verdict] = (),
                  machine: Mapping[str, Any] | None = None, title: str = "actorq benchmarks",
                  meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write *results* as JSON to *path_json* and as a Markdown page to *path_md*.

    Parent folders are created. Each file is replaced atomically.

    Args:
        results: benchmark results (every sample goes to the JSON).
        path_json: where the JSON document goes.
        path_md: where the Markdown page goes.
        verdicts: ratios and limits to report.
        machine: machine description (default: :func:`machine_info` now).
        title: heading of the page and ``title`` of the document.
        meta: run parameters, recorded in both files.

    Returns:
        The JSON document that was written.

    Raises:
        OSError: a file could not be written.
    """
    machine = dict(machine) if machine is not None else machine_info()
    doc = {
        "title": title,
        "machine": machine,
        "meta": dict(meta or {}),
        "verdicts": [v.summary() for v in verdicts],
        "results": [r.summary() for r in results],
    }
    write_atomic(Path(path_json), json.dumps(doc, indent=2, ensure_ascii=False,
                                              allow_nan=False) + "\n")
    write_atomic(Path(path_md), render_markdown(results, verdicts, machine, title=title,
                                                 meta=meta))
    return doc


def write_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* through a temporary file, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def code_version(repo: Path) -> str:
    """The commit of *repo* measured, and whether actorq/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "actorq"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = len(dirty.stdout.splitlines())
    suffix = f" + {changed} uncommitted change(s) under actorq/" if changed else ""
    return head.stdout.strip() + suffix
