"""harness against a real shared tracking server (tests/servers.py): params, metrics, artifacts,
the logged model and the report through `mlflow server` on PostgreSQL with basic-auth."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import forkserver
from tests.servers import ADMIN, CAP, PASSWORD, REPO, free_port, server_env


def harness(server, *args, password=PASSWORD, cwd=None, timeout=600):
    """servers.harness, forked from tests/forkserver.py (a process of its own, without the imports to pay)."""
    return forkserver.run(args, cwd=cwd or REPO, env=server_env(server, password), capture_output=True, text=True, timeout=timeout)

@pytest.fixture(scope="module")
def trained(server, admin, synthetic_root):
    r = harness(server, "run", "fastai-simplenet", "tutorial-base", "--data-dir", synthetic_root, *CAP, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    exp = admin.get_experiment_by_name("cifar10-harness")
    runs = admin.search_runs([exp.experiment_id])
    return {"runs": runs, "exp": exp, "out": r.stdout}


def test_runs_params_metrics_and_artifacts_reach_the_server(trained, admin):
    runs = trained["runs"]
    assert sorted(r.data.tags["harness.experiment_id"] for r in runs) == ["fastai-simplenet", "tutorial-base"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["model.name"] and "test_acc" in run.data.metrics and "test_acc_eval_mode" in run.data.metrics
        arts = {a.path for a in admin.list_artifacts(run.info.run_id)}
        assert {"config.json", "confusion_matrix.png", "test_predictions.csv", "loss_curve.png"} <= arts
        assert "harness-state" not in arts  # the epoch checkpoints are removed once the run is complete
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"cifar10-subset-train", "cifar10-subset-test"}
    assert admin.get_experiment(trained["exp"].experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "?workflowType=machine_learning" in trained["out"] and "View run" not in trained["out"]


def test_the_logged_model_loads_in_another_process(server, trained):
    run = trained["runs"][0]
    code = ("import mlflow.pytorch, torch, sys; m = mlflow.pytorch.load_model(f'runs:/{sys.argv[1]}/model'); "
            "print(tuple(m(torch.zeros(3, 3, 32, 32)).shape))")
    env = dict(os.environ, MLFLOW_TRACKING_URI=server["url"], MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    r = subprocess.run([sys.executable, "-c", code, run.info.run_id], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(3, 10)" in r.stdout, r.stderr[-2000:]


def test_the_report_is_built_from_the_server(server, trained, tmp_path):
    out = tmp_path / "report.html"
    r = harness(server, "report", "--out", out)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    for run in trained["runs"]:
        assert run.info.run_id in html
    assert "Runs with missing artifacts" not in html


def test_a_rerun_against_the_server_trains_nothing_again(server, trained, admin, synthetic_root):
    r = harness(server, "run", "fastai-simplenet", "--data-dir", synthetic_root, *CAP)
    assert r.returncode == 0 and "skipped" in r.stdout
    assert len(admin.search_runs([trained["exp"].experiment_id])) == len(trained["runs"])


def test_a_wrong_password_is_one_line_exit_2_and_no_run(server, trained, admin, synthetic_root):
    before = len(admin.search_runs([trained["exp"].experiment_id]))
    r = harness(server, "run", "fastai-convnet", "--data-dir", synthetic_root, *CAP, password="not-the-password")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "authentication failed" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "not-the-password" not in r.stderr + r.stdout
    assert len(admin.search_runs([trained["exp"].experiment_id])) == before


def test_an_unreachable_server_is_one_line(synthetic_root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    r = forkserver.run(["run", "fastai-simplenet", "--data-dir", synthetic_root, *CAP], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "unreachable" in r.stderr, r.stderr


def test_a_killed_run_resumes_from_its_checkpoint_in_the_server_artifact_store(server, admin, synthetic_root, tmp_path):
    """The epoch checkpoint lives with the run on the server, not on the machine that trained it:
    killed after its second epoch, the run resumes from another folder (another lock folder, as
    another machine would have) in the same MLflow run, each epoch logged once."""
    import shutil
    import signal
    import time

    args = ["run", "medium-vgg-bn", "--experiment-name", "resume-anywhere", "--data-dir", synthetic_root, "--epochs", "4",
            "--max-train-images", "160", "--no-progress", "--no-system-metrics"]
    env = server_env(server)
    p = forkserver.popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, run = time.time() + 300, None
    while time.time() < deadline:
        exp = admin.get_experiment_by_name("resume-anywhere")
        runs = admin.search_runs([exp.experiment_id]) if exp else []
        if runs and runs[0].data.tags.get("harness.checkpoint", ":0").split(":")[1] >= "1":
            run = runs[0]
            break
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.1)
    assert run is not None, "no checkpoint after epoch 2 within 300 s"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    other = tmp_path / "elsewhere"
    shutil.copytree(REPO / "experiments", other / "experiments")
    env2 = dict(env, XDG_CACHE_HOME=str(tmp_path / "other-cache"))
    r = forkserver.run(args, cwd=other, env=env2, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"resuming run {run.info.run_id}" in r.stdout, r.stdout + r.stderr
    [done] = admin.search_runs([run.info.experiment_id])
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    assert sorted(m.step for m in admin.get_metric_history(done.info.run_id, "epoch_time_s")) == [0, 1, 2, 3]
    assert "harness-state" not in {a.path for a in admin.list_artifacts(done.info.run_id)}
