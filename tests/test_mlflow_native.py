"""What an MLflow user expects of a training project: the UI opens on the runs, datasets are run
inputs, system metrics are recorded, and a log file shows progress per epoch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.tracking import Tracker

from . import forkserver

REPO = Path(__file__).resolve().parents[1]


def only_run(store):
    c = MlflowClient(store)
    [run] = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
    return c, run


def test_experiment_is_marked_as_model_training_without_overwriting_a_users_kind(store, tmp_path, empty_store):
    import shutil

    t = Tracker(store)
    assert t.client.get_experiment(t.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    shutil.copyfile(empty_store, tmp_path / "other.db")  # (conftest: the schema built once; the experiment is what is checked)
    other = f"sqlite:///{tmp_path}/other.db"
    c = MlflowClient(Tracker(other, "mine").uri)
    exp = c.get_experiment_by_name("mine")
    c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "genai_development")
    Tracker(other, "mine")  # first use by harness again
    assert c.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "genai_development"


def test_datasets_are_logged_as_run_inputs(synthetic_root, store):
    r = CliRunner().invoke(main, ["run", "medium-three-conv", "--data-dir", str(synthetic_root), "--tracking-uri", store,
                                  "--epochs", "1", "--max-train-images", "200", "--no-progress", "--no-system-metrics"])
    assert r.exit_code == 0, r.output
    c, run = only_run(store)
    inputs = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    import json

    assert json.loads(inputs["training"].profile)["num_images"] == 200
    assert json.loads(inputs["validation"].profile)["num_images"] == 120  # 20% of the 600 synthetic images
    assert json.loads(inputs["test"].profile)["num_images"] == 200
    assert inputs["test"].name == "cifar10-subset-test" and inputs["training"].source_type == "local"
    assert json.loads(inputs["training"].profile)["data_fingerprint"] == run.data.tags["harness.data_fingerprint"]
    assert len({d.digest for d in inputs.values()}) == 3  # each split its own digest
    found = c.search_runs([run.info.experiment_id], filter_string="dataset.name = 'cifar10-subset-train'")
    assert [x.info.run_id for x in found] == [run.info.run_id]
    assert not any(k.startswith("system/") for k in run.data.metrics)  # --no-system-metrics


def test_system_metrics_are_recorded_for_training_runs(synthetic_root, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    r = CliRunner().invoke(main, ["run", "tutorial-base", "--data-dir", str(synthetic_root), "--tracking-uri", store,
                                  "--epochs", "1", "--max-train-images", "2000", "--no-progress"])
    assert r.exit_code == 0, r.output
    _, run = only_run(store)
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system


@pytest.mark.slow
def test_a_log_file_gets_one_line_per_epoch(synthetic_root, tmp_path, empty_store):
    import shutil

    shutil.copyfile(empty_store, tmp_path / "m.db")  # (conftest: the schema built once; what is checked is the log)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HARNESS_STATE_DIR=str(tmp_path / "state"))
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(tmp_path / "log", "w") as log:  # what `nohup harness run-all ... > log` gives: no terminal anywhere
        p = forkserver.run(["run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                            "--epochs", "3", "--max-train-images", "256", "--no-system-metrics"],  # an epoch a step: lines are what is checked
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
    text = (tmp_path / "log").read_text()
    assert p.returncode == 0, text
    lines = [ln for ln in text.splitlines() if ": epoch " in ln]
    assert [ln.split(": epoch ")[1].split()[0] for ln in lines] == ["1/3", "2/3", "3/3"]
    for ln in lines:
        for word in ("train_loss", "val_acc", "img/s", "elapsed", "ETA"):
            assert word in ln, ln
    assert "\r" not in text  # no progress-bar redraws in a file


def test_run_all_and_the_report_point_at_the_training_view_of_the_ui(synthetic_root, store, tmp_path):
    """MLflow 3.17's UI ignores mlflow.experimentKind and opens in GenAI mode unless the URL
    asks for the training view: every link harness prints or writes does."""
    r = CliRunner().invoke(main, ["run", "fastai-simplenet", "--data-dir", str(synthetic_root), "--tracking-uri", store,
                                  "--epochs", "1", "--max-train-images", "128", "--no-progress", "--no-system-metrics"])
    assert r.exit_code == 0, r.output
    assert "?workflowType=machine_learning" in r.output.splitlines()[-1] and "mlflow ui --backend-store-uri" in r.output
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", "--tracking-uri", store, "--out", str(out)])
    assert r.exit_code == 0, r.output
    import re

    links = re.findall(r'href="(http://127\.0\.0\.1:5000/[^"]+)"', out.read_text())
    assert links and all(link.endswith("?workflowType=machine_learning") for link in links)


def test_logging_a_model_leaves_the_harness_warnings_audible():
    """mlflow.pytorch's import calls logging.basicConfig(level=ERROR): in a command with no logging
    set up, every warning after the first logged model (a later run's "tracking store unreachable")
    went silent. A fresh interpreter, as a command starts."""
    code = ("import logging; from harness.tracking.logged_models import pytorch_flavor; pytorch_flavor(); "
            "logging.getLogger('harness.outage').warning('tracking store unreachable (test)')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tracking store unreachable (test)" in r.stderr
