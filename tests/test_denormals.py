"""Subnormal floats are flushed to zero on every thread a run computes on (training/environment.py):
weight decay drives dead weights through the subnormal range, where x86 cores are tens of times
slower (cs598-vgg-bn-aug's epochs went from 20 s to over 90 s). The flag is per thread and a thread
inherits it only when created after it is set, so these check it where the runs compute."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = ("from harness.training.environment import denormals_flushed, flushing_denormals\n"
         "with flushing_denormals(): print(denormals_flushed(2))\n"
         "print(1e-310 * 1.0 != 0)")  # and outside a run, this process's floats are IEEE again


def python(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-2:]


def test_the_probe_sees_a_thread_pool_started_before_the_flag():
    """The check can fail: a pool started before harness sets the flag keeps subnormals on its
    worker, and the probe says so (this is why the flag is set at import, before any tensor work)."""
    early = "import torch; torch.set_num_threads(2); torch.ones(1 << 22) * 2\n" + PROBE
    assert python(early) == ["False", "True"]


def test_a_process_that_imports_the_harness_first_flushes_on_every_thread():
    assert python("import torch; torch.set_num_threads(2)\n" + PROBE) == ["True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_trained_run_records_subnormals_flushed_on_its_threads(tmp_path, synthetic_root, jobs):
    """As a user runs it: alone in the command's process, and in a --jobs worker, on 2 threads.
    The command is forked from tests/forkserver.py (which has run no torch op: the child starts
    its threads as a fresh `python -m harness.cli` does, without its ~5 CPU-s of imports); the
    --jobs worker is a fresh interpreter either way. 40 images: what is checked is the flag on
    the threads, not what they compute."""
    from mlflow.tracking import MlflowClient

    from . import forkserver

    db = tmp_path / "mlflow.db"
    p = forkserver.run(["run", "tutorial-base", "--data-dir", str(synthetic_root), "--tracking-uri", f"sqlite:///{db}", "--epochs", "1",
                        "--max-train-images", "40", "--threads", "2", "--jobs", jobs, "--no-progress", "--no-system-metrics"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "HARNESS_STATE_DIR": str(tmp_path / "state")})
    assert p.returncode == 0, p.stdout + p.stderr
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["threads"] == "2" and run.data.params["flush_denormal"] == "True"
