"""Ending processes: SIGKILL a process with its whole tree (children first found)."""

from __future__ import annotations

import psutil


def kill_tree(pid: int) -> None:
    """SIGKILL *pid* and all its descendants (found before any is killed)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
