"""The tests' fork server (tests/forkserver.py) answers as a fresh `python -m harness.cli` does: the
outputs, exit codes and files the tests that run commands through it read. (Its children's signals
are those of test_runner, test_stops and test_tracking_server: SIGKILL, SIGINT, SIGTERM.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import forkserver

REPO = Path(__file__).resolve().parents[1]


def test_a_forked_command_prints_and_exits_as_a_fresh_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
    for args in (["run", "no-such-recipe"], ["--bogus"], ["run", "tutorial-base", "--epochs", "0"]):
        fresh = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        forked = forkserver.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args
        assert fresh.returncode != 0
    with open(tmp_path / "log", "w") as log:  # a file as its output, as `> log` gives
        r = forkserver.run(["run", "no-such-recipe"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "unknown experiment 'no-such-recipe'" in (tmp_path / "log").read_text()
    assert not list(tmp_path.glob("*.db"))  # in its own working folder, writing nothing

