"""Public benchmark harness: measure users' actors and graphs, and our peer runs.

``measure(fn)`` runs a callable with warm-up and repeats and returns a
:class:`BenchResult` (median, p10-p90 and min-max, every sample);
``measure_interleaved`` runs several side by side; ``compare`` gives the ratio to a
peer measured in the same run; ``write_results`` writes JSON plus a Markdown table.
The peers (``actorq.bench.peers``) do the same work over multiprocessing and
faster_fifo. Nothing here prints: the scripts in ``benchmarks/`` do.

Example::

    from actorq.bench import compare, measure
    ours = measure(lambda: send(10_000), work=10_000, unit="msg/s", name="ours")
    peer = measure(lambda: peer_send(10_000), work=10_000, unit="msg/s", name="peer")
    compare(ours, peer, at_least=5.0).met
"""

from __future__ import annotations

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

__all__ = [
    "BenchResult",
    "Case",
    "Verdict",
    "check",
    "code_version",
    "compare",
    "format_value",
    "machine_info",
    "measure",
    "measure_interleaved",
    "percentile",
    "render_markdown",
    "results_table",
    "verdicts_table",
    "write_atomic",
    "write_results",
]
