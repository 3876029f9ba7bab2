"""Chaos soak: many producers, tells and calls, random SIGKILL, SIGSTOP/SIGCONT and
handler exceptions; at the end every message is accounted for against its sender's own
ledger.

What the docs promise (docs/concepts.md, "What happens to the messages"), and so what is
asserted here, per message a producer sent without an error at the send:

- it was handled, exactly once; or
- it was being handled when its actor was killed: then it is in the dead letters
  ("crashed the actor ...") and, for a call, its caller got ``ActorCrashed``; its
  handler may have run partly (here: recorded it) before the kill. With
  ``redeliver=True`` it is handled again by the restarted instance instead, so it may be
  recorded twice: at most one extra record per crash of that actor, and a call still
  gets its one reply;
- never lost (not handled and not a dead letter), never handled twice otherwise, never
  handled if the send itself raised (``Backpressure`` leaves nothing behind), never
  corrupted (out-of-band payloads are checked byte for byte).

Workers record each message id in a file (outside the actor's memory, which a SIGKILL
takes with it). The short run is part of the suite; the long one is opt-in::

    ACTORQ_SOAK_SECONDS=300 python -m pytest -m soak tests/soak -s

``ACTORQ_SOAK_SEED=<n>`` replays a schedule; every failure message names the seed.
"""

from __future__ import annotations

import array
import collections
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

import actorq
from actorq._transport.shm import list_segments

BIG = 100 * 1024  # above oob_threshold (64 KiB): travels out of band
ID_STRIDE = 10**9  # message ids: producer index * ID_STRIDE + sequence number


def _payload(mid: int) -> bytearray:
    return bytearray([mid % 251]) * BIG


class SoakWorker(actorq.Actor):
    """Records every message it handles (id, and whether its payload was intact)."""

    def __init__(self, log_dir: str, tag: str) -> None:
        self.path = os.path.join(log_dir, f"{tag}.log")
        self.fd = -1

    def on_start(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A SIGKILL can cut a write short (the kernel checks for a fatal signal between
        # the pages it copies): start on a fresh line, and end each record with ".", so
        # that a torn record is seen as one and not read as another id.
        os.write(self.fd, b"\n")

    def _record(self, mid: int, flag: str | None, blob: Any) -> None:
        bad = ""
        if blob is not None:
            view = memoryview(blob)
            want = mid % 251
            if len(view) != BIG or view[0] != want or view[-1] != want or view[BIG // 2] != want:
                bad = " BAD"
        os.write(self.fd, f"{mid}{bad}.\n".encode())
        if flag == "raise":
            raise LookupError("injected failure")

    def receive(self, message: Any) -> None:
        self._record(*message)

    def work(self, mid: int, flag: str | None, blob: Any) -> int:
        self._record(mid, flag, blob)
        return mid * 2

    def ping(self) -> str:
        return "pong"


@dataclass
class Ledger:
    """What one producer sent, and what became of its calls (its own counts), kept in
    compact arrays so that the ledger does not pass for the runtime's memory growth."""

    tells: dict[int, array.array[int]] = field(default_factory=dict)  # worker -> ids
    calls: dict[str, array.array[int]] = field(default_factory=dict)  # "w:flag:outcome" -> ids
    refused: list[tuple[int, str]] = field(default_factory=list)  # (id, error at send)

    def add(self, table: dict[Any, array.array[int]], key: Any, mid: int) -> None:
        ids = table.get(key)
        if ids is None:
            ids = table[key] = array.array("q")
        ids.append(mid)


def produce(pidx: int, workers: list[Any], seconds: float, seed: int) -> Ledger:
    """Send a random mix of tells and calls to *workers* for *seconds*; settle every call."""
    rng = random.Random(seed)
    ledger = Ledger()
    outstanding: collections.deque[tuple[int, int, str | None, Any]] = collections.deque()
    end = time.monotonic() + seconds
    seq = 0

    def settle(mid: int, w: int, flag: str | None, reply: Any) -> None:
        try:
            value = reply.result(timeout=120)
            outcome = "ok" if value == mid * 2 else f"wrong:{value!r}"
        except LookupError:
            outcome = "raised"
        except actorq.ActorCrashed:
            outcome = "crashed"
        except Exception as exc:
            outcome = f"other:{type(exc).__name__}: {exc}"
        ledger.add(ledger.calls, f"{w}:{flag}:{outcome}", mid)

    while time.monotonic() < end:
        for _ in range(50):
            seq += 1
            mid = pidx * ID_STRIDE + seq
            w = rng.randrange(len(workers))
            flag = "raise" if rng.random() < 0.03 else None
            blob = _payload(mid) if rng.random() < 0.01 else None
            try:
                if rng.random() < 0.75:
                    workers[w].tell((mid, flag, blob))
                    ledger.add(ledger.tells, w, mid)
                else:
                    outstanding.append((mid, w, flag, workers[w].work(mid, flag, blob)))
            except actorq.ActorqError as exc:
                ledger.refused.append((mid, f"{type(exc).__name__}: {exc}"))
            while len(outstanding) > 64:
                settle(*outstanding.popleft())
    while outstanding:
        settle(*outstanding.popleft())
    return ledger


class SoakProducer(actorq.Actor):
    """A producer in an actor process: sends straight to the workers' rings."""

    def run(self, pidx: int, workers: list[Any], seconds: float, seed: int) -> tuple[Any, ...]:
        ledger = produce(pidx, workers, seconds, seed)
        return ledger.tells, ledger.calls, ledger.refused  # plain data back


@dataclass
class Chaos:
    kills: int = 0
    stops: int = 0
    stopped_seconds: float = 0.0


def inject(system: actorq.ActorSystem, workers: list[Any], rng: random.Random,
           until: float, chaos: Chaos, interval: tuple[float, float]) -> None:
    """Every few hundred ms: SIGKILL a random worker, or SIGSTOP it for a while."""
    pause = threading.Event()  # never set: a pacing wait, not a synchronisation
    while time.monotonic() < until:
        pause.wait(rng.uniform(*interval))
        w = rng.randrange(len(workers))
        pid = system.pid_of(workers[w])
        if pid is None:
            continue
        try:
            if rng.random() < 0.6:
                os.kill(pid, signal.SIGKILL)
                chaos.kills += 1
            else:
                held = rng.uniform(0.05, 0.5)
                os.kill(pid, signal.SIGSTOP)
                chaos.stops += 1
                try:
                    pause.wait(held)
                finally:
                    os.kill(pid, signal.SIGCONT)
                chaos.stopped_seconds += held
        except ProcessLookupError:
            continue


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_soak(tmp_path: Any, seconds: float, seed: int, *, n_workers: int = 4,
             n_threads: int = 2, n_actor_producers: int = 2,
             interval: tuple[float, float] = (0.1, 0.4)) -> dict[str, Any]:
    """Run the soak; return its figures (asserting the invariants on the way)."""
    tag = f"[soak seed={seed} seconds={seconds:g}; replay with ACTORQ_SOAK_SEED={seed}]"
    rng = random.Random(seed)
    fds_before = _fds()
    log_dir = str(tmp_path)
    redeliver = [i % 2 == 1 for i in range(n_workers)]
    with actorq.ActorSystem(window=256, root_max_restarts=1_000_000, root_within=1.0,
                            dead_letters=1_000_000, call_timeout=120.0,
                            send_timeout=30.0) as s:
        workers = [
            s.spawn(SoakWorker, log_dir, f"w{i}", name=f"w{i}",
                    actor_options=actorq.ActorOptions(redeliver=redeliver[i]))
            for i in range(n_workers)
        ]
        producers = [s.spawn(SoakProducer, name=f"p{i}") for i in range(n_actor_producers)]
        for ref in (*workers, *producers):
            s.wait_ready(ref)
        assert [w.ping().result() for w in workers] == ["pong"] * n_workers, tag
        me = psutil.Process()
        rss_start = me.memory_info().rss
        started = time.monotonic()
        until = started + seconds
        chaos = Chaos()
        ledgers: dict[int, Ledger] = {}
        errors: list[BaseException] = []

        def thread_producer(pidx: int, pseed: int) -> None:
            try:
                ledgers[pidx] = produce(pidx, workers, seconds, pseed)
            except BaseException as exc:  # reported below, with the seed
                errors.append(exc)

        runs = {n_threads + i: p.run(n_threads + i, workers, seconds, rng.randrange(2**32))
                for i, p in enumerate(producers)}
        threads = [threading.Thread(target=thread_producer, args=(i, rng.randrange(2**32)))
                   for i in range(n_threads)]
        for t in threads:
            t.start()
        chaos_thread = threading.Thread(
            target=inject, args=(s, workers, random.Random(rng.randrange(2**32)), until,
                                 chaos, interval))
        chaos_thread.start()
        rss_samples, seg_samples = [], []
        while time.monotonic() < until:
            threading.Event().wait(min(1.0, max(0.0, until - time.monotonic())))
            rss_samples.append(me.memory_info().rss)
            seg_samples.append(len(list_segments(s.run_id)))
        rss_samples.append(me.memory_info().rss)
        chaos_thread.join(30)
        for t in threads:
            t.join(300)
        assert not errors, f"{tag} producer thread failed: {errors!r}"
        for pidx, reply in runs.items():
            ledgers[pidx] = Ledger(*reply.result(timeout=300))
        # every worker runs again and has handled everything queued for it
        for w in workers:
            assert w.ping().result(timeout=120) == "pong", tag
        for w in workers:
            _wait(lambda w=w: s.metrics()["actors"][w.name]["in_flight"] == 0, 120,
                  f"{tag} {w.name} never drained")
        metrics = s.metrics()
        letters = s.dead_letters()
        rss_end = me.memory_info().rss
        leftover_fresh = [n for n in list_segments(s.run_id) if n[len(s.run_id):][:1] == "o"]
        run_id = s.run_id
        elapsed = time.monotonic() - started
    # -- after close: nothing left behind ---------------------------------------------------
    assert list_segments(run_id) == [], f"{tag} segments left after close"
    assert not leftover_fresh, f"{tag} fresh/spill segments never unlinked: {leftover_fresh}"
    assert _fds() <= fds_before + 4, f"{tag} file descriptors leaked: {fds_before} -> {_fds()}"
    assert metrics["system"]["dead_letters"] == len(letters), tag
    assert metrics["system"]["lost_wakeups"] == 0, tag
    return _account(tag, tmp_path, ledgers, letters, metrics, redeliver, chaos) | {
        "seed": seed, "seconds": round(elapsed, 1), "kills": chaos.kills,
        "stops": chaos.stops, "stopped_seconds": round(chaos.stopped_seconds, 1),
        # the user process's memory: before the run, once warm (a quarter in), at the end
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_warm_mib": round(rss_samples[len(rss_samples) // 4] / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        # segments of the run (rings, control blocks, pooled blocks): bounded, not growing
        "segments_warm": seg_samples[len(seg_samples) // 4] if seg_samples else 0,
        "segments_max": max(seg_samples, default=0),
    }


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        threading.Event().wait(0.02)


def _account(tag: str, tmp_path: Any, ledgers: dict[int, Ledger], letters: list[Any],
             metrics: dict[str, Any], redeliver: list[bool], chaos: Chaos) -> dict[str, Any]:
    n_workers = len(redeliver)
    records: list[collections.Counter[int]] = []
    corrupt = []
    torn = 0
    for i in range(n_workers):
        counts: collections.Counter[int] = collections.Counter()
        path = tmp_path / f"w{i}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            if not line.endswith("."):
                torn += bool(line)  # cut short by a SIGKILL: its handler did not finish
                continue
            mid, _, bad = line[:-1].partition(" ")
            counts[int(mid)] += 1
            if bad:
                corrupt.append((i, int(mid)))
        records.append(counts)
    assert not corrupt, f"{tag} corrupted payloads: {corrupt[:10]}"
    crash_letters: list[set[int]] = [set() for _ in range(n_workers)]
    other_letters = []
    for letter in letters:
        i = int(letter.target[1:])
        mid = letter.message[0][0] if letter.method == "receive" else letter.message[0]
        if letter.reason.startswith("crashed the actor"):
            crash_letters[i].add(mid)
        else:
            other_letters.append(letter)
    assert not other_letters, f"{tag} dead letters of another kind: {other_letters[:5]}"
    crashes = [sum(metrics["actors"][f"w{i}"]["crashes"].values()) for i in range(n_workers)]
    problems: list[str] = []
    sent = {}
    figures = collections.Counter()
    for ledger in ledgers.values():
        for w, ids in ledger.tells.items():
            for mid in ids:
                sent[mid] = w
            figures["tells"] += len(ids)
        for key, ids in ledger.calls.items():
            w_text, flag_text, outcome = key.split(":", 2)
            w = int(w_text)
            flag = None if flag_text == "None" else flag_text
            figures["calls"] += len(ids)
            figures[f"call_{outcome.split(':')[0]}"] += len(ids)
            for mid in ids:
                sent[mid] = w
                c, dead = records[w][mid], mid in crash_letters[w]
                if outcome in ("ok", "raised"):
                    if (outcome == "raised") != (flag == "raise"):
                        problems.append(f"call {mid}: {outcome} but flag {flag}")
                    if c < 1 or dead:
                        problems.append(f"call {mid} to w{w}: {outcome}, recorded {c}, "
                                        f"dead {dead}")
                elif outcome == "crashed":
                    if c > 1:
                        problems.append(f"call {mid} to w{w}: crashed, but recorded {c} times")
                else:
                    problems.append(f"call {mid} to w{w}: {outcome}")
        for mid, why in ledger.refused:
            figures["refused"] += 1
            problems.extend(f"refused {mid} ({why}) was handled by w{i}"
                            for i in range(n_workers) if records[i][mid])
    for mid, w in sent.items():
        c, dead = records[w][mid], mid in crash_letters[w]
        if c == 0 and not dead:
            problems.append(f"LOST: {mid} to w{w} neither handled nor a dead letter")
        if dead:
            figures["crash_letters"] += 1
        if c > 1:
            figures["duplicates"] += c - 1
            if not redeliver[w]:
                problems.append(f"DUPLICATE: {mid} handled {c} times by w{w} (no redeliver)")
            if dead:
                problems.append(f"{mid} handled {c} times by w{w} and dead-lettered")
    for i in range(n_workers):
        phantom = [mid for mid in records[i] if sent.get(mid) != i]
        if phantom:
            problems.append(f"w{i} handled ids nobody sent it: {phantom[:5]}")
        extra = sum(c - 1 for c in records[i].values() if c > 1)
        if extra > crashes[i]:
            problems.append(f"w{i}: {extra} duplicate records for {crashes[i]} crashes")
        if len(crash_letters[i]) > crashes[i]:
            problems.append(f"w{i}: {len(crash_letters[i])} crash letters for "
                            f"{crashes[i]} crashes")
    assert not problems, f"{tag} {len(problems)} problems:\n" + "\n".join(problems[:30])
    return dict(figures) | {"crashes": sum(crashes), "torn_records": torn,
                            "handled": sum(sum(r.values()) for r in records)}


def _seed() -> int:
    raw = os.environ.get("ACTORQ_SOAK_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


@pytest.mark.timeout(120)
def test_chaos_soak_short(tmp_path):
    """The CI version: about 12 seconds of chaos, every message accounted for."""
    seed = _seed()
    print(f"soak seed {seed}")  # noqa: T201
    figures = run_soak(tmp_path, 12.0, seed)
    print(figures)  # noqa: T201
    assert figures["kills"] >= 5, figures
    assert figures["crashes"] >= figures["kills"] // 2, figures
    # the workers ran throughout: messages got through between the faults
    assert figures["handled"] > 1000, figures
    assert figures["rss_end_mib"] - figures["rss_warm_mib"] < 32, figures


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_chaos_soak_long(tmp_path):
    """Minutes of chaos (ACTORQ_SOAK_SECONDS, default 300); run with ``-m soak``."""
    seconds = float(os.environ.get("ACTORQ_SOAK_SECONDS", "300"))
    seed = _seed()
    print(f"soak seed {seed}")  # noqa: T201
    figures = run_soak(tmp_path, seconds, seed, n_workers=6, n_threads=3,
                       n_actor_producers=3)
    print(figures)  # noqa: T201
    assert figures["handled"] > 1000, figures
    assert figures["rss_end_mib"] - figures["rss_warm_mib"] < 32, figures
