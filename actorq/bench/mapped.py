"""A file mapping that benchmark processes share (counters, ledgers, records).

The file lives in /dev/shm and is named like actorq's own segments
(``aq_<pid>_<start>_<run>_<what>``), so it is owned the same way: the leak guard of
``actorq.testing`` sees one a test leaves behind, and any new ``ActorSystem`` sweeps one
whose owner process died (a benchmark killed mid-run) as it sweeps dead runs' segments.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from typing import Any, TypeVar

from actorq._ids import new_run_prefix

_V = TypeVar("_V", bound="memoryview[Any]")

SHM_DIR = "/dev/shm"


class MappedFile:
    """A zero-filled file of *size* bytes, mapped in this process.

    Other processes map the same file by its ``path`` (``MappedFile(path, size)``).
    ``keep`` registers typed views of ``buf``; ``close`` releases them and unmaps this process's
    view; ``unlink`` removes the file first, then closes, so the name never outlives
    the owner's cleanup even when a view is still held somewhere.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)
        self._casts: list[memoryview] = []

    @staticmethod
    def make(size: int, what: str) -> str:
        """Create the zero-filled file and return its path (``what`` ends its name)."""
        if os.access(SHM_DIR, os.W_OK):
            path = os.path.join(SHM_DIR, f"{new_run_prefix()}{what}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        else:  # no /dev/shm: a temp file (no sweep there, but unlink still removes it)
            fd, path = tempfile.mkstemp(prefix=f"actorq-{what}-")
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return path

    def keep(self, view: _V) -> _V:
        """Register *view* (a cast of ``buf``) to be released by ``close``; return it."""
        self._casts.append(view)
        return view

    def close(self) -> None:
        """Unmap (this process's view only)."""
        for view in self._casts:
            view.release()
        self._casts.clear()
        self.buf.release()
        self._map.close()

    def unlink(self) -> None:
        """Remove the file, then close."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()
