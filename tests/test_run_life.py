"""A run's life through ordinary faults (runs/lifecycle.py, tracking/outage.py): an unreachable
store is ridden out for the outage window and past it leaves the run resumable; a fault that a
rerun would not repeat never marks a run FAILED; a status write checks ownership first; a
resumed run's first checkpoint spares the slot its tag names; two processes with different
state folders on one store train a run once; concurrent first runs register their data sets.
(Against a real server and PostgreSQL: test_outages.py.)"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.tracking import Tracker

from . import forkserver

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--epochs", "3", "--max-train-images", "200", "--no-progress", "--no-system-metrics"]
CALLS = ("log_batch", "log_artifact", "log_artifacts", "get_run", "set_terminated", "search_runs", "get_metric_history",
         "set_tag", "delete_tag", "update_run", "log_inputs", "search_logged_models")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def runs(store):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    return c.search_runs([exp.experiment_id], max_results=1000) if exp else []


def epochs_logged(store, run_id):
    return sorted(m.step for m in MlflowClient(store).get_metric_history(run_id, "epoch_time_s"))


def unreachable(name: str) -> Exception:
    return requests.exceptions.ConnectionError(f"HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
                                               f"/api/2.0/mlflow/{name} (Caused by NewConnectionError('Connection refused'))")


class Outage:
    """The store unreachable for every client call from the moment `start` is called until
    `end` (or for `seconds`), as a server restart looks to the harness."""

    def __init__(self, monkeypatch):
        self.until = 0.0
        self.failed = 0
        for name in CALLS:
            real = getattr(MlflowClient, name)
            monkeypatch.setattr(MlflowClient, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def call(client, *a, **k):
            if time.monotonic() < self.until:
                self.failed += 1
                raise unreachable(name)
            return real(client, *a, **k)

        return call

    def start(self, seconds: float = 1e9):
        self.until = time.monotonic() + seconds

    def end(self):
        self.until = 0.0


def outage_after_first_epoch(monkeypatch, outage: Outage, seconds: float):
    """Start the outage as soon as the first epoch's metrics have landed."""
    real, started = MlflowClient.log_batch, []

    def log_batch(client, run_id, metrics=(), *a, **k):
        out = real(client, run_id, metrics, *a, **k)
        if not started and any(m.key == "epoch_time_s" and m.step == 0 for m in metrics or ()):
            started.append(1)
            outage.start(seconds)
        return out

    monkeypatch.setattr(MlflowClient, "log_batch", outage._wrap("log_batch", log_batch))


def test_an_outage_within_the_window_is_ridden_out_and_every_epoch_lands_once(synthetic_root, store, monkeypatch):
    monkeypatch.setenv("HARNESS_OUTAGE_WINDOW_S", "60")
    outage = Outage(monkeypatch)
    outage_after_first_epoch(monkeypatch, outage, 4.0)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 0, r.output
    assert outage.failed > 0  # the outage happened while the run was in progress
    [run] = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["harness.state"] == "finished"
    assert epochs_logged(store, run.info.run_id) == [0, 1, 2]
    assert "test_acc" in run.data.metrics


@pytest.mark.slow
def test_an_outage_past_the_window_stops_the_run_resumable_in_one_line_and_a_rerun_resumes_it(synthetic_root, store, monkeypatch):
    monkeypatch.setenv("HARNESS_OUTAGE_WINDOW_S", "2")
    outage = Outage(monkeypatch)
    outage_after_first_epoch(monkeypatch, outage, 1e9)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "FAILED" not in r.output
    assert "unreachable" in r.output and "resumable" in r.output
    outage.end()  # the server is back
    [run] = runs(store)
    assert run.info.status in ("RUNNING", "KILLED")  # never FAILED: a rerun resumes it
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 0 and f"resuming run {run.info.run_id}" in r.output, r.output
    [done] = runs(store)
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    assert epochs_logged(store, run.info.run_id) == [0, 1, 2]  # the epochs queued in the outage landed on resume, once


def test_a_transient_failure_at_finish_leaves_the_run_resumable_and_the_rerun_does_not_retrain(synthetic_root, store, monkeypatch):
    """log_artifacts fails once with the server unreachable, with no window to ride it out: the
    run is KILLED with its reason (not FAILED), and the rerun completes it without training again."""
    monkeypatch.setenv("HARNESS_OUTAGE_WINDOW_S", "0")
    real, calls = MlflowClient.log_artifacts, []

    def flaky(client, run_id, local_dir, *a, **k):
        calls.append(local_dir)
        if len(calls) == 2:  # the first is config.json at the record; the second is at the finish
            raise unreachable("log-artifacts")
        return real(client, run_id, local_dir, *a, **k)

    monkeypatch.setattr(MlflowClient, "log_artifacts", flaky)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 1 and "resumable" in r.output, r.output
    [run] = runs(store)
    assert run.info.status == "KILLED" and run.data.tags["harness.state"] == "resumable"
    assert "Max retries exceeded" in run.data.tags["harness.failure_reason"]
    import harness.runs.one_run as one_run

    trained = []
    real_epoch = one_run.train_one_epoch
    monkeypatch.setattr(one_run, "train_one_epoch", lambda *a, **k: trained.append(1) or real_epoch(*a, **k))
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 0 and f"resuming run {run.info.run_id}" in r.output, r.output
    assert trained == []  # resumed after its last epoch: nothing trained again
    [done] = runs(store)
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED" and "harness.failure_reason" not in done.data.tags
    assert epochs_logged(store, run.info.run_id) == [0, 1, 2]
    assert "confusion_matrix.png" in {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)}


def test_the_same_transient_failure_within_the_window_is_ridden_out(synthetic_root, store, monkeypatch):
    real, calls = MlflowClient.log_artifacts, []

    def flaky(client, run_id, local_dir, *a, **k):
        calls.append(local_dir)
        if len(calls) == 2:
            raise unreachable("log-artifacts")
        return real(client, run_id, local_dir, *a, **k)

    monkeypatch.setattr(MlflowClient, "log_artifacts", flaky)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 0, r.output
    [run] = runs(store)
    assert run.info.status == "FINISHED" and len(calls) == 3


def test_a_model_that_cannot_run_is_failed_not_resumable(synthetic_root, store, monkeypatch):
    """A fault a rerun repeats (here: the model's forward pass raises) ends the run FAILED."""
    import harness.runs.one_run as one_run

    def broken(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 20x10)")

    monkeypatch.setattr(one_run, "train_one_epoch", broken)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 1 and "failed" in r.output
    [run] = runs(store)
    assert run.info.status == "FAILED" and run.data.tags["harness.state"] == "failed"


def test_out_of_memory_leaves_the_run_resumable(synthetic_root, store, monkeypatch):
    import harness.runs.one_run as one_run

    real, n = one_run.train_one_epoch, []

    def oom_in_epoch_2(*a, **k):
        n.append(1)
        if len(n) == 2:
            raise MemoryError()
        return real(*a, **k)

    monkeypatch.setattr(one_run, "train_one_epoch", oom_in_epoch_2)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 1 and "resumable" in r.output
    [run] = runs(store)
    assert run.info.status == "KILLED" and run.data.tags["harness.state"] == "resumable"
    monkeypatch.setattr(one_run, "train_one_epoch", real)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *ARGS)
    assert r.exit_code == 0 and "resuming run" in r.output
    assert epochs_logged(store, run.info.run_id) == [0, 1, 2]


def test_a_status_write_by_a_process_that_lost_its_run_is_refused(store):
    from harness.runs import lifecycle

    tracker = Tracker(store)
    rid = tracker.create_run("x", {lifecycle.OWNER: "me|1|1.000|a"}).run_id
    tracker.set_tags(rid, {lifecycle.OWNER: "someone-else|2|2.000|b"})  # taken over meanwhile
    for write in (lambda: lifecycle.fail(tracker, rid, "me|1|1.000|a", "x"), lambda: lifecycle.finish(tracker, rid, "me|1|1.000|a")):
        with pytest.raises(lifecycle.TakenOver):
            write()
    assert not lifecycle.stop(tracker, rid, "me|1|1.000|a", "interrupted")
    assert tracker.run_status(rid) == "RUNNING"
    lifecycle.fail(tracker, rid, "someone-else|2|2.000|b", "diverged: loss nan")  # the owner may
    assert tracker.run_status(rid) == "FAILED"


def test_a_resumed_runs_first_checkpoint_spares_the_slot_its_tag_names(store):
    import torch

    from harness.runs.checkpoints import STATE_TAG, SharedRunState

    tracker = Tracker(store)
    rid = tracker.create_run("x", {}).run_id
    SharedRunState(tracker, rid).save({"epoch": 0, "w": torch.zeros(2)})
    assert tracker.run_tags(rid)[STATE_TAG] == "a.pt:0"
    resumed = SharedRunState(tracker, rid)  # a new process resumes the run
    assert resumed.load(torch.device("cpu"))["epoch"] == 0
    slots = []
    real = tracker.upload_file
    tracker.upload_file = lambda run_id, path, d: slots.append(Path(path).name) or real(run_id, path, d)
    resumed.save({"epoch": 1, "w": torch.ones(2)})
    assert slots == ["b.pt"] and tracker.run_tags(rid)[STATE_TAG] == "b.pt:1"
    # and a resumed run that saves without loading first (a fresh state object) also reads the tag
    fresh = SharedRunState(tracker, rid)
    fresh.save({"epoch": 2, "w": torch.ones(2)})
    assert slots == ["b.pt", "a.pt"] and tracker.run_tags(rid)[STATE_TAG] == "a.pt:2"


def test_runs_starting_at_once_into_a_new_experiment_register_their_data_sets(store):
    """Concurrent log_inputs of one data set race in MLflow's store (UNIQUE constraint); each
    run still gets its inputs."""
    trackers = [Tracker(store, "fresh-experiment") for _ in range(4)]
    rids = [t.create_run(f"r{i}", {}).run_id for i, t in enumerate(trackers)]
    ds = [{"name": "cifar10-subset-test", "digest": "abc123", "source": "/data", "profile": {"n": 1}, "context": "test"},
          {"name": "cifar10-subset-train", "digest": "def456", "source": "/data", "profile": {"n": 2}, "context": "training"}]
    barrier, errors = threading.Barrier(4), []

    def go(t, rid):
        barrier.wait()
        try:
            t.log_datasets(rid, ds)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(t, r)) for t, r in zip(trackers, rids)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    c = MlflowClient(store)
    for rid in rids:
        assert {d.dataset.name for d in c.get_run(rid).inputs.dataset_inputs} == {"cifar10-subset-test", "cifar10-subset-train"}


@pytest.mark.slow
def test_two_processes_with_different_state_folders_train_a_run_once(synthetic_root, tmp_path):
    """Same machine, same store, different HARNESS_STATE_DIR (so different lock folders): the
    second sees the first's process alive and leaves the run to it."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run", "medium-vgg-bn", "--data-dir", str(synthetic_root), "--tracking-uri", store,
            "--epochs", "2", "--max-train-images", "160", "--no-progress", "--no-system-metrics"]
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
    # the first holds its run mid-training (after its first epoch, tracking/faults.py's pause) until
    # the second has come and gone: however fast or slow the machine, the second meets a live
    # training (six epochs of training used to make that window, ~15 CPU-s)
    faults = tmp_path / "faults"
    first = forkserver.popen(args, cwd=REPO, env=dict(env, HARNESS_STATE_DIR=str(tmp_path / "s1"), HARNESS_FAULT="epoch_end:pause",
                                                      HARNESS_FAULT_DIR=str(faults)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (faults / "paused").exists():
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first command never reached the end of its first epoch"
            time.sleep(0.05)
        [found] = runs(store)
        assert found.info.status == "RUNNING" and found.data.tags.get("harness.state") == "training", found.data.tags
        second = forkserver.run(args, cwd=REPO, env=dict(env, HARNESS_STATE_DIR=str(tmp_path / "s2")), capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 0 and "being trained by" in second.stdout, second.stdout + second.stderr
        (faults / "go").write_text("")
        out, _ = first.communicate(timeout=600)
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            first.kill()
    [run] = runs(store)
    assert run.info.status == "FINISHED" and epochs_logged(store, run.info.run_id) == [0, 1]


def test_what_counts_as_an_outage_mid_run():
    """A basic-auth server whose user database is restarting answers 401 (seen with PostgreSQL
    restarted under `mlflow server --app-name basic-auth`): mid-run that is the outage, retried;
    a bad request or a missing permission is not."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from harness.tracking.outage import transient

    unauthorized = requests.HTTPError("401 Client Error: Unauthorized for url: http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/x. "
                                      "Response text: You are not authenticated.")
    assert transient(unauthorized)
    assert transient(MlflowException("API request failed: too many 503 error responses"))
    assert transient(requests.ConnectionError("Connection refused"))
    assert not transient(MlflowException("Invalid parameter value", error_code=INVALID_PARAMETER_VALUE))
    assert not transient(requests.HTTPError("403 Client Error: Forbidden: Permission denied"))
    assert not transient(ValueError("a bug"))
