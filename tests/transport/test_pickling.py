"""A record's pickle (actorq/_transport/pickling.py): plain numpy arrays reduced by actorq
come back equal, with their dtype, shape and writability, their buffers handed out of band
exactly as numpy's own reduction hands them; every other object is pickled as before; the
per-thread pickler is safe to re-enter and to use from many threads."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from actorq._transport import pickling

THRESHOLD = 64 * 1024


def dumps_loads(obj):
    """Pickle *obj* as a record is (large buffers out of band); load it back."""
    out_of_band = []

    def take(buf):
        if buf.raw().nbytes >= THRESHOLD:
            out_of_band.append(buf)
            return False
        return True

    body = pickling.dumps(obj, take)
    return body, out_of_band, pickle.loads(body, buffers=[b.raw() for b in out_of_band])


def same(a, b):
    assert type(b) is type(a)
    assert (b.dtype, b.shape) == (a.dtype, a.shape)
    assert b.flags.writeable == a.flags.writeable
    np.testing.assert_array_equal(b, a)


PLAIN = [
    pytest.param(lambda: np.arange(10.0), id="float64"),
    pytest.param(lambda: np.arange(12, dtype=np.int32).reshape(3, 4), id="int32-2d"),
    pytest.param(lambda: np.array(5, dtype=np.uint8), id="0-d"),
    pytest.param(lambda: np.zeros((0, 3)), id="empty"),
    pytest.param(lambda: np.arange(4, dtype=">i4"), id="big-endian"),
    pytest.param(lambda: np.array([True, False]), id="bool"),
    pytest.param(lambda: np.arange(3, dtype=np.complex64), id="complex64"),
    pytest.param(lambda: np.arange(1 << 17, dtype=np.float16), id="float16-large"),
]


@pytest.mark.parametrize("make", PLAIN)
@pytest.mark.parametrize("writeable", [True, False])
def test_plain_arrays_are_reduced_by_actorq_and_come_back_equal(make, writeable):
    arr = make()
    arr.flags.writeable = writeable
    body, _oob, back = dumps_loads([("call", (arr,), {})])
    same(arr, back[0][1][0])
    assert b"rebuild_array" in body
    assert b"numpy" not in body  # no numpy global to import, neither the function nor dtype


def test_a_large_plain_array_goes_out_of_band_as_its_own_memory():
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    body, oob, back = dumps_loads([arr])
    assert len(oob) == 1
    assert len(body) < 200  # the record holds no data
    raw = oob[0].raw()
    assert np.frombuffer(raw, dtype=np.float64).ctypes.data == arr.ctypes.data  # no copy
    same(arr, back[0])


OTHERS = [
    pytest.param(lambda: np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]), id="structured"),
    pytest.param(lambda: np.array([1, "x"], dtype=object), id="object"),
    pytest.param(lambda: np.arange(3).astype("M8[ns]"), id="datetime64"),
    pytest.param(lambda: np.array(["ab", "c"]), id="unicode"),
    pytest.param(lambda: np.arange(6.0).reshape(2, 3).T, id="fortran-order"),
    pytest.param(lambda: np.arange(10.0)[::2], id="strided"),
    pytest.param(lambda: np.ma.masked_array([1, 2], mask=[0, 1]), id="subclass"),
    pytest.param(lambda: np.arange(3.0).astype(np.dtype(float, metadata={"u": 1})),
                 id="dtype-metadata"),
]


@pytest.mark.parametrize("make", OTHERS)
def test_other_arrays_are_pickled_by_numpy_as_before(make):
    arr = make()
    body, _oob, back = dumps_loads([arr])
    assert b"rebuild_array" not in body
    assert body == pickle.dumps([arr], protocol=5)
    assert type(back[0]) is type(arr)
    assert back[0].dtype == arr.dtype
    np.testing.assert_array_equal(back[0], arr)


def test_records_without_arrays_pickle_as_pickle_dumps_does():
    payload = b"y" * 300_000  # a large bytes object: handed to the pickler's write as is
    msgs = [(1, 7, 0, "put", ("key", {"n": 1.5, "t": (1, 2)}, payload), {"k": None})]
    body, oob, back = dumps_loads(msgs)
    assert body == pickle.dumps(msgs, protocol=5)
    assert oob == []
    assert back == msgs


def test_a_record_pickled_while_another_is_being_pickled_gets_its_own_pickler():
    inner = []

    class SendsWhilePickled:
        def __reduce__(self):  # user code that sends a message from inside a pickle
            inner.append(dumps_loads([np.arange(3.0), "inner"])[2])
            return (str, ("outer",))

    _body, _oob, back = dumps_loads([SendsWhilePickled(), np.arange(2.0)])
    assert back[0] == "outer"
    same(np.arange(2.0), back[1])
    same(np.arange(3.0), inner[0][0])
    assert inner[0][1] == "inner"
    _body, _oob, again = dumps_loads([np.arange(4.0)])  # the thread's pickler still works
    same(np.arange(4.0), again[0])


def test_a_failed_pickle_leaves_the_pickler_ready_for_the_next_record():
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        dumps_loads([np.arange(3.0), lambda: 1])
    _body, _oob, back = dumps_loads([np.arange(5.0), "after"])
    same(np.arange(5.0), back[0])
    assert back[1] == "after"


def test_threads_pickle_at_once_each_with_its_own_pickler():
    errors = []

    def work(k):
        try:
            for i in range(200):
                arr = np.full((k + 1, 3), float(i))
                _body, _oob, back = dumps_loads([arr, k, i])
                same(arr, back[0])
                assert back[1:] == [k, i]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert not any(t.is_alive() for t in threads)


def test_only_a_lone_message_holding_an_array_is_worth_this_pickler():
    arr = np.arange(3.0)
    assert pickling.holds_array((1, 7, 0, "put", (arr,), {}))  # a call's argument
    assert pickling.holds_array((4, 7, True, arr, ""))  # a reply's value
    assert not pickling.holds_array((1, 7, 0, "put", ({"a": arr},), {}))  # deeper: no
    assert not pickling.holds_array((1, 7, 0, "put", ("x", 1.5), {}))
    assert not pickling.holds_array((1, 7, 0, "put", (np.ma.masked_array([1]),), {}))
