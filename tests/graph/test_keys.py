"""Stable keys cover the function's code, and do not depend on hash randomisation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import actorq

ROOT = Path(__file__).resolve().parents[2]


def define(src, name="job"):
    """Functions of a module 'jobmod' whose source is *src* (same names, another body)."""
    space = {"__name__": "jobmod"}
    exec(compile(textwrap.dedent(src), "<jobmod>", "exec"), space)
    return space[name]


def key_of(fn, *args, **kwargs):
    g = actorq.Graph()
    node = g.task(fn, *args, **kwargs)
    return node.key, g.digest()


BASE = """
    SCALE = 2

    def helper(x):
        return x + 1

    def job(x, y=10):
        return helper(x) * SCALE + y
"""


def test_the_key_follows_the_code_and_not_its_position():
    key, shape = key_of(define(BASE), 1)
    assert key_of(define(BASE), 1) == (key, shape)
    assert key_of(define("\n\n\n" + BASE), 1) == (key, shape)  # moved down: same code
    edits = {
        "body": BASE.replace("* SCALE + y", "* SCALE - y"),
        "default": BASE.replace("y=10", "y=11"),
        "helper": BASE.replace("return x + 1", "return x + 2"),
        "constant": BASE.replace("SCALE = 2", "SCALE = 3"),
    }
    for what, src in edits.items():
        edited, edited_shape = key_of(define(src), 1)
        assert edited != key, what
        assert edited_shape == shape, what  # the same graph: a journal is reused


def test_closure_values_are_part_of_the_key():
    src = """
        def make(k):
            def job(x):
                return x * k
            return job
    """
    make = define(src, "make")
    assert key_of(make(2), 1)[0] == key_of(make(2), 1)[0]
    assert key_of(make(2), 1)[0] != key_of(make(3), 1)[0]


def test_a_dependent_key_changes_with_its_dependency_code():
    def keys(src):
        g = actorq.Graph()
        a = g.task(define(src), 1)
        b = g.task(_total, a, 5)
        return a.key, b.key

    a1, b1 = keys(BASE)
    a2, b2 = keys(BASE.replace("return x + 1", "return x + 5"))
    assert a1 != a2
    assert b1 != b2  # downstream runs again too


def _total(*xs):
    return sum(xs)


def test_equal_sets_and_dicts_give_equal_keys():
    fn = define(BASE)
    assert key_of(fn, {3, 1, 2})[0] == key_of(fn, {1, 2, 3})[0]
    assert key_of(fn, {"a": 1, "b": 2})[0] == key_of(fn, {"b": 2, "a": 1})[0]
    assert key_of(fn, {1, 2, 3})[0] != key_of(fn, [1, 2, 3])[0]
    assert key_of(fn, frozenset({"x"}))[0] != key_of(fn, {"x"})[0]
    assert key_of(fn, 1)[0] != key_of(fn, 1.0)[0] != key_of(fn, True)[0]


SEEDS = textwrap.dedent('''
    import hashlib, pickle
    import actorq

    WORDS = [f"w{i}" for i in range(30)]

    def job(x, opts=None):
        return x in {"alpha", "beta", "gamma", "delta"}  # a frozenset constant

    def make(tags):
        def inner(x):
            return x in tags
        return inner

    if __name__ == "__main__":
        g = actorq.Graph()
        a = g.task(job, set(WORDS), opts={w: len(w) for w in set(WORDS)})
        b = g.task(make(frozenset(WORDS)), [a, {"k": set(WORDS[:7])}])
        print(a.key, b.key, g.digest())
        print(hashlib.sha256(pickle.dumps(set(WORDS))).hexdigest())  # the control
''')


def run_with_seed(script, seed):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": str(seed)}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    return out[0], out[1]


def test_keys_are_the_same_in_interpreters_with_other_hash_seeds(tmp_path):
    script = tmp_path / "seeds.py"
    script.write_text(SEEDS)
    runs = [run_with_seed(script, seed) for seed in (1, 2, 3)]
    assert len({keys for keys, _control in runs}) == 1
    # the control: pickling the same set does differ between these interpreters
    assert len({control for _keys, control in runs}) > 1


JOB = textwrap.dedent('''
    import sys
    import actorq

    def note(path, text):
        with open(path, "a") as f:
            f.write(text + "\\n")

    def step(path, i):
        note(path, f"step{i}")
        return i * FACTOR

    def other(path, i):
        note(path, f"other{i}")
        return i

    def total(path, *xs):
        note(path, "total")
        return sum(xs)

    if __name__ == "__main__":
        effects, journal = sys.argv[1], sys.argv[2]
        g = actorq.Graph()
        steps = [g.task(step, effects, i) for i in range(4)]
        others = [g.task(other, effects, i) for i in range(4)]
        end = g.task(total, effects, *steps, *others)
        with actorq.ActorSystem() as system:
            result = system.run(g, workers=2, journal=journal)
            print("total", result[end], "from_journal", result.stats.from_journal)
''')


def test_editing_a_function_reruns_its_tasks_on_resume(tmp_path):
    effects, journal = tmp_path / "effects", tmp_path / "run.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(body):
        script = tmp_path / "job.py"
        script.write_text(JOB.replace("return i * FACTOR", body))
        done = subprocess.run([sys.executable, str(script), str(effects), str(journal)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        ran = effects.read_text().split() if effects.exists() else []
        effects.write_text("")
        return done.stdout.split(), sorted(ran)

    out, ran = run("return i * 2")
    assert out == ["total", "18", "from_journal", "0"]
    assert len(ran) == 9
    out, ran = run("return i * 2")  # unchanged: nothing runs
    assert out == ["total", "18", "from_journal", "9"]
    assert ran == []
    out, ran = run("return i * 3")  # step edited: its tasks and the total run again
    assert out == ["total", "24", "from_journal", "4"]
    assert ran == sorted([f"step{i}" for i in range(4)] + ["total"])


def make_module(name, src):
    """A module *name* (not imported from a file, so it counts as the user's)."""
    import types

    mod = types.ModuleType(name)
    exec(compile(textwrap.dedent(src), f"<{name}>", "exec"), mod.__dict__)
    return mod


HELPERS = """
    FACTOR = 2

    def scale(x):
        return x * FACTOR

    def triple(x):
        return 3 * x

    class Base:
        def offset(self):
            return 1

    class Adder(Base):
        K = 5

        def add(self, x):
            return x + self.K + self.offset()

        @staticmethod
        def zero():
            return 0

        @property
        def k(self):
            return self.K
"""

USER = """
    import json
    import numpy as np

    def job(x):
        return scale(x) + Adder().add(x) + hm.triple(x) + int(np.sum([x])) + len(json.dumps(x))
"""


def job_with(helpers_src):
    hm = make_module("helpmod", helpers_src)
    space = {"__name__": "jobmod", "hm": hm, "scale": hm.scale, "Adder": hm.Adder}
    exec(compile(textwrap.dedent(USER), "<jobmod>", "exec"), space)
    return space["job"]


def test_helpers_and_classes_of_other_user_modules_are_part_of_the_key():
    key, shape = key_of(job_with(HELPERS), 1)
    assert key_of(job_with(HELPERS), 1) == (key, shape)  # deterministic
    edits = {
        "function": HELPERS.replace("return x * FACTOR", "return x * FACTOR + 1"),
        "its constant": HELPERS.replace("FACTOR = 2", "FACTOR = 4"),
        "through the module": HELPERS.replace("return 3 * x", "return 4 * x"),
        "method": HELPERS.replace("x + self.K", "x - self.K"),
        "class constant": HELPERS.replace("K = 5", "K = 6"),
        "base class": HELPERS.replace("return 1", "return 2"),
        "staticmethod": HELPERS.replace("return 0", "return 9"),
        "property": HELPERS.replace("return self.K", "return -self.K"),
    }
    for what, src in edits.items():
        edited, edited_shape = key_of(job_with(src), 1)
        assert edited != key, what
        assert edited_shape == shape, what


def test_libraries_are_not_followed_and_the_walk_is_bounded():
    from actorq._graph import keys

    assert keys.is_user_module("jobmod")  # built with exec: the user's
    assert keys.is_user_module(__name__)  # a file outside site-packages
    for lib in ("json", "os.path", "numpy", "numpy.linalg", "actorq._graph.keys", "sys"):
        assert not keys.is_user_module(lib), lib
    # a chain of helpers far longer than MAX_CHAIN: keyed, deterministically
    src = "def f0(x):\n    return x\n" + "".join(
        f"def f{i}(x):\n    return f{i - 1}(x) + 1\n" for i in range(1, 300))
    chain = make_module("chainmod", src)
    k1, k2 = key_of(chain.f299, 1)[0], key_of(make_module("chainmod", src).f299, 1)[0]
    assert k1 == k2
    near = make_module("chainmod", src.replace("return f298(x) + 1", "return f298(x) + 2"))
    assert key_of(near.f299, 1)[0] != k1  # within the bound: followed


class Scorer:
    """A callable object of a user class."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        return self.w * x


def test_a_callable_object_is_keyed_by_its_state_and_its_class_code():
    assert key_of(Scorer(2), 1)[0] == key_of(Scorer(2), 1)[0]
    assert key_of(Scorer(2), 1)[0] != key_of(Scorer(3), 1)[0]
    mod = make_module("scoremod", "class S:\n    def __call__(self, x):\n        return x\n")
    mod2 = make_module("scoremod", "class S:\n    def __call__(self, x):\n        return -x\n")
    from actorq._graph.keys import Encoder

    assert Encoder().function(mod.S()) != Encoder().function(mod2.S())


HELPER_FILE = textwrap.dedent('''
    FACTOR = 2

    def scale(i):
        return i * FACTOR

    class Adder:
        def add(self, i):
            return i + 100
''')

TWO_MODULES = textwrap.dedent('''
    import sys
    import actorq
    from helpers import Adder, scale

    def note(path, text):
        with open(path, "a") as f:
            f.write(text + "\\n")

    def step(path, i):
        note(path, f"step{i}")
        return scale(i)

    def plus(path, i):
        note(path, f"plus{i}")
        return Adder().add(i)

    def other(path, i):
        note(path, f"other{i}")
        return i

    def total(path, *xs):
        note(path, "total")
        return sum(xs)

    if __name__ == "__main__":
        effects, journal = sys.argv[1], sys.argv[2]
        g = actorq.Graph()
        parts = [g.task(fn, effects, i) for fn in (step, plus, other) for i in range(3)]
        end = g.task(total, effects, *parts)
        with actorq.ActorSystem() as system:
            result = system.run(g, workers=2, journal=journal)
            print("total", result[end], "from_journal", result.stats.from_journal)
''')


def test_editing_a_helper_in_another_module_reruns_its_tasks_on_resume(tmp_path):
    effects, journal = tmp_path / "effects", tmp_path / "run.db"
    (tmp_path / "job.py").write_text(TWO_MODULES)
    helpers = tmp_path / "helpers.py"
    # no .pyc: an edit within the same second, of the same size, must be seen
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(src):
        helpers.write_text(src)
        done = subprocess.run([sys.executable, str(tmp_path / "job.py"), str(effects),
                               str(journal)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        ran = effects.read_text().split() if effects.exists() else []
        effects.write_text("")
        return done.stdout.split(), sorted(ran)

    base = 6 + 303 + 3  # scale: 0+2+4, plus: 100+101+102, other: 0+1+2
    out, ran = run(HELPER_FILE)
    assert out == ["total", str(base), "from_journal", "0"]
    assert len(ran) == 10
    out, ran = run(HELPER_FILE)  # unchanged: nothing runs
    assert out == ["total", str(base), "from_journal", "10"]
    assert ran == []
    out, ran = run(HELPER_FILE.replace("FACTOR = 2", "FACTOR = 3"))  # scale's constant
    assert out == ["total", str(base + 3), "from_journal", "6"]
    assert ran == sorted([f"step{i}" for i in range(3)] + ["total"])
    out, ran = run(HELPER_FILE.replace("FACTOR = 2", "FACTOR = 3")
                   .replace("i + 100", "i + 200"))  # a method of the helper class
    assert out == ["total", str(base + 3 + 300), "from_journal", "6"]
    assert ran == sorted([f"plus{i}" for i in range(3)] + ["total"])


def _square(x):
    return x * x


def test_a_salt_reruns_every_derived_task_with_the_same_journal(system, tmp_path):
    journal = str(tmp_path / "run.db")

    def build(salt):
        g = actorq.Graph(salt=salt)
        xs = [g.task(_square, i) for i in range(5)]
        pinned = g.task(_square, 7, key="pinned")  # a key given by hand: not salted
        return g, g.task(_total, *xs, pinned)

    g1, end1 = build("numpy-1")
    assert system.run(g1, journal=journal)[end1] == 30 + 49
    g2, _end2 = build("numpy-1")
    assert system.run(g2, journal=journal).stats.from_journal == 7
    g3, end3 = build("numpy-2")
    assert g3.digest() == g1.digest()  # the same graph: the journal is reused ...
    assert end3.key != end1.key
    third = system.run(g3, journal=journal)
    assert third[end3] == 79
    assert third.stats.from_journal == 1  # ... and only the pinned task is skipped
    with pytest.raises(actorq.GraphError, match="salt must be a str"):
        actorq.Graph(salt=2)
