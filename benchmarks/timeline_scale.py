"""A timeline of N actors' start (issue 15): is the wall time the CPU spent over the two
cores, or does something serialise?

``python benchmarks/timeline_scale.py --n 1000`` spawns N ``Echo`` actors as
``bench_scale.py`` does, while a sampler *process* (so that it takes no GIL time from
the system it watches) reads every ``--every`` seconds:

- the machine's CPU from ``/proc/stat`` (busy, idle and steal, in cores);
- the CPU of this process and of the fork server (``schedstat``; the actors' at the end);
- how many of those processes' threads are runnable or running (state ``R``).

A start that serialises shows as moments with fewer than two of ours runnable while
starts are still pending (a core left idle on a quiet machine, whatever the load); a
start bound by CPU keeps two or more of ours runnable. Prints one line per second and a
summary (JSON): wall time, CPU seconds per process, the share of samples with 0, 1,
2+ of ours runnable, and the machine's idle cores over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import actorq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scale import Echo, cpu_seconds, fork_server_pid

TICK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 300.0


def machine() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (ticks)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def state(path: str) -> bytes:
    """The one-letter state in a /proc ``stat`` file (b"X": gone)."""
    try:
        with open(path, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"X"


def children(pid: int) -> list[int]:
    """The pids of *pid*'s children now."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def sample_one(user: int, server: int) -> dict[str, Any]:
    """One look at the machine, the user's process, the fork server and its children."""
    m = machine()
    try:
        threads = os.listdir(f"/proc/{user}/task")
    except OSError:
        threads = []
    kids = children(server)
    return {
        "t": time.monotonic(), "busy": sum(m) - m[3] - m[4] - m[7], "idle": m[3] + m[4],
        "steal": m[7], "user_cpu": cpu_seconds([user]), "server_cpu": cpu_seconds([server]),
        "kids": len(kids),
        "r_user": sum(state(f"/proc/{user}/task/{t}/stat") == b"R" for t in threads),
        "r_server": int(state(f"/proc/{server}/stat") == b"R"),
        "r_kids": sum(state(f"/proc/{k}/stat") == b"R" for k in kids),
    }


def sampler(user: int, server: int, every: float, out: Path) -> None:
    """The sampler process: sample until *out*.stop exists, then write *out*."""
    stop = out.with_suffix(".stop")
    samples = [sample_one(user, server)]
    out.with_suffix(".started").touch()
    while not stop.exists():
        time.sleep(every)
        samples.append(sample_one(user, server))
    samples.append(sample_one(user, server))
    out.write_text(json.dumps(samples))


def summarise(samples: list[dict[str, Any]], ready_at: list[float], t0: float,
              spawned_at: float, actors_cpu: float) -> dict[str, Any]:
    """The run's figures from the samples taken while starts were pending."""
    first, last = samples[0], samples[-1]
    span = (last["t"] - first["t"]) * TICK
    pending = [s for s in samples if s["t"] <= ready_at[-1]]
    ours = Counter(min(s["r_user"] + s["r_server"] + s["r_kids"], 2) for s in pending)
    n = max(1, len(pending))
    cpu = {key: last[key] - first[key] for key in ("user_cpu", "server_cpu")}
    cpu["actors_cpu"] = actors_cpu
    return {
        "n": len(ready_at), "spawn_calls_s": spawned_at - t0, "all_ready_s": ready_at[-1] - t0,
        **{f"{key}_s": round(v, 3) for key, v in cpu.items()},
        "ours_cpu_s": round(sum(cpu.values()), 3),
        "ours_cores": round(sum(cpu.values()) / (last["t"] - first["t"]), 3),
        "machine_busy_cores": round((last["busy"] - first["busy"]) / span, 3),
        "machine_idle_cores": round((last["idle"] - first["idle"]) / span, 3),
        "machine_steal_cores": round((last["steal"] - first["steal"]) / span, 3),
        "samples_pending": len(pending),
        "share_runnable_0_1_2plus": [round(ours[k] / n, 3) for k in (0, 1, 2)],
        "mean_runnable": {k: round(sum(s[k] for s in pending) / n, 2)
                          for k in ("r_user", "r_server", "r_kids")},
        "load_average": list(os.getloadavg()),
    }


def print_lines(samples: list[dict[str, Any]], ready_at: list[float], t0: float) -> None:
    """One line per second: CPU in cores, forked and ready counts, ours runnable."""
    print(f"{'t':>6} {'busy':>5} {'idle':>5} {'user':>5} {'fsrv':>5} "
          f"{'forked':>6} {'ready':>5} {'R ours':>6}")
    last = samples[0]
    for s in samples[1:]:
        if s["t"] - last["t"] < 1.0 and s is not samples[-1]:
            continue
        dt = s["t"] - last["t"]
        ready = sum(1 for r in ready_at if r <= s["t"])
        runnable = s["r_user"] + s["r_server"] + s["r_kids"]
        print(f"{s['t'] - t0:6.1f} {(s['busy'] - last['busy']) / dt / TICK:5.2f} "
              f"{(s['idle'] - last['idle']) / dt / TICK:5.2f} "
              f"{(s['user_cpu'] - last['user_cpu']) / dt:5.2f} "
              f"{(s['server_cpu'] - last['server_cpu']) / dt:5.2f} "
              f"{s['kids']:6d} {ready:5d} {runnable:6d}")
        last = s


def run(n: int, every: float, out: Path) -> dict[str, Any]:
    """Start *n* actors in a fresh system with the sampler watching; the summary."""
    with actorq.ActorSystem() as warm:  # the fork server starts once: not timed
        warm.wait_ready(warm.spawn(Echo), timeout=READY_TIMEOUT)
    out.unlink(missing_ok=True)
    with actorq.ActorSystem() as system:
        server = fork_server_pid()
        assert server is not None
        watcher = subprocess.Popen([sys.executable, __file__, "--sampler", str(os.getpid()),
                                    str(server), str(every), str(out)])
        started = out.with_suffix(".started")
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not started.exists():  # its first sample: before the first spawn
                if watcher.poll() is not None or time.monotonic() > deadline:
                    msg = "the sampler process did not start"
                    raise RuntimeError(msg)
                time.sleep(0.01)
            t0 = time.monotonic()
            refs = [system.spawn(Echo) for _ in range(n)]
            spawned_at = time.monotonic()
            ready_at = []
            for ref in refs:  # (in spawn order: the time each was first seen ready)
                system.wait_ready(ref, timeout=READY_TIMEOUT)
                ready_at.append(time.monotonic())
            pids = [pid for ref in refs if (pid := system.pid_of(ref)) is not None]
            actors_cpu = cpu_seconds(pids)
        finally:
            out.with_suffix(".stop").touch()
            watcher.wait()
            out.with_suffix(".stop").unlink()
            started.unlink(missing_ok=True)
    samples = json.loads(out.read_text())
    print_lines(samples, ready_at, t0)
    summary = summarise(samples, ready_at, t0, spawned_at, actors_cpu)
    out.write_text(json.dumps({"summary": summary, "samples": samples,
                               "ready_at": [r - t0 for r in ready_at]}))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="actors to start")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("timeline_scale.json"),
                        help="where the samples and the summary are written (JSON)")
    parser.add_argument("--sampler", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sampler:
        user, server, every, out = args.sampler
        sampler(int(user), int(server), float(every), Path(out))
        return 0
    print(json.dumps(run(args.n, args.every, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
