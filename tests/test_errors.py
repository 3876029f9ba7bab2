"""Every actorq error pickles (errors cross processes) and sits under ActorqError."""

from __future__ import annotations

import pickle

import pytest

import actorq
from actorq import _errors

ERRORS = list(_errors.PUBLIC)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_error_round_trips_through_pickle(cls):
    exc = cls("some text") if cls is not actorq.ActorCrashed else cls("died", "signal")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert issubclass(cls, actorq.ActorqError)


def test_crashed_keeps_its_cause():
    back = pickle.loads(pickle.dumps(actorq.ActorCrashed("x", "signal")))
    assert back.cause == "signal"


def test_call_timeout_is_a_timeout_error():
    assert issubclass(actorq.CallTimeout, TimeoutError)
