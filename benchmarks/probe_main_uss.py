"""An idle actor's USS by how the user's program is started: ``python prog.py``,
``python -m pkg.prog``, a console script (a file without ``.py`` importing the
program, as pip writes them), or ``python -m pkg`` (the package's ``__main__.py``
importing the program: multiprocessing's children never import a ``__main__`` module,
so the fork server does not either, and each actor imports the program's module when
it unpickles its actor class).

    python benchmarks/probe_main_uss.py [--actors 20] [--rounds 2] [--root DIR ...]

Writes a small program (it imports ``argparse``, ``json``, ``statistics`` and ``psutil``
at the top, as programs do, and defines its actor class) into a temporary folder, runs
it each way, and prints the median USS (p10 .. p90) of ``--actors`` idle actors. With
several ``--root`` (folders holding an ``actorq`` package, e.g. a copy of the code
before a change), the runs alternate between them, way by way, round by round. USS is
memory, not time: the load of a shared machine hardly moves it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

PROGRAM = '''
import argparse
import json
import os
import statistics
import sys
import time

import psutil

import actorq


class Idle(actorq.Actor):
    def pid(self):
        return os.getpid()


def main():
    n = int(sys.argv[1])
    with actorq.ActorSystem(start_method="forkserver", call_timeout=120) as system:
        refs = [system.spawn(Idle) for _ in range(n)]
        pids = [ref.pid().result() for ref in refs]
        time.sleep(1.0)  # measuring idleness: nothing to wait for but time
        uss = [psutil.Process(pid).memory_full_info().uss / 2**20 for pid in pids]
    print(json.dumps(uss))


if __name__ == "__main__":
    main()
'''

CONSOLE = '''
import sys
from probepkg.prog import main
if __name__ == "__main__":
    sys.exit(main())
'''

PACKAGE_MAIN = '''
from probepkg.prog import main
main()
'''


def write_program(folder: str) -> dict[str, list[str]]:
    """The program in *folder*, and the command line of each way to start it."""
    package = os.path.join(folder, "probepkg")
    os.makedirs(package, exist_ok=True)
    open(os.path.join(package, "__init__.py"), "w").close()
    for path, text in ((os.path.join(package, "prog.py"), PROGRAM),
                       (os.path.join(package, "__main__.py"), PACKAGE_MAIN),
                       (os.path.join(folder, "prog.py"), PROGRAM),
                       (os.path.join(folder, "prog"), CONSOLE)):
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    return {"script": [sys.executable, "prog.py"],
            "-m": [sys.executable, "-m", "probepkg.prog"],
            "console": [sys.executable, os.path.join(folder, "prog")],
            "-m pkg": [sys.executable, "-m", "probepkg"]}


def spread(values: list[float]) -> str:
    """``median (p10 .. p90)``."""
    cuts = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.2f} ({cuts[0]:.2f} .. {cuts[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", action="append",
                        help="a folder holding actorq (default: this checkout)")
    args = parser.parse_args()
    roots = args.root or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    with tempfile.TemporaryDirectory() as folder:
        ways = write_program(folder)
        for r in range(args.rounds):
            for way, cmd in ways.items():
                for root in roots:
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
                    out = subprocess.run([*cmd, str(args.actors)], cwd=folder, env=env,
                                         capture_output=True, text=True, timeout=600,
                                         check=True)
                    uss = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"round {r + 1} {way:8} {root}: idle actor USS {spread(uss)} MiB",
                          flush=True)


if __name__ == "__main__":
    main()
