"""``actorq bench`` from an installed copy, in a directory that is not the checkout.

The project is copied to a temp folder and pip-installed from there with ``--target``
(no dependencies: they are this interpreter's), so that nothing is built inside the
checkout (without a package index for the build backend, the package files are copied
as an install would); the command then runs with that copy first on ``PYTHONPATH`` and a temp
directory as its working directory, as after ``pip install actorq``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "actorq", src / "actorq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(src)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:  # no index to fetch the build backend from: copy the files
        shutil.copytree(src / "actorq", target / "actorq", dirs_exist_ok=True)
    assert (target / "actorq" / "bench" / "suites" / "faults.py").is_file()
    return target


def _run(installed: Path, cwd: Path, *args: str, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, "-m", "actorq", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.timeout(300)
def test_list_works_from_an_installed_copy(installed, tmp_path):
    proc = _run(installed, tmp_path, "--list")
    assert proc.returncode == 0, proc.stderr
    for name in ("messaging", "restart", "overload", "faults"):
        assert name in proc.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import actorq; print(actorq.__file__)"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True,
        timeout=60)
    assert probe.stdout.strip().startswith(str(installed))  # not the checkout's copy


@pytest.mark.timeout(300)
def test_a_workload_runs_and_writes_into_the_current_directory(installed, tmp_path):
    (tmp_path / "aq_cli_wl.py").write_text(
        "import actorq\n\n"
        "class Echo(actorq.Actor):\n"
        "    def echo(self, x):\n"
        "        return x\n\n"
        "def calls(system):\n"
        "    ref = system.spawn(Echo)\n"
        "    for i in range(20):\n"
        "        assert ref.echo(i).result(timeout=30) == i\n"
        "    system.stop(ref)\n"
        "    return 20\n")
    proc = _run(installed, tmp_path, "aq_cli_wl:calls", "--repeats", "2", "--warmup", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "workload.json").read_text())
    assert doc["results"][0]["name"] == "aq_cli_wl:calls"
    assert len(doc["results"][0]["samples"]) == 2
    assert doc["machine"]["code"].endswith("(installed)")
    assert "repeat 2/2" in proc.stderr  # the progress line


@pytest.mark.timeout(300)
def test_bad_input_from_an_installed_copy_exits_2(installed, tmp_path):
    for args, message in ((["nosuch"], "unknown suite"),
                          (["nomodule_aq:fn"], "cannot import"),
                          (["--compare", "a.json", "b.json"], "does not exist")):
        proc = _run(installed, tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
