"""The benchmarks' shared file mappings are owned like actorq's own segments."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actorq._transport.shm import list_segments, sweep
from actorq.bench.mapped import MappedFile


def test_the_file_is_named_as_a_segment_of_this_process_and_unlink_removes_it():
    f = MappedFile(MappedFile.make(4096, "probe"), 4096)
    counts = f.keep(f.buf[:64].cast("q"))
    counts[3] = 7
    name = os.path.basename(f.path)
    assert name.startswith(f"aq_{os.getpid()}_")
    assert name in list_segments()  # what the leak guard and the sweep look at
    other = MappedFile(f.path, 4096)  # another mapping of the same file sees the write
    assert other.buf[24:32].cast("q")[0] == 7
    other.close()
    f.unlink()
    assert not os.path.exists(f.path)


def test_unlink_removes_the_name_even_when_a_view_is_still_held():
    f = MappedFile(MappedFile.make(4096, "held"), 4096)
    held = f.buf[:8]  # not registered with keep(): close() cannot release it
    with pytest.raises(BufferError):
        f.unlink()
    assert not os.path.exists(f.path)
    held.release()
    f.close()


def test_a_file_left_by_a_killed_owner_is_swept():
    code = ("import os; from actorq.bench.mapped import MappedFile; "
            "print(MappedFile.make(4096, 'orphan'), flush=True); os._exit(9)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    path = run.stdout.strip()
    assert os.path.exists(path), run.stderr
    assert os.path.basename(path) in sweep()
    assert not os.path.exists(path)
