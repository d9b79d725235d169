"""Times are compared on one device (issue 27, item 4): runs record the real CPU model (not
`cpu:x86_64`), cores and threads; a recipe's CPU and GPU seeds are two rows, never one averaged
train time; the time views (train time, budget table, Pareto front, time-to-accuracy) take the
compared rows of one device and say which."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_report_mixtures import table, write_run
from tests.test_report_review import report

GPU = "cuda:NVIDIA H100 80GB HBM3"


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    from harness.tracking import Tracker

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db")


def test_a_run_records_the_cpu_model_cores_and_threads(tracker):
    from mlflow.tracking import MlflowClient

    from harness.training.environment import all_cores

    rid = write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    tags = MlflowClient(tracker.uri).get_run(rid).data.tags
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    assert tags["harness.cpu_model"] == " ".join(model.split()) and tags["harness.device"] != "cpu:x86_64"
    assert tags["harness.device"] == f"cpu:{' '.join(model.split())}, {all_cores()} cores"
    assert tags["harness.cpu_cores"] == str(all_cores()) and int(tags["harness.threads"]) >= 1


def test_cpu_and_gpu_seeds_of_one_recipe_are_two_rows_and_times_stay_on_one_device(tracker, tmp_path):
    from harness.training.environment import device_name

    cpu = device_name(torch.device("cpu"))
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0 + seed], 40)  # 80 s on the CPU
        write_run(tracker, "fastai-simplenet", seed, 70.0 + seed, [70.0] * 4, 30)  # 120 s on the CPU
        write_run(tracker, "tutorial-base", seed + 3, 61.0 + seed, [61.0, 61.0 + seed], 2, tags_extra={"harness.device": GPU})  # 4 s
    rep = report(tracker, tmp_path)
    csv = rep["csv"]
    gpu_row = f"tutorial-base · {GPU}"
    assert set(csv.index) == {"tutorial-base", "fastai-simplenet", gpu_row}
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc[gpu_row, "n"] == 3
    assert csv.loc["tutorial-base", "train_time_s"] == pytest.approx(80.0) and csv.loc[gpu_row, "train_time_s"] == pytest.approx(4.0)
    assert csv.loc["tutorial-base", "device"] == cpu and csv.loc[gpu_row, "device"] == GPU
    # time views: the CPU (two rows) only, and the page says so
    html = rep["html"]
    timed = html[html.index('id="timed-on"'):]
    assert cpu in timed[:600] and gpu_row in timed[:600]
    budgets = rep["budgets"]
    assert gpu_row not in set(budgets["best"]) | set(budgets["runner_up"])
    assert bool(csv.loc["tutorial-base", "pareto"]) and not bool(csv.loc[gpu_row, "pareto"])  # the GPU's 4 s would dominate
