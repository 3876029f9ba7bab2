"""Every example runs, as a user would run it; the quickstart's snippets match its example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# The line each example prints once it has checked its own results.
KEY_LINES = {
    "bench_workload.py": "bench_workload: all assertions passed",
    "cpu_demo.py": "check: OK",
    "flow_control.py": "flow control: all assertions passed",
    "graph_blocked_matrix.py": "check: OK",
    "graph_monte_carlo.py": "check: OK",
    "graph_word_count.py": "check: OK",
    "quickstart.py": "quickstart: all assertions passed",
    "recipes.py": "recipes: all assertions passed",
    "supervision.py": "supervision: all assertions passed",
}


def test_every_example_has_a_key_line():
    assert EXAMPLES, "no examples found"
    missing = [p.name for p in EXAMPLES if p.name not in KEY_LINES]
    assert not missing, f"add the line that says each of {missing} succeeded to KEY_LINES"


@pytest.mark.timeout(150)  # above the subprocess's own timeout, so that it reports first
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "ACTORQ_EXAMPLES_QUICK": "1"},  # the job-graph examples: small sizes
    )
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert KEY_LINES.get(path.name, "\0") in proc.stdout, output


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_quickstart_snippets_are_copied_from_the_example():
    doc = (ROOT / "docs" / "quickstart.md").read_text()
    source = (ROOT / "examples" / "quickstart.py").read_text()
    blocks = _python_blocks(doc)
    assert blocks, "docs/quickstart.md has no python code block"
    for block in blocks:
        block = textwrap.dedent(block)
        assert any(textwrap.indent(block, " " * n) in source for n in (0, 4, 8)), (
            f"this docs/quickstart.md snippet is not in examples/quickstart.py:\n{block}")
