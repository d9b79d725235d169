"""The same numbers whatever the schedule (issue 27, item 5): a recipe and seed trained alone,
with `--jobs 2` beside another run, or beside a busy process record bit-identical metrics, on
the thread count the recipe and the machine chose (param `threads`), never on what else ran."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.recipes.catalogue import load_catalogue
from harness.recipes.network import build_model
from harness.training.environment import all_cores, choose_threads

from .conftest import make_synthetic

# fastai-convbnnet: a batch-256 recipe (669 M multiply-accumulates per step), so it trains on
# more than one thread where there are cores, and its sums on 1 and 2 threads differ within 2
# epochs of 300 images (fastai-convnet's happen not to); tutorial-base: a one-thread recipe
WIDE, NARROW = "fastai-convbnnet", "tutorial-base"
CAP = ["--epochs", "2", "--max-train-images", "300", "--no-progress", "--no-system-metrics"]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """300 training images and 40 test images (synthetic_root has 200): each epoch is evaluated
    on the test set (test_acc_epoch) and each run twice more at its end; the numbers compared
    are the same kinds, and 1 and 2 threads still differ in train_loss_step within 2 epochs."""
    return make_synthetic(tmp_path_factory.mktemp("same-numbers"), n_train=300, n_test=40)


def _train(root, store, *args) -> None:
    r = CliRunner().invoke(main, ["run", *args, "--data-dir", str(root), "--tracking-uri", store, *CAP])
    assert r.exit_code == 0, r.output


def _numbers(store: str, experiment_id: str) -> tuple[dict, dict]:
    """(params, every metric's history as (step, value) pairs) of the one run of `experiment_id`,
    leaving out what is a time (it differs between any two trainings)."""
    c = MlflowClient(store)
    [run] = [r for r in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
             if r.data.tags["harness.experiment_id"] == experiment_id]
    timed = ("time", "per_s", "system/")
    history = {k: [(m.step, m.value) for m in sorted(c.get_metric_history(run.info.run_id, k), key=lambda m: (m.step, m.timestamp))]
               for k in run.data.metrics if not any(t in k for t in timed)}
    return dict(run.data.params), history


@pytest.mark.parametrize("cores, wide_threads", [(1, 1), (2, 2), (4, 2), (8, 4), (32, 8)])
def test_a_runs_threads_come_from_its_recipe_and_the_machine(monkeypatch, cores, wide_threads):
    """One thread for a small-step recipe; for a big one the whole machine on 2 cores, else half
    of it, at most 8 (on 32 cores a run of 32 threads would leave nothing to the rest of a suite,
    for ~6.6x at best)."""
    import torch

    import harness.training.environment as env

    monkeypatch.setattr(env, "all_cores", lambda: cores)
    cat, cpu = load_catalogue(), torch.device("cpu")
    wide, narrow, vgg = cat[WIDE], cat[NARROW], cat["cs598-vgg-bn-aug"]
    assert choose_threads(build_model(narrow), narrow.train.batch_size, cpu) == 1
    assert choose_threads(build_model(wide), wide.train.batch_size, cpu) == wide_threads
    assert choose_threads(build_model(vgg), vgg.train.batch_size, cpu) == wide_threads
    assert choose_threads(build_model(wide), wide.train.batch_size, cpu, override=3) == 3  # --threads pins


@pytest.mark.slow  # trains (tens of seconds): the full suite runs it
@pytest.mark.skipif(all_cores() < 2, reason="one core: every run trains on one thread whatever the schedule")
def test_alone_beside_another_run_and_beside_a_busy_process_give_the_same_numbers(small_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    alone, jobs, busy = (f"sqlite:///{tmp_path}/{name}.db" for name in ("alone", "jobs", "busy"))
    _train(small_root, alone, WIDE, "--jobs", "1")
    _train(small_root, jobs, WIDE, NARROW, "--jobs", "2")  # two worker processes, a one-thread run beside it
    # a busy process on one of the cores when the run chooses its threads; at nice 19 it gives the
    # run's threads their cores back once they compute (it burned a core for the whole training)
    spinner = subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])
    try:
        _train(small_root, busy, WIDE, "--jobs", "1")
    finally:
        spinner.kill()
        spinner.wait()
    params, history = _numbers(alone, WIDE)
    import torch

    wide = load_catalogue()[WIDE]
    assert params["threads"] == str(choose_threads(build_model(wide), wide.train.batch_size, torch.device("cpu"))) != "1", params
    assert history["train_loss"] and history["train_loss_step"] and "test_acc" in history
    for other in (jobs, busy):
        p, h = _numbers(other, WIDE)
        assert h["train_loss_step"] == history["train_loss_step"] and h["val_loss"] == history["val_loss"]
        assert h == history  # bit for bit: every loss, accuracy and per-step loss
        assert p == params  # threads included: fixed by the recipe and the machine
    if all_cores() == 2:  # its two threads held both cores: the one-thread run trained before or after it, never beside
        c = MlflowClient(jobs)
        wide, narrow = sorted(c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id]),
                              key=lambda r: r.data.tags["harness.experiment_id"] != WIDE)
        assert wide.info.end_time <= narrow.info.start_time or narrow.info.end_time <= wide.info.start_time


def _killed_on_one_core(store, root) -> subprocess.Popen:
    """`harness run medium-vgg-bn` in a fresh process of its own, on one core (taskset: the fork
    server's children cannot run under a prefix), its output piped."""
    import os
    from pathlib import Path

    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-m", "harness.cli", "run", *_vgg_args(store, root)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _vgg_args(store, root) -> list[str]:
    return ["medium-vgg-bn", "--data-dir", str(root), "--tracking-uri", store, "--epochs", "2", "--max-train-images", "100",
            "--no-progress", "--no-system-metrics"]


@pytest.mark.slow  # trains (tens of seconds): the full suite runs it
@pytest.mark.skipif(all_cores() < 2 or shutil.which("taskset") is None, reason="needs 2 cores and taskset")
def test_a_run_resumed_where_more_cores_are_free_keeps_its_threads_and_its_numbers(small_root, tmp_path, monkeypatch):
    """Started on one core (one thread for medium-vgg-bn), killed after an epoch, resumed on two
    (where it would choose 2): it keeps its one thread and ends bit for bit as the run never stopped.
    The run never stopped trains in this process with its thread pinned to one core (the core
    count a run sees is its thread's affinity); the killed one is a fresh `python -m harness.cli`
    under taskset; the resumed one a `harness` process forked from tests/forkserver.py, on every
    core: two interpreters' imports fewer (~10 CPU-s), the same three situations."""
    import os
    import signal
    import time
    from pathlib import Path

    from . import forkserver

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    whole, stopped = f"sqlite:///{tmp_path}/whole.db", f"sqlite:///{tmp_path}/stopped.db"
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        assert all_cores() == 1
        monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state-whole"))
        r = CliRunner().invoke(main, ["run", *_vgg_args(whole, small_root)])
        assert r.exit_code == 0 and "finished" in r.output, r.output
    finally:
        os.sched_setaffinity(0, cores)
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    p = _killed_on_one_core(stopped, small_root)
    deadline = time.time() + 300
    while not list(Path(tmp_path / "state").glob("*/state.pt")):
        assert p.poll() is None and time.time() < deadline, p.communicate()[0]
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    resumed = forkserver.popen(["run", *_vgg_args(stopped, small_root)], cwd=Path(__file__).resolve().parents[1], env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resuming run" in out and "1 thread(s), as it started" in out, out
    params, history = _numbers(whole, "medium-vgg-bn")
    p2, h2 = _numbers(stopped, "medium-vgg-bn")
    assert params["threads"] == p2["threads"] == "1"
    assert h2["train_loss_step"] == history["train_loss_step"] and h2 == history
