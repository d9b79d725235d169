"""End to end through the CLI into a temporary sqlite store, on the synthetic set."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main

from . import forkserver

REPO = Path(__file__).resolve().parents[1]
CAP = ["--epochs", "1", "--max-train-images", "512", "--no-progress"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def runs(store, status=None):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    if exp is None:
        return []
    rs = c.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in rs if status is None or r.info.status == status]


def harness_proc(*args, env_extra=None):
    """`harness ARGS` as a process of its own, forked from tests/forkserver.py."""
    env = dict(os.environ, **(env_extra or {}))
    return forkserver.popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_and_wait_for_checkpoint(*args):
    """Start `harness ARGS` in a subprocess; return it once its first epoch checkpoint exists."""
    p = harness_proc(*args, env_extra={"HARNESS_STATE_DIR": os.environ["HARNESS_STATE_DIR"]})
    state = Path(os.environ["HARNESS_STATE_DIR"])
    deadline = time.time() + 120
    while time.time() < deadline and not list(state.glob("*/state.pt")):
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.01)
    return p


def test_run_records_everything(synthetic_root, store):
    r = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0, r.output
    [run] = runs(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "tutorial-base"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    for t in ["experiment_id", "config_hash", "seed", "source", "git_commit", "torch_version", "device", "data_fingerprint", "capped"]:
        assert f"harness.{t}" in tags, t
    assert tags["harness.capped"] == "true" and tags["harness.source"] == "003_7b9c6eb88bbacb5d.txt"
    assert params["model.name"] == "tutorial_net" and params["train.batch_size"] == "4" and params["params"] == "62006"
    assert params["override.epochs"] == "1" and params["train.optimizer.momentum"] == "0.9"
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    expected = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "train_loss_step", "test_loss",
                "test_acc", "test_f1_macro", "train_time_s", "images_per_s", "params"} | {f"test_acc_{c}" for c in classes}
    assert expected <= set(metrics)
    c = MlflowClient(store)
    steps = c.get_metric_history(run.info.run_id, "train_loss_step")
    assert 90 <= len(steps) <= 130  # ~100 points for the epoch's 128 steps, not one per step
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.json", "confusion_matrix.csv", "confusion_matrix.png", "per_class_accuracy.csv", "loss_curve.png", "test_predictions.csv"} <= arts
    import mlflow.pytorch

    mlflow.set_tracking_uri(store)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    out = model(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)
    # a rerun of the identical configuration is skipped
    r2 = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r2.exit_code == 0 and "skipped" in r2.output and len(runs(store)) == 1


@pytest.mark.slow
def test_repeats_and_same_seed_same_metrics(synthetic_root, store):
    r = cli("run", "fastai-convnet", "--repeats", "2", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0, r.output
    rs = runs(store, "FINISHED")
    assert sorted(x.data.tags["harness.seed"] for x in rs) == ["0", "1"]
    assert sorted(x.info.run_name for x in rs) == ["fastai-convnet-s0", "fastai-convnet-s1"]
    assert rs[0].data.metrics["train_loss"] != rs[1].data.metrics["train_loss"]
    r = cli("run", "fastai-convnet", "--seed", "1", "--force", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0, r.output
    seed1 = [x for x in runs(store, "FINISHED") if x.data.tags["harness.seed"] == "1"]
    assert len(seed1) == 2
    a, b = (MlflowClient(store).get_metric_history(x.info.run_id, "train_loss_step") for x in seed1)
    assert [m.value for m in a] == [m.value for m in b]
    assert seed1[0].data.metrics["test_acc"] == seed1[1].data.metrics["test_acc"]


def _history(store, run_id, key):
    return [(m.step, m.value) for m in sorted(MlflowClient(store).get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_sigkill_resumes_with_the_same_history(synthetic_root, store, tmp_path):
    # 200 images (10 steps an epoch): what is checked is the resume from a checkpoint and the
    # history it logs, the same on any number of images
    args = ["run", "medium-three-conv", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "4", "--max-train-images", "200",
            "--no-progress"]
    # SIGKILLed at the end of its second epoch, the first's checkpoint written (tracking/faults.py):
    # killed mid-run however fast its epochs are, without the test watching for the checkpoint
    p = harness_proc(*args, env_extra={"HARNESS_FAULT": "epoch_end@2:kill", "HARNESS_STATE_DIR": os.environ["HARNESS_STATE_DIR"]})
    out = p.communicate(timeout=300)[0]
    assert p.returncode == -signal.SIGKILL, out
    assert list(Path(os.environ["HARNESS_STATE_DIR"]).glob("*/state.pt"))  # the first epoch's checkpoint, to resume from
    [killed] = runs(store)
    assert killed.info.status == "RUNNING"  # nothing could mark it
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output
    [done] = runs(store)
    assert done.info.run_id == killed.info.run_id and done.info.status == "FINISHED"
    resumed = _history(store, done.info.run_id, "val_loss")
    assert [s for s, _ in resumed] == [0, 1, 2, 3]
    # an uninterrupted run of the same configuration logs the same numbers
    r = cli(*args, "--force")
    assert r.exit_code == 0, r.output
    other = next(x for x in runs(store) if x.info.run_id != done.info.run_id)
    for key in ("train_loss", "val_loss", "val_acc"):
        assert _history(store, other.info.run_id, key) == _history(store, done.info.run_id, key), key
    assert [v for _, v in _history(store, other.info.run_id, "train_loss_step")] == [v for _, v in _history(store, done.info.run_id, "train_loss_step")]


@pytest.mark.slow
def test_ctrl_c_marks_killed_then_resumes(synthetic_root, store):
    args = ["run", "skl-cnn", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "3", "--max-train-images", "400", "--no-progress"]
    p = start_and_wait_for_checkpoint(*args)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in out and "KILLED" in out
    [run] = runs(store)
    assert run.info.status == "KILLED"
    r = cli(*args)
    assert r.exit_code == 0 and "resuming" in r.output
    [run] = runs(store)
    assert run.info.status == "FINISHED"


def test_ctrl_c_inside_a_store_write_lets_it_finish(store):
    """Ctrl-C landing mid-write once left SQLite locked, so the run could not be marked KILLED
    and the process hung; now the write completes and the interrupt follows it."""
    from harness.tracking import Tracker

    tracker = Tracker(store)
    run_id = tracker.start_run("t", {"harness.config_hash": "x"}, {"a": 1})
    real = tracker.client.log_batch
    calls = []

    def interrupted_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between two of the call's batches
        return real(*a, **kw)

    tracker.client.log_batch = interrupted_batch
    with pytest.raises(KeyboardInterrupt):
        tracker.log_metrics(run_id, {"m": 1.0}, 0, {"s": [(i, float(i)) for i in range(1500)]})
    assert len(calls) == 2 and len(tracker.metric_history(run_id, "s")) == 1500
    tracker.terminate(run_id, "KILLED", "interrupted")
    [run] = runs(store)
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_locked_store_retries_the_failed_call_only(store):
    """Another process holding the SQLite lock mid-way through start_run must not give a
    second run (an orphan RUNNING run would later be 'resumed' without its params)."""
    from harness.tracking import Tracker

    tracker = Tracker(store)
    real, fails = tracker.client.log_batch, [1]

    def locked_once(*a, **kw):
        if fails:
            fails.pop()
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(*a, **kw)

    tracker.client.log_batch = locked_once
    run_id = tracker.start_run("t", {}, {"a": 1}, {"config.json": "{}"})
    [run] = runs(store)
    assert run.info.run_id == run_id and run.data.params == {"a": "1"}


def test_a_second_ctrl_c_is_not_held(store):
    from harness.tracking import Tracker

    tracker = Tracker(store)
    run_id = tracker.start_run("t", {}, {})
    real, calls = tracker.client.log_batch, []

    def stuck_batch(*a, **kw):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # raises here, inside the write
        return real(*a, **kw)

    tracker.client.log_batch = stuck_batch
    with pytest.raises(KeyboardInterrupt):
        tracker.log_metrics(run_id, {"m": 1.0}, 0)
    assert calls == [1] and tracker.metric_history(run_id, "m") == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_diverging_run_fails_and_run_all_goes_on(synthetic_root, store, tmp_path, monkeypatch):
    exps = tmp_path / "proj" / "experiments"
    exps.mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "fastai-simplenet.toml", exps)
    text = (REPO / "experiments" / "fastai-convnet.toml").read_text().replace('id = "fastai-convnet"', 'id = "diverge"')
    (exps / "diverge.toml").write_text(text.replace("lr = 1e-1", "lr = 1e12"))
    monkeypatch.chdir(tmp_path / "proj")
    r = cli("run-all", "--data-dir", synthetic_root, "--tracking-uri", store, "--no-progress", "--epochs", "2", "--max-train-images", "512")
    assert r.exit_code == 1
    assert "diverge" in r.output and "failed" in r.output.lower()
    by = {x.info.run_name: x for x in runs(store)}
    assert by["diverge"].info.status == "FAILED" and "diverged" in by["diverge"].data.tags["harness.failure_reason"]
    assert by["fastai-simplenet"].info.status == "FINISHED"  # it ran after the failure (alphabetical order)


@pytest.mark.slow
def test_two_processes_never_train_the_same_configuration_twice(synthetic_root, store):
    args = ["run", "tutorial-c16", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP]
    env = {"HARNESS_STATE_DIR": os.environ["HARNESS_STATE_DIR"]}
    procs = [harness_proc(*args, env_extra=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(runs(store)) == 1 and runs(store)[0].info.status == "FINISHED"
    assert any("skipped" in o for o in outs), outs


@pytest.mark.parametrize("args, text", [
    (["run", "no-such-model"], "unknown experiment"),
    (["run", "tutorial-base", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    (["run", "tutorial-base", "--tracking-uri", "sqlite:////no/such/dir/m.db"], "does not exist"),
    (["run-all", "--only", "nothing-*"], "leave no experiment"),
    (["run", "tutorial-base", "--device", "cuda"] if not torch.cuda.is_available() else ["run", "x"], "cuda" if not torch.cuda.is_available() else "unknown"),
])
def test_bad_input_is_one_line_and_creates_no_run(synthetic_root, store, args, text):
    extra = [] if "--tracking-uri" in args else ["--tracking-uri", store]
    r = cli(*args, "--data-dir", synthetic_root, *extra)
    assert r.exit_code != 0 and text in r.output.lower() if text.islower() else text in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert runs(store) == []


def test_bad_option_is_usage_error(store):
    r = cli("run", "tutorial-base", "--epochs", "0")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_fault_before_the_run_exists_fails_only_that_experiment(synthetic_root, store, monkeypatch):
    import harness.runs.one_run as runner

    real = runner.prepare_data

    def flaky(exp, *a, **k):
        if exp.id == "fastai-convnet":
            raise MemoryError("simulated: cannot allocate the training set")
        return real(exp, *a, **k)

    monkeypatch.setattr(runner, "prepare_data", flaky)
    r = cli("run", "fastai-convnet", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "MemoryError" in r.output and "fastai-convnet" in r.output.splitlines()[-1]
    assert [x.info.run_name for x in runs(store, "FINISHED")] == ["fastai-simplenet"]


def test_artifacts_live_beside_the_sqlite_store(synthetic_root, store, tmp_path):
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0, r.output
    [run] = runs(store)
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))
    assert (tmp_path / "mlruns" / "cifar10-harness" / run.info.run_id / "artifacts" / "config.json").exists()


def test_executor_ray_without_ray_names_the_install_command(store, synthetic_root, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    r = cli("run", "fastai-simplenet", "--executor", "ray", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 2 and 'pip install "harness[ray]"' in r.output and "Traceback" not in r.output, r.output
    assert runs(store) == []


@pytest.mark.parametrize("args, says", [(["--ray-address", "127.0.0.1:1"], "--ray-address"), (["--cpus-per-run", "2"], "--cpus-per-run"),
                                        (["--executor", "ray", "--jobs", "2"], "--jobs")])
def test_executor_options_that_do_not_fit_are_usage_errors(store, synthetic_root, args, says):
    r = cli("run", "fastai-simplenet", *args, "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_an_unreachable_ray_cluster_is_one_line_at_once(store, synthetic_root):
    pytest.importorskip("ray")
    r = cli("run", "fastai-simplenet", "--executor", "ray", "--ray-address", "127.0.0.1:1", "--data-dir", synthetic_root,
            "--tracking-uri", store, *CAP)
    assert r.exit_code == 1 and "Ray cluster 127.0.0.1:1 unreachable" in r.output and "Traceback" not in r.output, r.output
    assert runs(store) == []
