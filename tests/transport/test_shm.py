"""Tests for named POSIX shared-memory segments (actorq._transport.shm)."""

from __future__ import annotations

import multiprocessing
import os
import secrets
from collections.abc import Iterator

import pytest

from actorq._ids import SEGMENT_PREFIX, new_run_prefix, process_stamp
from actorq._transport import shm
from actorq._transport.shm import Segment, list_segments, sweep, unlink_prefix


def _path(name: str) -> str:
    return os.path.join(shm.SHM_DIR, name)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh run prefix of this process; whatever is left under it is unlinked."""
    p = new_run_prefix()
    try:
        yield p
    finally:
        unlink_prefix(p)


def _wait_forever(conn) -> None:  # type: ignore[no-untyped-def]
    conn.recv()  # returns (or raises EOFError) once the parent lets go


def _dead_stamp() -> str:
    """The stamp of a process that existed and has exited (and been reaped)."""
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_wait_forever, args=(child_end,), daemon=True)
    child.start()
    try:
        stamp = process_stamp(child.pid)  # type: ignore[arg-type]
        assert stamp is not None
    finally:
        parent_end.send(None)
        parent_end.close()
        child_end.close()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
    assert not child.is_alive()
    return stamp


def test_create_attach_close_unlink_round_trip(prefix: str) -> None:
    name = prefix + "roundtrip"
    seg = Segment.create(name, 8192)
    try:
        assert seg.name == name
        assert seg.size == 8192
        assert len(seg.buf) == 8192
        assert os.path.exists(_path(name))
        assert name in list_segments()
        assert name in list_segments(prefix)
        seg.buf[:5] = b"hello"
        seg.buf[-3:] = b"end"

        other = Segment.attach(name)
        try:
            assert other.size == 8192
            assert bytes(other.buf[:5]) == b"hello"
            assert bytes(other.buf[-3:]) == b"end"
            other.buf[100:103] = b"abc"  # shared both ways
            assert bytes(seg.buf[100:103]) == b"abc"
        finally:
            other.close()
        other.close()  # idempotent

        with pytest.raises(FileExistsError):
            Segment.create(name, 4096)
        assert os.path.exists(_path(name))  # a failed create leaves the existing one alone

        seg.unlink()
        assert not os.path.exists(_path(name))
        assert name not in list_segments()
        # the mapping outlives the name
        assert bytes(seg.buf[:5]) == b"hello"
        seg.unlink()  # idempotent
        with pytest.raises(FileNotFoundError):
            Segment.attach(name)
    finally:
        seg.close()
        seg.unlink()
    assert "roundtrip" in repr(seg)


def test_create_without_prefault(prefix: str) -> None:
    name = prefix + "noprefault"
    seg = Segment.create(name, 4096, prefault=False)
    try:
        assert bytes(seg.buf[:16]) == bytes(16)  # a new segment reads as zeros
        seg.buf[0] = 7
        view = seg.buf[:1]
        assert view[0] == 7
        view.release()
        seg.close()  # a released view does not block the unmap
    finally:
        seg.close()
        seg.unlink()
    assert not os.path.exists(_path(name))


def test_close_with_exported_view_does_not_raise(prefix: str) -> None:
    name = prefix + "exported"
    seg = Segment.create(name, 4096)
    try:
        view = seg.buf[:8]
        seg.close()  # BufferError is swallowed; the mapping stays until the view goes
        view[0] = 1
        assert view[0] == 1
        view.release()
    finally:
        seg.close()
        seg.unlink()


def test_sweep_removes_dead_runs_and_keeps_live_ones(prefix: str) -> None:
    dead_stamp = _dead_stamp()
    assert process_stamp(int(dead_stamp.split("_")[0])) != dead_stamp
    dead_name = f"{SEGMENT_PREFIX}{dead_stamp}_{secrets.token_hex(3)}_seg"
    # this process's pid with a start time it does not have: a "reused pid"
    pid = os.getpid()
    me = process_stamp(pid)
    assert me is not None
    start = int(me.split("_")[1], 16)
    reused_name = f"{SEGMENT_PREFIX}{pid}_{start + 1:x}_{secrets.token_hex(3)}_seg"
    live_name = prefix + "sweep_live"
    unparsable = f"{SEGMENT_PREFIX}notapid_{secrets.token_hex(3)}_seg"
    names = [dead_name, reused_name, live_name, unparsable]
    try:
        for name in names:
            Segment.create(name, 4096, prefault=False).close()
        removed = sweep()
        assert dead_name in removed
        assert reused_name in removed
        assert live_name not in removed
        assert unparsable not in removed
        assert not os.path.exists(_path(dead_name))
        assert not os.path.exists(_path(reused_name))
        assert os.path.exists(_path(live_name))
        assert os.path.exists(_path(unparsable))
        # a second sweep has nothing of ours left to remove
        again = sweep()
        assert not set(again) & set(names)
        assert os.path.exists(_path(live_name))
    finally:
        for name in names:
            shm._unlink_name(name)


def test_sweep_removes_every_segment_of_a_dead_run() -> None:
    dead_prefix = f"{SEGMENT_PREFIX}{_dead_stamp()}_{secrets.token_hex(3)}_"
    names = [dead_prefix + f"seg{i}" for i in range(3)]
    try:
        for name in names:
            Segment.create(name, 4096, prefault=False).close()
        removed = sweep()
        assert set(names) <= set(removed)
        assert list_segments(dead_prefix) == []
    finally:
        unlink_prefix(dead_prefix)


def test_unlink_prefix(prefix: str) -> None:
    other = new_run_prefix()
    assert other != prefix
    mine = [prefix + f"seg{i}" for i in range(3)]
    theirs = other + "seg0"
    try:
        for name in [*mine, theirs]:
            Segment.create(name, 4096, prefault=False).close()
        assert list_segments(prefix) == sorted(mine)
        assert unlink_prefix(prefix) == 3
        assert list_segments(prefix) == []
        for name in mine:
            assert not os.path.exists(_path(name))
        assert os.path.exists(_path(theirs))
        assert unlink_prefix(prefix) == 0
    finally:
        unlink_prefix(prefix)
        unlink_prefix(other)
    assert not os.path.exists(_path(theirs))


def test_names_gone_before_unlink_are_not_counted(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment listed but unlinked by someone else meanwhile is not reported as removed."""
    dead_prefix = f"{SEGMENT_PREFIX}{_dead_stamp()}_{secrets.token_hex(3)}_"
    real_dead = dead_prefix + "real"
    ghost_dead = dead_prefix + "ghost"  # listed, never created
    real_mine = prefix + "real"
    ghost_mine = prefix + "ghost"
    real_list = shm.list_segments

    def listing(p: str = SEGMENT_PREFIX) -> list[str]:
        extra = [n for n in (ghost_dead, ghost_mine) if n.startswith(p)]
        return sorted([*real_list(p), *extra])

    try:
        Segment.create(real_dead, 4096, prefault=False).close()
        Segment.create(real_mine, 4096, prefault=False).close()
        monkeypatch.setattr(shm, "list_segments", listing)
        removed = sweep()
        assert real_dead in removed
        assert ghost_dead not in removed
        assert unlink_prefix(prefix) == 1
        assert not os.path.exists(_path(real_mine))
    finally:
        monkeypatch.undo()
        unlink_prefix(dead_prefix)
        unlink_prefix(prefix)
