"""Run ids, the run-scoped shared-memory name prefix, and call tokens.

Segment names look like ``aq_<pid>_<start>_<run>_<rest>``: the pid and start time of the
process that owns the run, so that a sweep can tell a dead run's leftovers (owner gone, or
pid reused by a process with another start time) from a live one's.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets

import psutil

SEGMENT_PREFIX = "aq_"
# A test harness exports a tag here (lowercase letters and digits): every run started by
# a process that inherits it has it in its segment names (``aq_<pid>_<start>_<tag>x...``),
# so the harness can tell its own subprocesses' segments from other programs'.
RUN_TAG_ENV = "ACTORQ_RUN_TAG"


def process_stamp(pid: int) -> str | None:
    """Return ``<pid>_<start time in centiseconds, hex>`` of a live process, or None."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return f"{pid}_{int(created * 100):x}"


def new_run_prefix() -> str:
    """Return a fresh run-scoped prefix for segments owned by this process."""
    stamp = process_stamp(os.getpid())
    assert stamp is not None
    tag = os.environ.get(RUN_TAG_ENV, "")
    if not re.fullmatch(r"[0-9a-z]{1,16}", tag):
        tag = ""
    return f"{SEGMENT_PREFIX}{stamp}_{tag}{'x' if tag else ''}{secrets.token_hex(3)}_"


# next_token() returns a token unique within this process (calls are keyed by (process,
# token)): the counter's own __next__, called once per call without a Python frame.
next_token = itertools.count(1).__next__
