"""Types defined in the user's main script (issue 14, item 1).

``__main__`` behaves differently only in a real script: with forkserver and spawn every
child imports the script again as ``__mp_main__``. So each test writes a script into
tmp_path and runs it with ``python script.py`` under each start method.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BANK = '''
import sys
from dataclasses import dataclass

import actorq


@dataclass
class Order:
    item: str
    qty: int


class InsufficientFunds(Exception):
    pass


def describe(order):
    match order:
        case Order(item=item, qty=qty):
            return f"{qty} x {item}"
    return "not an Order"


class Bank(actorq.Actor):
    def __init__(self, first):
        self.balance = 10
        self.first_is_order = isinstance(first, Order)

    def make(self, qty):
        return Order("pen", qty)

    def check(self, order):
        return isinstance(order, Order), describe(order), type(order) is Order

    def first(self):
        return self.first_is_order

    def withdraw(self, n):
        if n > self.balance:
            raise InsufficientFunds(f"balance {self.balance}, asked {n}")
        self.balance -= n
        return self.balance

    def nested(self, orders):
        return [o for o in orders["list"] if isinstance(o, Order)]


if __name__ == "__main__":
    with actorq.ActorSystem(start_method=sys.argv[1], call_timeout=30) as system:
        bank = system.spawn(Bank, Order("seed", 1))
        assert bank.first().result() is True, "a constructor argument changed class"
        made = bank.make(3).result()
        assert type(made) is Order and made == Order("pen", 3), made
        assert bank.check(Order("ink", 2)).result() == (True, "2 x ink", True)
        got = bank.nested({"list": [Order("a", 1), 5, Order("b", 2)]}).result()
        assert got == [Order("a", 1), Order("b", 2)] and all(type(o) is Order for o in got)
        try:
            bank.withdraw(100).result()
        except InsufficientFunds as exc:
            assert "asked 100" in str(exc)
            remote = str(exc.__cause__)
            # the real file and line, and no runtime frames above the handler
            assert 'script.py", line' in remote and "in withdraw" in remote, remote
            assert "<dynamic-code>" not in remote and "_host.py" not in remote, remote
        else:
            raise AssertionError("no InsufficientFunds")
        assert bank.withdraw(4).result() == 6
    print("main-script types: ok")
'''


def run_script(tmp_path: Path, source: str, *args: str,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run *source* as ``python script.py *args`` with this checkout on the path."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_main_script_types_are_one_class_on_both_sides(tmp_path: Path, method: str) -> None:
    """An actor class, the values it receives, returns and raises, all defined in the main
    script: the same class objects in the actor and in the caller, under every method."""
    proc = run_script(tmp_path, BANK, method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "main-script types: ok" in proc.stdout


UNDER_GUARD = '''
import sys

import actorq


class Runner(actorq.Actor):
    def run(self, fn):
        return fn()

    def ping(self, i):
        return i


if __name__ == "__main__":
    def work():  # under the guard: the actor's process never defines it
        return 42

    with actorq.ActorSystem(start_method=sys.argv[1], call_timeout=60) as system:
        runner = system.spawn(Runner)
        replies = [runner.ping(i) for i in range(5)]
        bad = runner.run(work)
        replies += [runner.ping(i) for i in range(5, 10)]
        try:
            bad.result(timeout=30)
        except TypeError as exc:
            print("error:", exc)
        assert [r.result(timeout=30) for r in replies] == list(range(10))
        letters = actorq.testing.wait_until(lambda: system.dead_letters(), timeout=30)
        print("dead letter:", letters[0].method, letters[0].reason[:60])
'''


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_function_under_the_main_guard_fails_its_call_with_the_way_out(
        tmp_path: Path, method: str) -> None:
    """A function defined under ``if __name__ == "__main__":`` pickles in the caller but
    cannot be found in the actor: that call fails at once, saying where to define it; the
    calls sent with it are handled."""
    proc = run_script(tmp_path, UNDER_GUARD.replace("import actorq\n",
                                                    "import actorq\nimport actorq.testing\n"),
                      method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error: argument 0 of Runner 'Runner-1'.run could not be unpickled" in proc.stdout
    assert "define work at the top level of a module" in proc.stdout
    assert "dead letter: run argument 0" in proc.stdout


NO_GUARD = '''
import sys

import actorq


class Counter(actorq.Actor):
    def incr(self):
        return 1


system = actorq.ActorSystem(start_method=sys.argv[1])
counter = system.spawn(Counter)
print(counter.incr().result(timeout=60))
'''


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_missing_main_guard_is_one_short_error(tmp_path: Path, method: str) -> None:
    """No ``if __name__ == "__main__":``: every actor process, importing the script
    again, would build a system of its own. One short error in the user's process (it
    was ~120 lines: a traceback per child, restarts of a failure that repeats)."""
    proc = run_script(tmp_path, NO_GUARD, method)
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert len(proc.stderr.splitlines()) <= 12, proc.stderr
    assert "creates an ActorSystem when it is imported" in proc.stderr
    assert 'put the code that creates the system under `if __name__ == "__main__":`' in (
        proc.stderr)


TELL_FLOOD = '''
import sys

import actorq


class Picky(actorq.Actor):
    def receive(self, message):
        raise KeyError(f"no such account: {message}")  # a text of its own every time

    def other(self, message):
        raise ValueError(message)

    def ping(self):
        return "pong"


if __name__ == "__main__":
    with actorq.ActorSystem(start_method=sys.argv[1]) as system:
        picky = system.spawn(Picky)
        for i in range(50):
            picky.tell(i)
        assert picky.ping().result(timeout=60) == "pong"
'''


def test_told_errors_are_logged_once_per_type_and_place(tmp_path: Path) -> None:
    """50 told messages raising the same error from the same line, each with its own
    text: one traceback, then counts (it was 50 full tracebacks)."""
    proc = run_script(tmp_path, TELL_FLOOD, "forkserver")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert "later KeyError raised at script.py:" in proc.stderr
    assert "10 told messages raised KeyError at" in proc.stderr
    assert "_host.py" not in proc.stderr  # runtime frames trimmed


CLASS_UNDER_GUARD = '''
import sys

import actorq

if __name__ == "__main__":
    class Hidden(actorq.Actor):  # under the guard: actor processes never define it
        def ping(self):
            return "pong"

    with actorq.ActorSystem(start_method=sys.argv[1]) as system:
        print(system.spawn(Hidden).ping().result(timeout=60))
'''


def test_an_actor_class_under_the_main_guard_works_and_says_where_to_move_it(
        tmp_path: Path) -> None:
    """An actor class defined under the guard still works (by value), but its process
    says that the types it uses are copies, and where to define it instead."""
    proc = run_script(tmp_path, CLASS_UNDER_GUARD, "forkserver")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pong" in proc.stdout
    assert "Hidden is not defined when" in proc.stderr
    assert "define Hidden at the top level of a module" in proc.stderr


COUNTED = '''
import os
import sys

import actorq

with open(sys.argv[1], "a") as marks:  # every import of this script leaves a line
    marks.write(f"{__name__} {os.getpid()}\\n")


class Where(actorq.Actor):
    def pid(self):
        return os.getpid()


if __name__ == "__main__":
    with actorq.ActorSystem(start_method="forkserver", call_timeout=60) as system:
        refs = [system.spawn(Where) for _ in range(3)]
        pids = {ref.pid().result() for ref in refs}
        assert len(pids) == 3, pids
    print("counted: ok")
'''


def test_the_fork_server_imports_the_main_script_once_for_every_actor(tmp_path: Path) -> None:
    """Under forkserver the script is imported once more (in the fork server), not once
    per actor: its imports and top-level work are not repeated in each process."""
    marks = tmp_path / "marks.txt"
    proc = run_script(tmp_path, COUNTED, str(marks))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "counted: ok" in proc.stdout
    names = [line.split()[0] for line in marks.read_text().splitlines()]
    assert names.count("__main__") == 1
    assert names.count("__mp_main__") == 1, names  # the fork server's, shared by 3 actors


# The main module started by name (python -m) or from a file without ``.py`` (a console
# script): the fork server imports it once, as each child would, and the children find
# it imported (issue 15: each actor imported it itself, ≈ 3 MiB of private memory each).
COUNTED_MAIN = '''
import os
import sys
from dataclasses import dataclass

import actorq
import helper  # the main's own imports are inherited too (a console script's are all)

with open(os.environ["MARKS"], "a") as marks:  # every import of this module leaves a line
    marks.write(f"main {__name__} {os.getpid()}\\n")


@dataclass
class Order:
    item: str
    qty: int


def total(order):
    return order.qty * 2


class Where(actorq.Actor):
    def pid(self):
        return os.getpid()

    def handle(self, order):
        return type(order) is Order, total(order), Order(order.item, total(order))


if __name__ == "__main__":
    from actorq._process import spawn

    with actorq.ActorSystem(start_method="forkserver", call_timeout=60) as system:
        refs = [system.spawn(Where) for _ in range(3)]
        pids = {ref.pid().result() for ref in refs}
        assert len(pids) == 3, pids
        same, doubled, back = refs[0].handle(Order("pen", 4)).result()
        assert same and doubled == 8 and type(back) is Order and back == Order("pen", 8)
        print("actors:", *sorted(pids))
        print("fork server:", spawn.fork_server_pid())
    print("counted: ok")
'''

HELPER = '''
import os

with open(os.environ["MARKS"], "a") as marks:
    marks.write(f"helper {__name__} {os.getpid()}\\n")
'''


def run_main(tmp_path: Path, how: str, source: str, *args: str,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run *source* as ``python -m mainpkg.prog *args`` (*how* ``"-m"``) or as
    ``python prog *args``, a file without ``.py`` (``"console"``), beside ``helper.py``."""
    (tmp_path / "helper.py").write_text(textwrap.dedent(HELPER))
    if how == "-m":
        (tmp_path / "mainpkg").mkdir()
        (tmp_path / "mainpkg" / "__init__.py").write_text("")
        (tmp_path / "mainpkg" / "prog.py").write_text(textwrap.dedent(source))
        cmd = ["-m", "mainpkg.prog"]
    else:
        (tmp_path / "prog").write_text(textwrap.dedent(source))
        cmd = [str(tmp_path / "prog")]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}",
               MARKS=str(tmp_path / "marks.txt"))
    return subprocess.run([sys.executable, *cmd, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("how", ["-m", "console"])
def test_the_fork_server_imports_a_main_module_or_console_script_once(
        tmp_path: Path, how: str) -> None:
    """``python -m pkg.mod`` and a main file without ``.py``: the fork server imports
    the main module (and its imports) once, as ``__mp_main__``; the actors find it
    there, use its class and function, and never import it themselves."""
    proc = run_main(tmp_path, how, COUNTED_MAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "counted: ok" in proc.stdout
    said = dict(line.split(": ") for line in proc.stdout.splitlines() if ": " in line)
    actors, server = set(said["actors"].split()), said["fork server"]
    marks = [line.split() for line in (tmp_path / "marks.txt").read_text().splitlines()]
    mains = [(name, pid) for what, name, pid in marks if what == "main"]
    assert [name for name, _pid in mains] == ["__main__", "__mp_main__"], marks
    assert mains[1][1] == server, (marks, server)  # imported in the fork server
    helpers = [pid for what, _name, pid in marks if what == "helper"]
    assert helpers[1:] == [server], (marks, server)  # its import too, inherited
    assert not actors & {pid for _what, _name, pid in marks}, (marks, actors)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_missing_main_guard_in_a_python_m_module_is_one_short_error(
        tmp_path: Path, method: str) -> None:
    """``python -m`` a module without ``if __name__ == "__main__":``: the same one
    short error as for a script (the fork server, importing it by name, exits)."""
    proc = run_main(tmp_path, "-m", NO_GUARD, method)
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert len(proc.stderr.splitlines()) <= 12, proc.stderr
    assert "creates an ActorSystem when it is imported" in proc.stderr
