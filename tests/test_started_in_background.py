"""The suite passes however it is started: here as `nohup python -m pytest &` from a script
starts it, with SIGINT ignored (a non-interactive shell's background job), which once made every
test that sends Ctrl-C wait for an interrupt that never came (conftest.sigint_as_in_a_terminal).

One test of each kind is run in a pytest started that way: Ctrl-C sent to this process
(test_runner, in-process), and to a child it started (test_reliability, os.kill on the child)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENDS_CTRL_C = ["tests/test_runner.py::test_ctrl_c_inside_a_store_write_lets_it_finish",
                "tests/test_runner.py::test_a_second_ctrl_c_is_not_held",
                "tests/test_reliability.py::test_a_store_killed_while_it_is_created_is_absent_or_complete[2-0.3]"]  # SIGINT is 2


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script leaves a job with


def test_tests_that_send_ctrl_c_pass_in_a_pytest_started_with_sigint_ignored(tmp_path):
    # (not as an xdist worker of ours, and without our own run's options)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONBREAKPOINT"))}
    env.update(PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "--basetemp", str(tmp_path / "t"),
                        *SENDS_CTRL_C], cwd=REPO, env=env, preexec_fn=ignore_sigint, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(rf"\b{len(SENDS_CTRL_C)} passed\b", r.stdout), r.stdout[-2000:]
