"""Wait until the processes a previous benchmark part started have gone quiet.

A suite that starts peers' clusters (Dask, Ray, loky) stops them after each part, but
their processes may take a while to exit, and some helpers outlive them on purpose
(loky's resource tracker, the fork server of Dask's multiprocessing scheduler: both
asleep). A part that measures a target against bare processes must not run beside a
previous part's process that still burns CPU: :class:`Strays` names this process's
descendants that are not the actor system's (those present when it was made, and their
descendants) and waits until they take less than ``QUIET_SHARE`` of a core.

Only this process's descendants are looked at: other programs on a shared machine are
the load, which the interleaved runs spread over both sides; they are not ours to wait
for (the report notes the load average).
"""

from __future__ import annotations

import time

import psutil

# Strays using less than this share of one core are quiet: an idle Python process's
# housekeeping is far below it, a cluster still shutting down far above.
QUIET_SHARE = 0.01
WINDOW = 0.25  # seconds of CPU accounting per look
WAIT = 15.0  # seconds at most: a stray still busy after this is named, not waited for


class Strays:
    """This process's descendants that were not there (or under one that was) when made."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._base = {p.pid for p in self._descendants()}

    def _descendants(self) -> list[psutil.Process]:
        try:
            return self._me.children(recursive=True)
        except psutil.Error:
            return []

    def now(self) -> list[psutil.Process]:
        """The descendants not under the base set (a process is under itself)."""
        out = []
        for proc in self._descendants():
            try:
                chain = [proc, *proc.parents()]
            except psutil.Error:
                continue
            if not any(p.pid in self._base for p in chain):
                out.append(proc)
        return out

    def wait_quiet(self, wait: float = WAIT, window: float = WINDOW) -> str:
        """Block until the strays use less than ``QUIET_SHARE`` of a core over *window*
        seconds, or *wait* seconds have passed; return ``""``, or what stayed busy
        (pid, name, share of a core) for the report's note."""
        deadline = time.monotonic() + wait
        busy: list[str] = []
        while True:
            procs = self.now()
            if not procs:
                return ""
            before = {p.pid: _cpu(p) for p in procs}
            time.sleep(window)  # an accounting window, not a synchronisation
            busy = []
            for p in procs:
                share = (_cpu(p) - before[p.pid]) / window
                if share >= QUIET_SHARE:
                    busy.append(f"{_name(p)} (pid {p.pid}, {share:.0%} of a core)")
            if not busy or time.monotonic() >= deadline:
                return "; ".join(busy)


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:  # gone: it uses no more
        return 0.0
    return float(t.user + t.system)


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:60] or proc.name()
    except psutil.Error:
        return "?"
