"""`harness bench --repeats N`: what a recipe's seeds cost, measured side by side in one process.

- Per case: N seeds trained one after another (one network alone, N times) against N seeds
  stacked into one model (together.py), in images per second per network: the images each
  network trained, summed over the N networks, divided by the wall time. The speedup is the
  wall-time ratio of the two ways of training the same N runs.
- The fixed cost of a run outside training: a capped run into a new store, the same into an
  existing store, and a rerun that only skips, each a fresh `harness` process as a user runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..recipes.catalogue import experiments_dir, load_catalogue, select
from ..data.cifar_files import write_cifar10
from ..training.environment import all_cores, configure_backend, device_name
from ..recipes.network import build_model
from ..training.together import stacking_rates, why_sequential
from .loops import apply_policy


def run_repeats_bench(ids: list[str], n: int, steps: int, echo=print, device: torch.device = torch.device("cpu")) -> None:
    echo(f"harness bench --repeats {n} on {device_name(device)}: torch {torch.__version__}, {steps} timed steps per way after a warm-up, random batches")
    for exp in select(load_catalogue(), ids):
        # what makes the recipe unstackable anywhere; on a GPU stacking is measured all the same,
        # though the runner trains seeds one by one there until it is tested equal there
        why = why_sequential(exp, build_model(exp), torch.device("cpu"))
        if why is not None:
            echo(f"{exp.id}@{exp.train.batch_size} x {n} seeds: trained one by one ({why})")
            continue
        policy, conv = apply_policy(exp, device)
        for threads in sorted({policy, all_cores()}) if device.type == "cpu" else [policy]:
            configure_backend(device, threads, conv)
            alone, together = stacking_rates(exp, n, steps, device)
            where = f"{threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else f"{device.type}, measured only"
            echo(f"{exp.id}@{exp.train.batch_size} x {n} seeds: sequential {alone:.0f} img/s per network | together {together:.0f} img/s "
                 f"per network | speedup {together / alone:.2f}x ({where})")
    configure_backend(device)
    new, existing, skip, further = fixed_costs(device=device.type)
    echo(f"fixed cost of a run outside training (fastai-simplenet, capped, a fresh process each): new store {new:.1f} s | "
         f"existing store {existing:.1f} s | rerun that skips {skip:.1f} s | each further run in one process {further:.1f} s")


def fixed_costs(exp_id: str = "fastai-simplenet", device: str = "cpu") -> tuple[float, float, float, float]:
    """Wall time minus reported training time of `harness run` as a user runs it: into a new
    store, again (--force) into that store, once more where it only skips; and what each run
    after the first adds in one process (4 seeds against 1, the process's start shared)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        write_cifar10(root / "data", rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 200),
                      rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 100), [f"c{i}" for i in range(10)])
        experiments = experiments_dir()
        cmd = [sys.executable, "-m", "harness.cli", "run", exp_id, "--data-dir", str(root / "data"), "--epochs", "1",
               "--max-train-images", "64", "--no-progress", "--no-system-metrics", "--device", device]
        work = root / "work"
        work.mkdir()
        if experiments.is_dir():
            (work / "experiments").symlink_to(experiments)
        new, existing, skip = _outside_training(cmd, work), _outside_training(cmd + ["--force"], work), _outside_training(cmd, work)
        one = _outside_training(cmd + ["--force", "--jobs", "1", "--together", "never"], work)
        four = _outside_training(cmd + ["--force", "--repeats", "4", "--jobs", "1", "--together", "never"], work)
        return new, existing, skip, (four - one) / 3


def _outside_training(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"harness run failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    trained = sum(float(s) for s in re.findall(r"train ([0-9.]+)s, run", r.stdout))
    return wall - trained
