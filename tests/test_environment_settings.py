"""The environment-only settings: ``ACTORQ_OOB_POOL_BYTES`` (and the fallback to fresh
segments when the pool is full), ``ACTORQ_READ_AHEAD`` and ``ACTORQ_PROFILE_DIR``.

Each process reads them for itself, so they are set before a program starts: the
tests run one in a subprocess with the variables in its environment."""

from __future__ import annotations

import json
import os
import pstats
import subprocess
import sys
import textwrap

from actorq.testing import wait_until

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import actorq
    from actorq._transport.shm import list_segments

    class Keeper(actorq.Actor):
        def __init__(self):
            self.kept = []

        def keep(self, arr):
            self.kept.append(arr)  # keeps viewing the block it arrived in
            return int(arr[0]), int(arr[-1]), arr.flags.owndata

        def check(self):
            return [(int(a[0]), int(a[-1]), len(a)) for a in self.kept]

        def pid(self):
            return os.getpid()

    class Reader(actorq.Actor):
        def __init__(self):
            self.gate, self.most = None, 0

        def hold(self, path):
            self.gate = path

        def receive(self, message):
            if message == "block":
                open(self.gate + ".started", "w").close()
            while self.gate and os.path.exists(self.gate):
                time.sleep(0.0005)
            self.most = max(self.most, self.ref._hub.queued)  # read ahead, waiting

        def most_queued(self):
            return self.most

    def read_ahead(s, marker):
        r = s.spawn(Reader)
        open(marker, "w").close()
        r.hold(marker).result(timeout=30)
        r.tell("block")
        for i in range(3000):
            r.tell(i)
        deadline = time.monotonic() + 60  # the backlog is in the ring, the handler held
        while not (os.path.exists(marker + ".started")
                   and s.metrics()["actors"][r.name]["in_flight"] >= 3000):
            assert time.monotonic() < deadline, "the backlog never built up"
            time.sleep(0.01)
        os.unlink(marker)
        return r.most_queued().result(timeout=60)

    if __name__ == "__main__":
        out = {}
        with actorq.ActorSystem() as s:
            k = s.spawn(Keeper)
            out["pid"] = k.pid().result(timeout=30)
            out["got"] = [k.keep(np.full(200_000, i, dtype=np.uint8)).result(timeout=30)
                          for i in range(6)]
            names = [n[len(s.run_id):] for n in list_segments(s.run_id)]
            out["pooled"] = sum(1 for n in names if n.startswith("b"))
            out["fresh"] = sum(1 for n in names if n.startswith("o"))
            out["kept"] = k.check().result(timeout=30)
            out["most_queued"] = read_ahead(s, sys.argv[1])
        print(json.dumps(out), flush=True)
    """
)


def _run(tmp_path, **env):
    script = tmp_path / "prog.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "gate")], capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_environment_only_settings_take_effect(tmp_path):
    prof = tmp_path / "prof"
    prof.mkdir()
    out = _run(tmp_path, ACTORQ_OOB_POOL_BYTES=str(600_000), ACTORQ_READ_AHEAD="8",
               ACTORQ_PROFILE_DIR=str(prof))
    # every array arrived intact, viewing shared memory (no copy)
    assert out["got"] == [[i, i, False] for i in range(6)]
    assert out["kept"] == [[i, i, 200_000] for i in range(6)]
    # the pool holds two 256 KiB blocks (600,000 bytes); both stay viewed by the arrays
    # kept, so the other four took fresh segments, unlinked once their records were
    # committed (their mappings live on in the arrays)
    assert out["pooled"] == 2
    assert out["fresh"] == 0
    # read-ahead: 8 calls, passed by at most part of one record (a burst of 256)
    assert out["most_queued"] <= 8 + 256
    # profiles: one per actor process that ended normally
    wait_until(lambda: (prof / f"actor-{out['pid']}.prof").exists())
    stats = pstats.Stats(str(prof / f"actor-{out['pid']}.prof"))
    assert any(func[2] == "keep" for func in stats.stats)


def test_the_defaults_pool_every_block_and_read_far_ahead(tmp_path):
    out = _run(tmp_path)  # the control: the same program without the variables
    assert out["pooled"] == 6
    assert out["most_queued"] > 8 + 256
    assert out["kept"] == [[i, i, 200_000] for i in range(6)]

