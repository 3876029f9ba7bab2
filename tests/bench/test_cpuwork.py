"""The benchmarks' CPU work (actorq/bench/cpuwork.py): what it returns, bad input."""

from __future__ import annotations

import pytest

from actorq.bench.cpuwork import calibrate, cpu_per_task, spin, spin_many


def test_spin_returns_the_cpu_it_took_and_spin_many_their_sum():
    one = spin(20_000, "dep", 2)  # dependencies are only received
    assert isinstance(one, float)
    assert one > 0
    many = spin_many(20_000, 3)
    assert many > 0
    assert cpu_per_task([0.004, 0.006]) == pytest.approx(0.005)
    assert cpu_per_task([]) == 0.0


def test_calibrate_returns_a_count_and_refuses_a_non_positive_length():
    n = calibrate(0.001)
    assert isinstance(n, int)
    assert n >= 1
    with pytest.raises(ValueError, match="positive number of seconds"):
        calibrate(0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        calibrate(float("nan"))
