"""Ending processes: SIGKILL a process with its whole tree (children first found)."""

from __future__ import annotations

import multiprocessing.forkserver
import os

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


def kill_if_child(pid: int | None) -> None:
    """SIGKILL *pid* (and its descendants) if it is a live child of this process or of
    the fork server: a pid whose exit status we never read may be someone else's now."""
    if pid is None:
        return
    fs = getattr(multiprocessing.forkserver, "_forkserver", None)
    parents = {os.getpid(), getattr(fs, "_forkserver_pid", None)}
    try:
        p = psutil.Process(pid)
        if p.ppid() not in parents or p.status() == psutil.STATUS_ZOMBIE:
            return
    except psutil.Error:
        return
    kill_tree(pid)
