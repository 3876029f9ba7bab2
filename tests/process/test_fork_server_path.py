"""The fork server runs the program's actorq, not a checkout in the current directory.

multiprocessing starts the fork server with ``python -c``, which looks up modules in the
current directory first: run from inside another checkout of actorq (two checkouts side by
side), the fork server, and every actor forked from it, imported that checkout's code.
Fresh interpreters, so that the fork server is the program's own (not the suite's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import actorq

PROGRAM = textwrap.dedent(
    """
    import sys
    import actorq

    class Where(actorq.Actor):
        def where(self):
            import actorq as inside
            return inside.__file__, sys.path

    if __name__ == "__main__":
        with actorq.ActorSystem(start_method="forkserver") as s:
            file, path = s.spawn(Where).where().result(timeout=60)
            print("PARENT", actorq.__file__)
            print("ACTOR", file)
            print("PATH", path == sys.path)
    """
)


def test_the_fork_server_imports_the_programs_actorq_not_the_current_directorys(tmp_path):
    other = tmp_path / "other-checkout"  # the current directory: a different actorq
    (other / "actorq").mkdir(parents=True)
    (other / "actorq" / "__init__.py").write_text(
        "raise ImportError('the actorq of the other checkout was imported')\n")
    script = tmp_path / "prog" / "prog.py"
    script.parent.mkdir()
    script.write_text(PROGRAM)
    root = os.path.dirname(os.path.dirname(os.path.abspath(actorq.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=other, env=env)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["ACTOR"] == lines["PARENT"] == actorq.__file__
    assert lines["PATH"] == "True"  # actors look modules up where the program does
    assert "other checkout" not in run.stderr


def test_under_python_dash_e_actors_start_whichever_actorq_the_fork_server_runs(tmp_path):
    # -E: the fork server ignores PYTHONPATH, so it may import another (installed) copy
    # of actorq, which may not read actorq's lean requests: they are not sent then
    root = os.path.dirname(os.path.dirname(os.path.abspath(actorq.__file__)))
    script = tmp_path / "prog.py"
    script.write_text(f"import sys\nsys.path.insert(0, {root!r})\n" + PROGRAM)
    run = subprocess.run([sys.executable, "-E", str(script)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["PARENT"] == actorq.__file__
    assert lines["ACTOR"].endswith(os.path.join("actorq", "__init__.py"))


def test_a_fork_server_without_actorq_leaves_its_children_to_multiprocessing(tmp_path):
    # -E -S: the fork server (given the same flags) finds no actorq at all, so it never
    # reads the variables actorq started it with; its children inherit them, and each
    # one, importing actorq itself, must not take them for its own (every start failed:
    # it ran the fork server's preload inside multiprocessing's own child start)
    root = os.path.dirname(os.path.dirname(os.path.abspath(actorq.__file__)))
    paths = [root, *(p for p in sys.path if p.endswith("-packages"))]
    script = tmp_path / "prog.py"
    script.write_text(f"import sys\nsys.path[:0] = {paths!r}\n" + PROGRAM)
    run = subprocess.run([sys.executable, "-E", "-S", str(script)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["ACTOR"] == lines["PARENT"] == actorq.__file__
