"""The child process of :func:`actorq.bench.workload.run_workload` (``python -m``).

Reads the cloudpickled payload on stdin, writes one JSON event per line to the file
descriptor named on its command line: ``ready``, ``warmup``, ``begin``, ``sample``,
then ``done`` (with the faults injected) or ``error`` (with a message for the user).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actorq.bench.faults import FaultEvent

EXIT_ERROR = 3


class _Events:
    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"event": event, **fields}) + "\n")


def _load(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    import importlib

    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class _Runner:
    """One workload in the child: its object (an instance for a class), run/teardown."""

    def __init__(self, workload: Any, system: Any) -> None:
        self.name, self.kind = workload.name, workload.kind
        obj = _load(workload.target)
        self.instance = obj() if self.kind == "class" else None
        self.system = system
        self.fn: Callable[[Any], Any] = self.instance.run if self.instance else obj
        setup = getattr(self.instance, "setup", None)
        if setup is not None:
            setup(system)

    def once(self) -> float:
        work = self.fn(self.system)
        if isinstance(work, bool) or not isinstance(work, (int, float)) \
                or not math.isfinite(work):
            msg = (f"workload {self.name!r} returned {work!r}: it must return the amount "
                   "of work it did (a finite number)")
            raise _UserError(msg)
        return float(work)

    def teardown(self) -> None:
        teardown = getattr(self.instance, "teardown", None)
        if teardown is not None:
            teardown(self.system)


class _UserError(Exception):
    pass


def _members(system: Any) -> list[tuple[str, int | None]]:
    return [(name, a.get("pid")) for name, a in system.metrics()["actors"].items()
            if a.get("state") not in ("stopped", "failed")]


def _measure(payload: dict[str, Any], events: _Events) -> list[dict[str, Any]]:
    import actorq
    from actorq.bench.faults import Injector

    with actorq.ActorSystem(**payload["system_options"]) as system:
        runners: list[_Runner] = [
            _guard(f"setting up {w.name!r}", _bind(_Runner, w, system))
            for w in payload["workloads"]]
        events.emit("ready")
        for _ in range(payload["warmup"]):
            for r in runners:
                events.emit("warmup", name=r.name)
                _guard(f"{r.name!r} (warm-up)", r.once)
        plan, injector, watcher = payload["faults"], None, None
        origin = time.monotonic()
        if plan is not None:
            injector = Injector(plan, lambda: _members(system), {}, math.inf, origin=origin)
            watcher = _Watcher(system, origin)
            injector.start()
        try:
            for i in range(payload["repeats"]):
                for r in runners:
                    events.emit("begin", name=r.name, repeat=i)
                    start = time.perf_counter()
                    began = time.monotonic() - origin
                    work = _guard(f"{r.name!r} (repeat {i + 1})", r.once)
                    elapsed = time.perf_counter() - start
                    events.emit("sample", name=r.name, repeat=i, start=began,
                                elapsed=elapsed, work=work,
                                rate=work / elapsed if elapsed > 0 else math.inf)
        finally:
            if injector is not None and watcher is not None:
                injector.close()
                watcher.close()
        for r in runners:
            _guard(f"tearing down {r.name!r}", r.teardown)
        if injector is None or watcher is None:
            return []
        return [{**e.summary(), "running_again_s": watcher.back(e)} for e in injector.events]


class _Watcher:
    """Polls the system's actors while faults are injected: when each runs again.

    A workload's replies are its own, so the harness cannot see "the next successful
    reply"; what it sees is the member running again: a new pid in state ``running``
    after a kill, the same process resumed after a stall.
    """

    INTERVAL = 0.005

    def __init__(self, system: Any, origin: float) -> None:
        import threading

        self._system, self._origin = system, origin
        self._seen: list[tuple[float, str, int | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="actorq-bench-watch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: dict[str, tuple[int | None, str]] = {}
        while not self._stop.wait(self.INTERVAL):
            now = time.monotonic() - self._origin
            for name, a in self._system.metrics()["actors"].items():
                state = (a.get("pid"), str(a.get("state")))
                if last.get(name) != state:
                    last[name] = state
                    self._seen.append((now, name, *state))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def back(self, event: FaultEvent) -> float | None:
        """Seconds from *event* until its member ran again (None: not seen)."""
        if event.pid is None:
            return None
        start = event.t + (event.stall if event.kind == "stop" else 0.0)
        for t, name, pid, state in self._seen:
            if name != event.member or t < start or state != "running":
                continue
            if event.kind == "stop" or pid != event.pid:
                return round(max(t, start) - event.t, 6)
        return None


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def _guard(stage: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except _UserError:
        raise
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc))
        msg = f"the workload raised while {stage}: {type(exc).__name__}: {exc}\n{tb}"
        raise _UserError(msg) from exc


def main() -> int:
    """Run the payload from stdin; report on the descriptor in ``argv[1]``."""
    import cloudpickle

    events = _Events(int(sys.argv[1]))
    try:
        payload = cloudpickle.loads(sys.stdin.buffer.read())
        sys.path[:0] = [p for p in payload["sys_path"] if p not in sys.path]
        faults = _measure(payload, events)
    except _UserError as exc:
        events.emit("error", message=str(exc))
        return EXIT_ERROR
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc))
        events.emit("error", message=f"the workload could not run: {exc}\n{tb}")
        return EXIT_ERROR
    events.emit("done", faults=faults)
    return 0


if __name__ == "__main__":
    sys.exit(main())
