"""The joblib backend "actorq": Parallel, scikit-learn's n_jobs, failures."""

from __future__ import annotations

import math
import os
import signal

import joblib
import pytest

from actorq.integrations import joblib as aq_joblib


@pytest.fixture
def backend():
    aq_joblib.register()
    yield
    aq_joblib.shutdown()


def pid_of(_):
    return os.getpid()


def kill_self_once(marker):
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "ok"
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def test_parallel_runs_on_actorq_workers(backend):
    with joblib.parallel_config(backend="actorq", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(math.sqrt)(i * i) for i in range(20))
        pids = set(joblib.Parallel(batch_size=1)(joblib.delayed(pid_of)(i) for i in range(20)))
    assert out == [float(i) for i in range(20)]
    assert os.getpid() not in pids
    assert len(aq_joblib._executors) == 1  # reused across Parallel calls


def test_exceptions_come_back(backend):
    with joblib.parallel_config(backend="actorq", n_jobs=2), pytest.raises(ZeroDivisionError):
        joblib.Parallel()(joblib.delayed(divmod)(1, d) for d in (1, 0, 2))


def test_a_worker_killed_mid_batch_does_not_fail_the_call(backend, tmp_path):
    marker = str(tmp_path / "killed")
    with joblib.parallel_config(backend="actorq", n_jobs=2):
        out = joblib.Parallel(batch_size=1)(
            joblib.delayed(kill_self_once)(marker) for _ in range(4))
    assert out == ["ok"] * 4


def test_scikit_learn_cross_val_score(backend):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500)
    with joblib.parallel_config(backend="actorq"):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=2)
    expected = cross_val_score(model, X, y, cv=5, n_jobs=1)
    assert list(scores) == pytest.approx(list(expected))
    assert scores.mean() > 0.9
    assert aq_joblib._executors[2].pool.statistics().succeeded >= 1  # it ran on actorq
