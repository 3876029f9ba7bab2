"""Code pickles (``actorq/_serialization.py``): the main script's classes and functions go
by name, with a by-value copy as the fallback, made once per object (issue 15: it cost
most of a spawn's time in the user's process)."""

from __future__ import annotations

import sys

from actorq import _serialization
from actorq._serialization import dumps_code, loads


def test_main_script_code_goes_by_name_with_a_copy_pickled_once(monkeypatch):
    main = sys.modules["__main__"]

    def triple(x):
        return 3 * x

    triple.__module__ = "__main__"
    triple.__qualname__ = "actorq_test_triple"
    monkeypatch.setattr(main, "actorq_test_triple", triple, raising=False)
    first = dumps_code(triple)
    copy = _serialization._BY_VALUE[triple]  # made by the first pickle...
    second = dumps_code((triple, 2))
    assert _serialization._BY_VALUE[triple] is copy  # ... and not again
    assert copy in first  # it travels with every pickle
    assert copy in second
    assert loads(first) is triple  # found by name in this process
    monkeypatch.delattr(main, "actorq_test_triple")
    fn, arg = loads(second)  # not found by name: the copy, which still works
    assert fn is not triple
    assert fn(arg) == 6
