"""actorq's optional compiled helpers, each with a pure-Python fallback.

The C sources sit next to this file and are built by ``setup.py`` when a C compiler is
present at install time (``optional=True``: without one, the install goes on and the
fallbacks are used). ``NATIVE`` tells which is in use; ``ACTORQ_NO_NATIVE=1`` in the
environment forces the fallbacks (the test suite runs both).

- ``copy_into(dst, offset, src)``: one copy of a large buffer into shared memory
  (``_copy.c``: streaming stores, the GIL released). The fallback assigns memoryviews.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any


def _load() -> ModuleType | None:
    if os.environ.get("ACTORQ_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        from actorq._native import _copy
    except ImportError:
        return None
    return _copy


_copy = _load()
NATIVE = _copy is not None
# Whether copies of at least a MiB use streaming stores (a C build on a CPU with AVX2).
STREAMING = bool(_copy is not None and _copy.STREAMING)


def _copy_into_py(dst: Any, offset: int, src: Any) -> int:
    """Copy the contiguous buffer *src* into *dst* at *offset*; return the bytes copied."""
    raw = memoryview(src).cast("B")
    n = raw.nbytes
    view = memoryview(dst)
    if offset < 0 or offset + n > view.nbytes:
        msg = (f"copy_into: {n} bytes at offset {offset} do not fit a buffer of "
               f"{view.nbytes} bytes")
        raise ValueError(msg)
    view[offset : offset + n] = raw
    return n


copy_into = _copy.copy_into if _copy is not None else _copy_into_py

__all__ = ["NATIVE", "STREAMING", "copy_into"]
