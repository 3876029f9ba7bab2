"""Dask collections through actorq's Dask scheduler (actorq/integrations/dask.py)."""

from __future__ import annotations

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import actorq
from actorq.integrations import dask as aq_dask


def test_dask_array_same_result_as_dask(system):
    x = da.random.RandomState(0).random((1200, 1200), chunks=(300, 300))
    y = (x @ x.T + x).sum(axis=0)
    got = y.compute(scheduler=aq_dask.get, system=system)
    np.testing.assert_allclose(got, y.compute(scheduler="sync"))


def test_dask_bag_with_lambdas(system):
    b = db.from_sequence(range(2000), npartitions=8).map(lambda v: v * 3).filter(
        lambda v: v % 2 == 0)
    assert b.sum().compute(scheduler=aq_dask.get, system=system) == sum(
        v * 3 for v in range(2000) if (v * 3) % 2 == 0)
    assert sorted(b.compute(scheduler=aq_dask.get, system=system)) == sorted(b.compute(
        scheduler="sync"))


def test_dask_dataframe_groupby(system):
    pdf = pd.DataFrame({"k": np.arange(3000) % 11, "v": np.arange(3000.0)})
    df = dd.from_pandas(pdf, npartitions=6)
    got = df.groupby("k").v.agg(["sum", "mean"]).compute(scheduler=aq_dask.get, system=system)
    pd.testing.assert_frame_equal(got.sort_index(), pdf.groupby("k").v.agg(["sum", "mean"]))


def test_dask_delayed_and_several_keys(system):
    @dask.delayed
    def inc(v):
        return v + 1

    a = inc(1)
    b = inc(a)
    out = dask.compute(a, [b, inc(b)], scheduler=aq_dask.get, system=system)
    assert out == (2, [3, 4])


def test_exceptions_are_reraised_as_dask_does(system):
    @dask.delayed
    def boom(v):
        raise KeyError(v)

    total = dask.delayed(sum)([boom("missing"), 2])
    with pytest.raises(KeyError, match="missing") as info:
        total.compute(scheduler=aq_dask.get, system=system)
    assert isinstance(info.value.__cause__, actorq.RemoteTraceback)
    with pytest.raises(KeyError):
        total.compute(scheduler="sync")


def test_default_system_is_used_without_one():
    try:
        assert dask.delayed(sum)([1, 2, 3]).compute(scheduler=aq_dask.get) == 6
    finally:
        aq_dask.default_system().close()


def test_cycle_in_a_dask_graph_is_named():
    with pytest.raises(actorq.GraphError, match="cycle"):
        aq_dask.to_graph({"a": (sum, ["b"]), "b": (sum, ["a"])})
