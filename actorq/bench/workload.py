"""Users' own workloads: ``actorq bench mypkg.module:workload`` and :func:`run_workload`.

A workload is either a function that takes an :class:`actorq.ActorSystem` and returns
the amount of work it did (messages, items, bytes: any number), or a class whose
instances have ``run(system)`` (same contract) and optionally ``setup(system)`` and
``teardown(system)``. An optional ``unit`` attribute names the rate (default
``"work/s"``). Several workloads are measured side by side, repeat by repeat in turn,
with one system for all; the first is compared with each of the others (a peer that
does not use the system simply ignores its argument)::

    parent (this process)                         child (python -m actorq.bench._child)
    resolve every spec (import, callable?) ──▶    one ActorSystem; setup; warm-up;
    read events, each within --timeout    ◀──     repeats x workloads: "sample" events
    sample the child's memory (psutil)            teardown; "done" (or "error")
    on timeout: SIGKILL its process group, sweep its shared memory, BenchError

The child runs in its own session, so that a workload that hangs is killed with every
process it started (actor processes, the fork server), and the shared-memory segments
its system created are swept (their owner is dead).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actorq._errors import BenchError
from actorq.bench.suite import Plot, SuiteReport
from actorq.bench.timing import BenchResult, Verdict, compare

__all__ = ["Workload", "resolve", "run_workload"]

DEFAULT_TIMEOUT = 300.0  # seconds between two signs of life (a repeat, the set-up)
MEMORY_INTERVAL = 0.25  # seconds between two samples of the child's memory
KILL_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Workload:
    """A resolved workload: its name, what it is, and how the child finds it.

    Attributes:
        name: shown in the report (the spec, or the callable's qualified name).
        target: ``"module:attr"`` (imported again in the child) or the object itself
            (shipped with cloudpickle).
        kind: ``"function"`` or ``"class"``.
        unit: the unit of its rate.
    """

    name: str
    target: Any
    kind: str
    unit: str


def _kind(obj: Any, name: str) -> str:
    if inspect.isclass(obj):
        if not callable(getattr(obj, "run", None)):
            msg = (f"workload {name!r} is a class without a run(system) method; give it "
                   "run (and optionally setup/teardown), or name a function")
            raise BenchError(msg)
        return "class"
    if not callable(obj):
        msg = (f"workload {name!r} is a {type(obj).__name__}, not callable: name a function "
               "taking an ActorSystem, or a class with run(system)")
        raise BenchError(msg)
    return "function"


def resolve(spec: str | Callable[..., Any] | type) -> Workload:
    """Check a workload before anything runs: ``"module:attr"`` imports, is usable.

    Raises:
        BenchError: not ``module:attr``; the module does not import (its error is in
            the message); no such attribute; neither callable nor a class with ``run``.
    """
    if not isinstance(spec, str):
        name = getattr(spec, "__qualname__", None) or repr(spec)
        kind = _kind(spec, name)
        return Workload(name, spec, kind, str(getattr(spec, "unit", "work/s")))
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = f"workload {spec!r} is not module:function (e.g. mypkg.bench:workload)"
        raise BenchError(msg)
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:  # a module may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = (f"workload {spec!r}: cannot import {module_name!r}: "
                   f"{type(exc).__name__}: {exc}")
            raise BenchError(msg) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"workload {spec!r}: module {module_name!r} has no attribute {attr!r}"
            raise BenchError(msg)
        obj = getattr(obj, part)
    kind = _kind(obj, spec)
    return Workload(spec, spec, kind, str(getattr(obj, "unit", "work/s")))


@contextlib.contextmanager
def _cwd_on_path() -> Any:
    """Like ``python -m``: the current directory comes first on ``sys.path``."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def run_workload(*workloads: str | Callable[..., Any] | type, repeats: int = 5,
                 warmup: int = 1, timeout: float = DEFAULT_TIMEOUT,
                 system_options: Mapping[str, Any] | None = None,
                 faults: Any = None,
                 progress: Callable[[str], None] | None = None) -> SuiteReport:
    """Measure *workloads* side by side in a child process; return the report.

    Each workload is run *warmup* times unrecorded, then *repeats* times recorded, in
    turn; a sample is the work it returned divided by the seconds it took. Blocks until
    the child is done; at most *timeout* seconds pass between two repeats.

    Args:
        *workloads: ``"module:function"`` or ``"module:Class"`` specs, or the objects.
            The first is ours; each of the others is a peer it is compared with.
        repeats: recorded runs of each, at least 1.
        warmup: unrecorded runs of each first, at least 0.
        timeout: seconds a set-up, a warm-up or a repeat may take.
        system_options: keyword arguments for the child's ``ActorSystem``.
        faults: an :class:`actorq.bench.faults.FaultPlan` (``kill`` and ``stop`` only:
            injected into random actors of the system during the repeats).
        progress: called with a line of text per repeat.

    Returns:
        The :class:`SuiteReport` (suite ``"workload"``).

    Raises:
        BenchError: a bad spec, bad counts, a workload that raised, returned a
            non-number, or ran past *timeout* (its processes are then killed and its
            shared memory swept).
    """
    if not workloads:
        msg = "give at least one workload (module:function)"
        raise BenchError(msg)
    if repeats < 1 or warmup < 0 or not timeout > 0:
        msg = (f"need repeats >= 1, warmup >= 0, timeout > 0 (got {repeats}, {warmup}, "
               f"{timeout})")
        raise BenchError(msg)
    if faults is not None and faults.kinds() - {"kill", "stop"}:
        msg = ("a workload can be given kill and stop faults only (raise and oom need the "
               "workload's cooperation: see the faults suite)")
        raise BenchError(msg)
    resolved = [resolve(w) for w in workloads]
    units = {w.unit for w in resolved}
    if len(units) > 1:
        msg = (f"the workloads report different units ({', '.join(sorted(units))}), so their "
               "ratio means nothing: give each the same unit attribute")
        raise BenchError(msg)
    names = [w.name for w in resolved]
    if len(set(names)) != len(names):
        msg = f"a workload is named twice: {names}"
        raise BenchError(msg)
    payload = {"workloads": resolved, "repeats": repeats, "warmup": warmup,
               "system_options": dict(system_options or {}), "faults": faults,
               "sys_path": [os.getcwd(), *sys.path]}
    started, load_before = time.monotonic(), os.getloadavg()
    events, memory = _Child(payload, timeout, progress or (lambda _t: None)).run()
    report = _report(resolved, events, memory, repeats, warmup, time.monotonic() - started)
    report.meta.update(load_average_before=[round(x, 2) for x in load_before],
                       load_average_after=[round(x, 2) for x in os.getloadavg()])
    return report


class _Child:
    """The child process and its event pipe; see the module docstring."""

    def __init__(self, payload: dict[str, Any], timeout: float,
                 progress: Callable[[str], None]) -> None:
        self.payload, self.timeout, self.progress = payload, timeout, progress
        self.events: list[dict[str, Any]] = []
        self.memory: list[list[float]] = []
        self.stamp: str | None = None

    def run(self) -> tuple[list[dict[str, Any]], list[list[float]]]:
        import cloudpickle

        blob = cloudpickle.dumps(self.payload)
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "actorq.bench._child", str(write_fd)],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        from actorq._ids import process_stamp

        self.stamp = process_stamp(proc.pid)  # now, while the child is surely alive
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(blob)
                proc.stdin.close()
            self._read(read_fd, proc)
        except BaseException:
            _kill_session(proc)
            _sweep(self.stamp)
            raise
        finally:
            os.close(read_fd)
        return self.events, self.memory

    def _read(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        buffer, deadline, last_sample = b"", time.monotonic() + self.timeout, 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                self._timed_out(proc)
            if now - last_sample >= MEMORY_INTERVAL:
                self._sample(proc, now)
                last_sample = now
            ready, _, _ = select.select([fd], [], [], MEMORY_INTERVAL)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the child closed its end: it exited
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                self.events.append(event)
                deadline = time.monotonic() + self.timeout
                self._show(event)
        code = proc.wait(KILL_WAIT)
        _sweep(self.stamp)
        last = self.events[-1] if self.events else {}
        if last.get("event") == "error":
            msg = last["message"]
            raise BenchError(msg)
        if last.get("event") != "done":
            msg = f"the workload's process exited with code {code} before finishing"
            raise BenchError(msg)

    def _show(self, event: Mapping[str, Any]) -> None:
        if event.get("event") == "sample":
            self.progress(f"{event['name']}: repeat {event['repeat'] + 1}/"
                          f"{self.payload['repeats']}")
        elif event.get("event") == "warmup":
            self.progress(f"{event['name']}: warm-up")

    def _timed_out(self, proc: subprocess.Popen[bytes]) -> None:
        _kill_session(proc)
        _sweep(self.stamp)
        where = next((e for e in reversed(self.events) if e.get("event") in
                      ("begin", "warmup", "ready")), None)
        doing = ("setting up" if where is None else
                 f"{where.get('name', '')} {where['event']} {where.get('repeat', '')}".strip())
        msg = (f"the workload ran past --timeout {self.timeout:g} s ({doing}); its processes "
               "were killed and its shared memory removed")
        raise BenchError(msg)

    def _sample(self, proc: subprocess.Popen[bytes], now: float) -> None:
        import psutil

        try:
            root = psutil.Process(proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.memory.append([now, total / 2**20])


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole session (its actors, its fork server); reap; sweep."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_WAIT)
    _wait_session_gone(proc.pid)


def _wait_session_gone(sid: int) -> None:
    """Wait (bounded) until no process of session *sid* is left."""
    import psutil

    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        left = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _sweep(stamp: str | None) -> None:
    """Unlink the segments the child's system left (their owner, the child, is dead).

    *stamp* (pid and start time) names the child exactly: a later process that got
    its pid again has another start time, so its segments are not touched.
    """
    from actorq._ids import SEGMENT_PREFIX
    from actorq._transport.shm import unlink_prefix

    if stamp is not None:
        unlink_prefix(f"{SEGMENT_PREFIX}{stamp}_")


# -- the report -------------------------------------------------------------------------------

def _report(workloads: Sequence[Workload], events: Sequence[Mapping[str, Any]],
            memory: Sequence[Sequence[float]], repeats: int, warmup: int,
            wall: float) -> SuiteReport:
    samples = [e for e in events if e.get("event") == "sample"]
    faults: list[dict[str, Any]] = next(
        (e["faults"] for e in events if e.get("event") == "done"), [])
    origin = memory[0][0] if memory else 0.0
    results = []
    for w in workloads:
        mine = [e for e in samples if e["name"] == w.name]
        results.append(BenchResult(w.name, w.unit, tuple(e["rate"] for e in mine),
                                   higher_is_better=True, group="workloads",
                                   note=f"{w.kind}; work returned / seconds",
                                   started=tuple(e["start"] for e in mine)))
    verdicts: list[Verdict] = [compare(results[0], peer) for peer in results[1:]]
    timeline = [{k: e[k] for k in ("name", "repeat", "start", "elapsed", "work", "rate")}
                for e in samples]
    title = "workload: " + " vs ".join(w.name for w in workloads)
    extra: dict[str, Any] = {
        "timeline": timeline, "faults": faults,
        "memory": [[round(t - origin, 3), round(m, 2)] for t, m in memory]}
    sections = [_timeline_section(timeline)]
    if faults:
        sections.append(_fault_section(faults, timeline))
    plot = Plot("workload.png", "rate per repeat over time (faults marked), rate CDFs, memory",
                lambda path: _draw(results, timeline, faults, extra["memory"], path, title))
    return SuiteReport("workload", title, results, verdicts,
                       meta={"repeats": repeats, "warmup": warmup, "mode": "workload",
                             "wall_seconds": round(wall, 1)},
                       extra=extra, sections=sections, plots=[plot])


def _timeline_section(timeline: Sequence[Mapping[str, Any]]) -> str:
    lines = ["## Timeline", "", "| Repeat | Workload | Start (s) | Elapsed (s) | Work | Rate |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {e['repeat'] + 1} | {e['name']} | {e['start']:.3f} | {e['elapsed']:.4f} | "
              f"{e['work']:g} | {e['rate']:.4g} |" for e in timeline]
    return "\n".join(lines) + "\n"


def _fault_section(faults: Sequence[Mapping[str, Any]],
                   timeline: Sequence[Mapping[str, Any]]) -> str:
    hit = [e for e in timeline
           if any(e["start"] <= f["t"] < e["start"] + e["elapsed"] for f in faults)]
    clean = [e["rate"] for e in timeline if e not in hit]
    dip = (sum(e["rate"] for e in hit) / len(hit)) / (sum(clean) / len(clean)) \
        if hit and clean else math.nan
    lines = ["## Faults", "",
             f"{len(faults)} fault(s); {len(hit)} repeat(s) had one. Mean rate of those / "
             f"mean rate of the others: {dip:.2f}" if math.isfinite(dip) else
             f"{len(faults)} fault(s).", "",
             "| At (s) | Fault | Actor | pid | Running again after (ms) | Error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {f['t']:.3f} | {f['kind']} | {f['member']} | {f['pid']} | "
              f"{_ms(f.get('running_again_s'))} | {f['error'] or ''} |" for f in faults]
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _draw(results: Sequence[BenchResult], timeline: Sequence[Mapping[str, Any]],
          faults: Sequence[Mapping[str, Any]], memory: Sequence[Sequence[float]],
          path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_c, ax_m) = plt.subplots(3, 1, figsize=(9, 10))
    for r in results:
        mine = [e for e in timeline if e["name"] == r.name]
        ax_t.plot([e["start"] for e in mine], [e["rate"] for e in mine], marker="o",
                  label=r.name)
        ordered = sorted(r.samples)
        ax_c.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))],
                  where="post", label=r.name)
    for f in faults:
        ax_t.axvline(f["t"], color="grey", linestyle=":")
        ax_t.annotate(f["kind"], (f["t"], 0), xytext=(2, 2), textcoords="offset points",
                      fontsize=8)
    ax_t.set_xlabel("time (s)")
    ax_t.set_ylabel(f"rate per repeat ({results[0].unit})")
    ax_c.set_xlabel(f"rate ({results[0].unit})")
    ax_c.set_ylabel("fraction of repeats")
    ax_m.plot([m[0] for m in memory], [m[1] for m in memory], color="tab:green")
    ax_m.set_xlabel("time since the child started (s)")
    ax_m.set_ylabel("RSS of the run's processes (MiB)")
    for ax in (ax_t, ax_c):
        ax.legend(fontsize=8)
    for ax in (ax_t, ax_c, ax_m):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
