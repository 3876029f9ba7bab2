"""``actorq._native.copy_into``: the C copy (streaming stores) and its Python fallback copy
exactly the same bytes, refuse bad input with a clear error, and a system without the C
helpers (``ACTORQ_NO_NATIVE=1``) sends large arrays the same way. ``BlockView``: a
receiver's view of a block clears the block's ``viewed`` word when the last array over
it is gone, not before."""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import actorq._native as native
from actorq._transport.shm import Segment

IMPLS = [pytest.param(native._copy_into_py, id="python")]
if native._copy is not None:
    IMPLS.append(pytest.param(native._copy.copy_into, id="c"))


@pytest.fixture(autouse=True)
def _stream_everything():
    """Small copies take the streaming path too, so that its head, body and tail are tested
    at every alignment (by default only copies of a MiB or more stream)."""
    if native._copy is None:
        yield
        return
    old = native._copy.set_min_streaming(0)
    yield
    native._copy.set_min_streaming(old)


def test_the_c_helpers_are_built_where_a_compiler_is():
    """CI installs with a compiler: the tests there must cover the C copy, not skip it."""
    if os.environ.get("ACTORQ_NO_NATIVE", "") not in ("", "0"):
        assert native.NATIVE is False
        assert native.copy_into is native._copy_into_py
    elif shutil.which("cc") or shutil.which("gcc"):
        assert native.NATIVE is True
        assert native.copy_into is native._copy.copy_into


@pytest.mark.parametrize("copy_into", IMPLS)
@given(size=st.integers(0, 70_000), offset=st.integers(0, 200), src_skip=st.integers(0, 63))
def test_copies_exactly_the_bytes_and_nothing_around_them(copy_into, size, offset, src_skip):
    rng = np.random.default_rng(size * 1000 + offset)
    backing = rng.integers(0, 256, size + src_skip, dtype=np.uint8)
    src = memoryview(backing)[src_skip:]  # every source alignment
    dst = bytearray(b"\xa5" * (size + offset + 64))
    assert copy_into(dst, offset, src) == size
    assert dst[offset : offset + size] == src.tobytes()
    assert dst[:offset] == b"\xa5" * offset
    assert dst[offset + size :] == b"\xa5" * 64


@pytest.mark.parametrize("copy_into", IMPLS)
def test_an_8_mib_array_into_a_shared_memory_segment(copy_into):
    arr = np.random.default_rng(1).random((1 << 20) + 3)  # 8 MiB and 24 bytes
    raw = memoryview(arr).cast("B")
    seg = Segment.create(f"aq_test_copy_{os.getpid()}", raw.nbytes + 4096)
    try:
        assert copy_into(seg.buf, 17, raw) == raw.nbytes
        got = np.frombuffer(bytes(seg.buf[17 : 17 + raw.nbytes]), dtype=np.float64)
        np.testing.assert_array_equal(got, arr)
    finally:
        seg.close()
        seg.unlink()


@pytest.mark.parametrize("copy_into", IMPLS)
def test_any_contiguous_buffer_is_a_destination_whatever_its_item_format(copy_into):
    """The messaging suite's floor copies a float64 array into another."""
    src = np.arange(1000, dtype=np.float64)
    dst = np.zeros(1002, dtype=np.float64)
    assert copy_into(dst, 8, src) == 8000
    np.testing.assert_array_equal(dst[1:1001], src)
    assert dst[0] == 0
    assert dst[1001] == 0


@pytest.mark.parametrize("copy_into", IMPLS)
def test_a_copy_that_does_not_fit_is_refused_naming_the_sizes(copy_into):
    dst = bytearray(100)
    with pytest.raises(ValueError, match=r"60 bytes at offset 50 do not fit a buffer of 100"):
        copy_into(dst, 50, b"x" * 60)
    with pytest.raises(ValueError, match=r"at offset -1"):
        copy_into(dst, -1, b"x")
    assert dst == bytearray(100)  # nothing written


@pytest.mark.parametrize("copy_into", IMPLS)
def test_a_read_only_destination_is_refused(copy_into):
    with pytest.raises(TypeError):
        copy_into(b"\0" * 10, 0, b"abc")


@pytest.mark.parametrize("copy_into", IMPLS)
def test_a_non_contiguous_source_is_refused(copy_into):
    strided = np.arange(20, dtype=np.uint8)[::2]
    with pytest.raises((BufferError, TypeError, ValueError)):
        copy_into(bytearray(20), 0, strided)


def test_without_the_c_helpers_large_arrays_travel_the_same(tmp_path):
    """A program with ``ACTORQ_NO_NATIVE=1`` uses the fallback and sends an 8 MiB array
    out of band to an actor, which sees exactly its values."""
    program = tmp_path / "no_native.py"
    program.write_text(textwrap.dedent("""
        import numpy as np
        import actorq
        import actorq._native

        class Sum(actorq.Actor):
            def check(self, arr):
                return float(arr.sum()), arr.shape, bool(arr.flags.owndata)

        if __name__ == "__main__":
            arr = np.random.default_rng(7).random(1 << 20)
            with actorq.ActorSystem() as system:
                total, shape, owns = system.spawn(Sum).check(arr).result(timeout=60)
            print(actorq._native.NATIVE, total == float(arr.sum()), shape, owns)
    """))
    env = {**os.environ, "ACTORQ_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, str(program)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "(1048576,)", "False"], out.stderr


def test_a_built_helper_is_not_older_than_its_c_source():
    """In a checkout, an edited ``.c`` needs a rebuild (``pip install -e .``, or
    ``python setup.py build_ext --inplace``): else the tests would test the old binary."""
    here = os.path.dirname(native.__file__)
    for name in os.listdir(here):
        if name.endswith(".c"):
            stem = name[:-2]
            built = [n for n in os.listdir(here) if n.startswith(stem + ".") and n.endswith(".so")]
            for so in built:
                src_time = os.path.getmtime(os.path.join(here, name))
                assert os.path.getmtime(os.path.join(here, so)) >= src_time, (
                    f"{so} is older than {name}: rebuild with `pip install -e .` or "
                    f"`python setup.py build_ext --inplace`")


# -- a copy shared with the helper thread (_copy.c, "a second copying thread") ----------

needs_helper = pytest.mark.skipif(native._copy is None, reason="without the C helpers")
CHUNK = 128 << 10


@contextlib.contextmanager
def sharing_every_copy(caller_copies: bool = True) -> Iterator[None]:
    """Every copy (of any size) is offered to the helper thread; restored after."""
    old_threads, old_min = native._copy.set_copy_threads(2, 0)
    native._copy._set_caller_copies(caller_copies)
    try:
        yield
    finally:
        native._copy.set_copy_threads(old_threads, old_min)
        native._copy._set_caller_copies(True)


@pytest.fixture
def shared_copies():
    with sharing_every_copy():
        yield


@needs_helper
@pytest.mark.parametrize("caller_copies", [True, False], ids=["both", "helper-only"])
@given(size=st.sampled_from([1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 5 * CHUNK]),
       offset=st.integers(0, 100), src_skip=st.integers(0, 63))
def test_a_shared_copy_copies_exactly_the_bytes_whoever_takes_the_chunks(
        caller_copies, size, offset, src_skip):
    """Chunk edges at every alignment; "helper-only": the caller takes no chunk and waits,
    so that the helper thread's own path (its chunks, its fences, its count) is what is
    tested, whatever the scheduler does."""
    rng = np.random.default_rng(size + offset)
    backing = rng.integers(0, 256, size + src_skip, dtype=np.uint8)
    src = memoryview(backing)[src_skip:]
    dst = bytearray(b"\xa5" * (size + offset + 64))
    _, chunks_before = native._copy.copy_stats()
    with sharing_every_copy(caller_copies):
        assert native._copy.copy_into(dst, offset, src) == size
    assert dst[offset : offset + size] == src.tobytes()
    assert dst[:offset] == b"\xa5" * offset
    assert dst[offset + size :] == b"\xa5" * 64
    if not caller_copies:
        assert native._copy.copy_stats()[1] - chunks_before == -(-size // CHUNK)


@needs_helper
def test_the_helper_thread_is_started_once_and_copies_into_shared_memory(shared_copies):
    """An 8 MiB copy into a segment, many times: the bytes exact each time, every copy
    offered to the helper (one helper thread however many copies: the subprocess test
    below counts the threads, which other tests' threads would blur here)."""
    arr = np.random.default_rng(3).random(1 << 20)
    raw = memoryview(arr).cast("B")
    shared_before, _ = native._copy.copy_stats()
    seg = Segment.create(f"aq_test_copy2_{os.getpid()}", raw.nbytes + 4096)
    try:
        for i in range(20):
            arr[i] = -i  # a different array each time
            if i == 10:
                seg.buf[:] = bytes(len(seg.buf))  # and once into zeros
            assert native._copy.copy_into(seg.buf, 64, raw) == raw.nbytes
            got = np.frombuffer(seg.buf, dtype=np.float64, count=arr.size, offset=64)
            np.testing.assert_array_equal(got, arr)
            del got
    finally:
        seg.close()
        seg.unlink()
    assert native._copy.copy_stats()[0] - shared_before == 20


@needs_helper
def test_threads_copying_at_once_each_get_their_own_bytes(shared_copies):
    """Two Python threads copy at the same time (the GIL is released): one shares its copy
    with the helper, the other copies alone; neither gets the other's bytes."""
    size = 3 << 20
    srcs = [np.full(size, k + 1, dtype=np.uint8) for k in range(4)]
    errors: list[str] = []

    def worker(k: int) -> None:
        dst = bytearray(size)
        for _ in range(30):
            native._copy.copy_into(dst, 0, srcs[k])
            if dst.count(k + 1) != size:
                errors.append(f"thread {k}: foreign bytes")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


@needs_helper
def test_a_forked_child_copies_with_a_helper_of_its_own(tmp_path):
    """After a fork, the child has no helper thread (only the forking thread survives):
    its first large copy starts one, and copies exactly, with the parent's helper busy or
    not at the fork."""
    program = tmp_path / "fork_copy.py"
    program.write_text(textwrap.dedent("""
        import os, sys
        import numpy as np
        from actorq._native import _copy

        _copy.set_copy_threads(2, 0)
        src = np.random.default_rng(5).random(1 << 20)
        dst = bytearray(src.nbytes)
        threads = len(os.listdir("/proc/self/task"))  # (numpy's BLAS may have its own)
        _copy.copy_into(dst, 0, src)           # the parent's helper starts
        parent_threads = len(os.listdir("/proc/self/task")) - threads
        pid = os.fork()
        if pid == 0:
            before = len(os.listdir("/proc/self/task"))
            _copy._set_caller_copies(False)    # every chunk must be the child's helper's
            out = bytearray(src.nbytes)
            _copy.copy_into(out, 0, src)
            after = len(os.listdir("/proc/self/task"))
            ok = out == memoryview(src).cast("B") and _copy.copy_stats()[1] == 64
            os._exit(0 if ok and (before, after) == (1, 2) else 3)
        _, status = os.waitpid(pid, 0)
        print(parent_threads, os.waitstatus_to_exitcode(status))
    """))
    out = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["1", "0"], out.stderr


def test_a_cgroup_cpu_quota_is_read_as_cpus():
    """``cpu.max`` of cgroup v2: a container started with ``--cpus=1.5`` has 1.5 CPUs,
    too few for a helper thread of its own."""
    assert native.cgroup_cpus("150000 100000\n") == 1.5
    assert native.cgroup_cpus("max 100000\n") is None
    assert native.cgroup_cpus("") is None
    assert native.cgroup_cpus("x 100000") is None
    assert native.cgroup_cpus("100 0") is None


@pytest.mark.parametrize(("layout", "cpus"), [
    ({"cgroup": "0::/box\n", "fs/box/cpu.max": "150000 100000\n"}, 1.5),
    ({"cgroup": "0::/\n", "fs/cpu.max": "200000 100000\n"}, 2.0),  # a container's own
    ({"cgroup": "0::/box\n", "fs/box/cpu.max": "max 100000\n"}, None),
    ({"cgroup": "0::/box\n", "fs/unified/box/cpu.max": "50000 100000\n"}, 0.5),  # hybrid
    ({"cgroup": "4:cpu,cpuacct:/docker/ab\n", "fs/cpu/docker/ab/cpu.cfs_quota_us": "100000\n",
      "fs/cpu/docker/ab/cpu.cfs_period_us": "100000\n"}, 1.0),
    ({"cgroup": "4:cpu,cpuacct:/docker/ab\n", "fs/cpu/cpu.cfs_quota_us": "300000\n",
      "fs/cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1, the host's path listed
    ({"cgroup": "4:cpu:/\n", "fs/cpu/cpu.cfs_quota_us": "-1\n",
      "fs/cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cgroup": "4:memory:/x\nnonsense\n"}, None),
])
def test_the_cgroup_cpu_quota_is_found_in_v1_and_v2_layouts(tmp_path, layout, cpus):
    for name, text in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert native.cpu_limit(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == cpus


@needs_helper
def test_copy_threads_follow_the_environment(tmp_path):
    """``ACTORQ_COPY_THREADS=1`` keeps every copy the caller's (no helper thread); with 2,
    one helper thread, however many copies it shares."""
    code = ("import os, numpy as np; from actorq._native import _copy, copy_into; "
            "n = len(os.listdir('/proc/self/task')); "
            "[copy_into(bytearray(8 << 20), 0, np.ones(1 << 20)) for _ in range(5)]; "
            "print(_copy.set_copy_threads(1)[0], _copy.copy_stats()[0], "
            "len(os.listdir('/proc/self/task')) - n)")
    for value, want in (("1", ["1", "0", "0"]), ("2", ["2", "5", "1"])):
        env = {**os.environ, "ACTORQ_COPY_THREADS": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        assert out.stdout.split() == want, (value, out.stderr)


# -- BlockView: a receiver's view of one out-of-band buffer (actorq/_transport/oob.py) ----

needs_c = pytest.mark.skipif(native.BlockView is None, reason="without the C helpers")


@pytest.fixture
def mapping():
    mm = mmap.mmap(-1, 64 * 1024)
    flags = memoryview(mm)[:16].cast("Q")
    flags[0] = 4242  # "viewed": a receiver's pid
    flags[1] = 1
    yield mm, flags
    flags.release()


@needs_c
def test_a_block_view_is_the_bytes_of_the_mapping_it_names_writable(mapping):
    mm, _flags = mapping
    mm[4096:4100] = b"abcd"
    view = memoryview(native.BlockView(mm, 4096, 1000, 0))
    assert (view.format, view.nbytes, view.readonly) == ("B", 1000, False)
    assert bytes(view[:4]) == b"abcd"
    view[4:6] = b"xy"  # written through to the mapping: no copy
    assert mm[4096:4102] == b"abcdxy"


@needs_c
def test_a_block_view_clears_viewed_once_the_last_array_over_it_is_gone(mapping):
    mm, flags = mapping
    view = native.BlockView(mm, 4096, 8000, 0)
    arr = np.frombuffer(memoryview(view), dtype=np.float64).reshape(10, 100)
    part = arr[3:5]  # a view of the array: holds it, and so the block view
    del view, arr
    gc.collect()
    assert flags[0] == 4242  # an array over it is alive
    part[0, 0] = 1.5
    del part
    assert flags[0] == 0  # the last one went: the sender may reuse the block
    assert flags[1] == 1  # "uncommitted" is the commit's to clear, not the view's


@needs_c
def test_a_block_view_without_a_flag_leaves_the_words_alone(mapping):
    mm, flags = mapping
    view = native.BlockView(mm, 4096, 100, -1)
    del view
    assert flags.tolist() == [4242, 1]


@needs_c
def test_a_block_view_holds_its_mapping(mapping):
    mm, _flags = mapping
    view = native.BlockView(mm, 4096, 100, -1)
    with pytest.raises(BufferError):
        mm.close()  # exported: it cannot be unmapped under the view
    del view


@needs_c
def test_a_block_view_that_does_not_fit_is_refused_naming_the_sizes(mapping):
    mm, _flags = mapping
    with pytest.raises(ValueError, match=r"65536 bytes at offset 4096 do not fit a buffer "
                                         r"of 65536 bytes"):
        native.BlockView(mm, 4096, 65536, -1)
    with pytest.raises(ValueError, match=r"at offset -8"):
        native.BlockView(mm, -8, 10, -1)
    with pytest.raises(ValueError, match=r"flag offset 3 is not an aligned u64"):
        native.BlockView(mm, 4096, 10, 3)
    with pytest.raises(ValueError, match=r"flag offset 65532 is not an aligned u64"):
        native.BlockView(mm, 4096, 10, 65532)
    with pytest.raises(BufferError):
        native.BlockView(b"\0" * 100, 0, 10, -1)  # read-only: an array over it is written
