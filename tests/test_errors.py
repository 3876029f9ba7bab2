"""Every actorq error pickles (errors cross processes) and sits under ActorqError."""

from __future__ import annotations

import pickle
import subprocess
import sys

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


def test_a_script_without_a_main_guard_is_told_why_its_actors_die(tmp_path):
    # forkserver and spawn import the main module again in every new process; a script
    # that starts its system at import time kills each actor process before it boots.
    script = tmp_path / "noguard.py"
    script.write_text(
        "import actorq\n"
        "class A(actorq.Actor):\n"
        "    def ping(self):\n"
        "        return 1\n"
        "with actorq.ActorSystem(start_method='forkserver') as s:\n"
        "    print(s.spawn(A).ping().result(timeout=30))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(("actorq.ActorStopped", "actorq.ActorCrashed")), last
    assert 'if __name__ == "__main__":' in last


def test_the_runtime_raises_no_bare_timeout_error():
    """Timeouts of the runtime are ActorqErrors (CallTimeout, StartTimeout), never bare."""
    import ast
    from pathlib import Path

    pkg = Path(actorq.__file__).parent
    bare = []
    for path in pkg.rglob("*.py"):
        if path.name == "testing.py" or "bench" in path.parts:
            continue  # test and benchmark helpers, not the runtime
        bare.extend(f"{path.relative_to(pkg)}:{node.lineno}"
                    for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and getattr(node.exc.func, "id", None) == "TimeoutError")
    assert not bare, bare


def test_wait_ready_times_out_with_start_timeout():
    class Slow(actorq.Actor):
        def __init__(self):
            import time

            time.sleep(30)

    with actorq.ActorSystem(stop_timeout=0.5) as s:
        ref = s.spawn(Slow, name="slow")
        with pytest.raises(actorq.StartTimeout, match="slow") as info:
            s.wait_ready(ref, timeout=0.05)
        assert isinstance(info.value, TimeoutError)


def test_decode_error_keeps_its_kind_and_is_a_type_error():
    back = pickle.loads(pickle.dumps(actorq.DecodeError("x", "reply")))
    assert back.kind == "reply"
    assert isinstance(back, TypeError)


def test_encode_error_is_a_pickling_error_and_a_type_error():
    back = pickle.loads(pickle.dumps(actorq.EncodeError("the return value of f()")))
    assert str(back) == "the return value of f()"
    assert isinstance(back, pickle.PicklingError)
    assert isinstance(back, TypeError)
    assert isinstance(back, actorq.ActorqError)


def test_initializer_failed_is_a_broken_executor():
    import concurrent.futures

    assert issubclass(actorq.InitializerFailed, concurrent.futures.BrokenExecutor)
