"""A live progress line on stderr: done / running / failed / retrying, rate and ETA.

Plain text redrawn in place with ``\\r`` at most ``REFRESH`` times a second (no extra
dependency); on by default only when stderr is a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH = 0.1  # seconds between redraws: smooth enough, and costs nothing per task
WIDTH = 24


def want_progress(progress: bool | None, stream: TextIO | None = None) -> bool:
    """``progress=None`` means: on when the stream (stderr) is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Draws the progress line of one run."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def update(self, done: int, running: int, failed: int, retrying: int, *,
               force: bool = False) -> None:
        """Redraw if ``REFRESH`` has passed (or *force*)."""
        now = time.monotonic()
        if not force and now - self._last < REFRESH:
            return
        self._last = now
        self.stream.write("\r" + self.line(done, running, failed, retrying, now))
        self.stream.flush()

    def line(self, done: int, running: int, failed: int, retrying: int, now: float) -> str:
        """The text of the line (also what tests read)."""
        total = max(self.total, 1)
        finished = done + failed
        filled = int(WIDTH * finished / total)
        elapsed = max(now - self.start, 1e-9)
        rate = finished / elapsed
        eta = (self.total - finished) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:5.1f}s" if eta != float("inf") else "  ?  "
        text = (f"[{'#' * filled}{'.' * (WIDTH - filled)}] {finished}/{self.total} "
                f"done {done} running {running} failed {failed} retrying {retrying} "
                f"| {rate:,.0f} tasks/s | ETA {eta_text}")
        pad = max(0, self._width - len(text))
        self._width = len(text)
        return text + " " * pad

    def close(self, done: int, failed: int) -> None:
        """Draw the final line and end it."""
        self.update(done, 0, failed, 0, force=True)
        self.stream.write("\n")
        self.stream.flush()
