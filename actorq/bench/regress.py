"""``actorq bench --compare BASE.json NEW.json``: each figure's change, with a bootstrap CI.

For every result present in both files (matched by name), the change is the ratio of
the medians ``new / base``; its confidence interval comes from a percentile bootstrap
over the repeats (each side resampled with replacement, independently, ``resamples``
times, seeded: the same files always give the same answer). A figure *got worse* when
both hold:

- beyond the threshold: the ratio is worse than ``1 - threshold`` (rates) or
  ``1 + threshold`` (times), and
- beyond the noise: the whole interval lies on the worse side of 1.

Why a bootstrap and not pyperf's ``compare_to`` (a two-sample t-test on the means):
repeats of a multi-process benchmark are few (3-30) and skewed (a repeat that met a
noisy neighbour is far slower), and the figures are medians; the bootstrap of the
ratio of medians assumes no distribution and speaks in the unit reported. It needs no
dependency (stdlib ``random`` and :func:`actorq.bench.timing.percentile`); with fewer
than :data:`MIN_REPEATS` repeats on a side there is no noise to estimate, and the
figure is shown but never fails the comparison.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actorq._errors import BenchError
from actorq.bench.report import format_value
from actorq.bench.timing import percentile

__all__ = ["MIN_REPEATS", "Change", "changes_table", "compare_files", "compare_runs",
           "load_result_file"]

MIN_REPEATS = 3
SCHEMA_FAMILY = "actorq.bench/"
SUPPORTED = {"actorq.bench/1"}


@dataclass(frozen=True, slots=True)
class Change:
    """One figure in both runs.

    Attributes:
        name: the result's name.
        unit: its unit.
        higher_is_better: the direction of "better".
        base: median in the base run.
        new: median in the new run.
        ratio: ``new / base``.
        low: lower end of the ratio's confidence interval (nan: too few repeats).
        high: upper end.
        verdict: ``"worse"``, ``"better"``, ``"same"`` (within the threshold or the
            noise) or ``"too few repeats"``.
    """

    name: str
    unit: str
    higher_is_better: bool
    base: float
    new: float
    ratio: float
    low: float
    high: float
    verdict: str

    def summary(self) -> dict[str, Any]:
        """JSON-ready (nan → None)."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None
        return {"name": self.name, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "base": num(self.base), "new": num(self.new), "ratio": num(self.ratio),
                "low": num(self.low), "high": num(self.high), "verdict": self.verdict}


def load_result_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a result file written by ``actorq bench``.

    Raises:
        BenchError: missing, unreadable, not JSON, another schema, or results without
            a name and samples (the message names the file and what is wrong).
    """
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"--compare: {where!r} does not exist"
        raise BenchError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"--compare: cannot read {where!r}: {exc}"
        raise BenchError(msg) from exc
    except json.JSONDecodeError as exc:
        msg = f"--compare: {where!r} is not JSON ({exc}); give files written by actorq bench"
        raise BenchError(msg) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        msg = f"--compare: {where!r} has no 'results' list: not a file written by actorq bench"
        raise BenchError(msg)
    schema = doc.get("schema")
    if schema is not None and schema not in SUPPORTED:
        msg = (f"--compare: {where!r} has schema {schema!r}; this actorq reads "
               f"{', '.join(sorted(SUPPORTED))}")
        raise BenchError(msg)
    for i, r in enumerate(doc["results"]):
        if not (isinstance(r, dict) and isinstance(r.get("name"), str)
                and isinstance(r.get("samples"), list)
                and all(s is None or isinstance(s, (int, float)) for s in r["samples"])):
            msg = f"--compare: {where!r}: result {i} has no name or no list of numeric samples"
            raise BenchError(msg)
    return doc


def _samples(result: Mapping[str, Any]) -> list[float]:
    return [float(s) for s in result["samples"] if s is not None and math.isfinite(s)]


def _ratio_ci(base: Sequence[float], new: Sequence[float], confidence: float,
              resamples: int, rng: random.Random) -> tuple[float, float]:
    ratios = []
    for _ in range(resamples):
        b = percentile(rng.choices(base, k=len(base)), 50)
        n = percentile(rng.choices(new, k=len(new)), 50)
        if b != 0:
            ratios.append(n / b)
    tail = (1 - confidence) / 2 * 100
    return percentile(ratios, tail), percentile(ratios, 100 - tail)


def _verdict(ratio: float, low: float, high: float, higher_is_better: bool,
             threshold: float) -> str:
    if not math.isfinite(low):
        return "too few repeats"
    if higher_is_better:
        worse = ratio < 1 - threshold and high < 1
        better = ratio > 1 + threshold and low > 1
    else:
        worse = ratio > 1 + threshold and low > 1
        better = ratio < 1 - threshold and high < 1
    return "worse" if worse else "better" if better else "same"


def compare_runs(base: Mapping[str, Any], new: Mapping[str, Any], *,
                 threshold: float = 0.05, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> list[Change]:
    """Return the change of every result in both documents, in the new run's order.

    Raises:
        BenchError: *threshold* not in [0, 1) or *confidence* not in (0, 1).
    """
    if not 0 <= threshold < 1 or not 0 < confidence < 1:
        msg = f"need 0 <= threshold < 1 and 0 < confidence < 1 ({threshold}, {confidence})"
        raise BenchError(msg)
    rng = random.Random(seed)
    before = {r["name"]: r for r in base["results"]}
    out = []
    for r in new["results"]:
        b = before.get(r["name"])
        if b is None:
            continue
        xs, ys = _samples(b), _samples(r)
        if not xs or not ys:
            continue
        better_up = bool(r.get("higher_is_better", False))
        mb, mn = percentile(xs, 50), percentile(ys, 50)
        ratio = mn / mb if mb else math.nan
        low = high = math.nan
        if len(xs) >= MIN_REPEATS and len(ys) >= MIN_REPEATS and mb:
            low, high = _ratio_ci(xs, ys, confidence, resamples, rng)
        out.append(Change(r["name"], str(r.get("unit", "")), better_up, mb, mn, ratio, low,
                          high, _verdict(ratio, low, high, better_up, threshold)))
    return out


def compare_files(base: str | os.PathLike[str], new: str | os.PathLike[str],
                  **options: Any) -> list[Change]:
    """:func:`compare_runs` on two result files (checked by :func:`load_result_file`).

    Raises:
        BenchError: a malformed file, or the two share no result.
    """
    doc_base, doc_new = load_result_file(base), load_result_file(new)
    changes = compare_runs(doc_base, doc_new, **options)
    if not changes:
        msg = f"--compare: {str(base)!r} and {str(new)!r} have no result in common"
        raise BenchError(msg)
    return changes


def changes_table(changes: Sequence[Change]) -> str:
    """A Markdown table: base, new, change with its interval, verdict."""
    lines = ["| Figure | Base | New | Change | 95% CI of the change | Verdict |",
             "|---|---|---|---|---|---|"]
    for c in changes:
        ci = "-" if not math.isfinite(c.low) else \
            f"{(c.low - 1) * 100:+.1f}% .. {(c.high - 1) * 100:+.1f}%"
        change = f"{(c.ratio - 1) * 100:+.1f}%" if math.isfinite(c.ratio) else "-"
        verdict = "**WORSE**" if c.verdict == "worse" else c.verdict
        lines.append(f"| {c.name} | {format_value(c.base, c.unit)} | "
                     f"{format_value(c.new, c.unit)} | {change} | {ci} | {verdict} |")
    return "\n".join(lines)
