"""One store, many processes: a configuration is trained once whatever folder a process runs in
and however it spells the store's URI, and a killed run resumes from any folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from . import forkserver

REPO = Path(__file__).resolve().parents[1]
IDS = ["fastai-simplenet", "tutorial-base", "fastai-convnet"]


def folder(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(REPO / "experiments", d / "experiments")
    return d


def harness(cwd: Path, *args, **extra) -> forkserver.Child:
    """`harness ARGS` in `cwd` as a process of its own, forked from tests/forkserver.py (`extra`: variables to set)."""
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO), **extra)
    env.pop("HARNESS_STATE_DIR", None)  # where state lives is what these tests are about
    env.pop("MLFLOW_TRACKING_URI", None)
    return forkserver.popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_each_trained_once(store: str, ids: list[str], epochs: int) -> None:
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id], max_results=100)
    by_id = {}
    for r in runs:
        by_id.setdefault(r.data.tags["harness.experiment_id"], []).append(r)
    for eid in ids:
        [run] = by_id[eid]  # one run, not two
        assert run.info.status == "FINISHED", (eid, run.info.status)
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")) == list(range(epochs)), eid
        assert len(c.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["two folders", "relative and absolute URI"])
def test_two_run_alls_on_one_store_train_each_configuration_once(tmp_path, synthetic_root, spelling):
    a = folder(tmp_path, "a")
    store_abs = f"sqlite:///{a}/mlflow.db"
    if spelling == "two folders":
        b, uris = folder(tmp_path, "b"), (store_abs, store_abs)
    else:
        b, uris = a, ("sqlite:///mlflow.db", store_abs)
    common = ["--data-dir", synthetic_root, "--epochs", "2", "--max-train-images", "400", "--no-progress", "--no-system-metrics"]
    procs = [harness(a, "run", *IDS, "--tracking-uri", uris[0], *common),
             harness(b, "run", *reversed(IDS), "--tracking-uri", uris[1], *common)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    check_each_trained_once(store_abs, IDS, 2)


@pytest.mark.slow
def test_a_run_killed_after_epoch_2_resumes_from_another_folder(tmp_path, synthetic_root):
    a, b = folder(tmp_path, "a"), folder(tmp_path, "b")
    store = f"sqlite:///{a}/mlflow.db"
    args = ["run", "medium-vgg-bn", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "3",
            "--max-train-images", "160", "--no-progress", "--no-system-metrics"]
    # SIGKILLed at the end of its third epoch, before that epoch's checkpoint (tracking/faults.py):
    # killed with epoch 2's checkpoint on disk, without the test loading each checkpoint it sees
    # (a VGG's, 50 times a second) to find its epoch
    p = harness(a, *args, HARNESS_FAULT="epoch_end@3:kill")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == -signal.SIGKILL, out
    state = a / ".harness" / "state"  # beside the store, whatever the working folder
    [ck] = state.glob("*/state.pt")
    assert torch.load(ck, weights_only=True)["epoch"] == 1  # two epochs done
    r = harness(b, *args)
    out = r.communicate(timeout=600)[0]
    assert r.returncode == 0 and "resuming" in out, out
    check_each_trained_once(store, ["medium-vgg-bn"], 3)


@pytest.mark.slow
def test_jobs_trains_several_runs_at_once_each_once(tmp_path, synthetic_root, monkeypatch):
    """By default one process per core (2 here): worker processes share the queue; every run is
    trained once, with the same lines, table and exit code as one process, and a rerun skips them
    without starting a worker process."""
    monkeypatch.delenv("HARNESS_JOBS")
    a = folder(tmp_path, "a")
    store = f"sqlite:///{a}/mlflow.db"
    args = ["run", *IDS, "--repeats", "2", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "1",
            "--max-train-images", "200", "--no-progress", "--no-system-metrics"]
    p = harness(a, *args)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    assert out.count("test accuracy") == 6 and out.count(" finished ") == 6, out
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
    assert sorted((r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"]) for r in runs) == sorted((i, str(s)) for i in IDS for s in (0, 1))
    from harness.executors.schedule import run_threads
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import RunOptions

    cat = load_catalogue()  # each run on its recipe's own threads, as alone (fastai-convnet: 2 of 2 cores), not cores / jobs
    assert all(r.info.status == "FINISHED" and r.data.params["threads"] == str(run_threads(cat[r.data.tags["harness.experiment_id"]], RunOptions()))
               for r in runs)
    # the rerun finds every run finished before it starts a worker process: one started would be
    # killed as it gets ready (a command whose workers keep dying fails) and leave fired-worker_ready
    again = harness(a, *args, HARNESS_FAULT="worker_ready:kill", HARNESS_FAULT_DIR=str(tmp_path / "faults"))
    out2 = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and out2.count("skipped") >= 6, out2
    assert not (tmp_path / "faults" / "fired-worker_ready").exists(), out2


def test_every_spelling_of_a_store_names_one_store_and_one_lock_folder(tmp_path, monkeypatch):
    """What the processes above agree on without training: a SQLite file by its resolved path
    (relative, absolute, through `..` or a symlink), its locks and state beside it; a server by
    its address without the password, its locks in the user's cache (the same from any folder)."""
    from harness.runs.checkpoints import lock_root, shared_store, state_root, store_identity

    monkeypatch.delenv("HARNESS_STATE_DIR", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a")
    spellings = ["sqlite:///mlflow.db", f"sqlite:///{tmp_path}/a/mlflow.db", f"sqlite:///{tmp_path}/a/../a/mlflow.db",
                 f"sqlite:///{tmp_path}/link/mlflow.db"]
    assert len({store_identity(u) for u in spellings}) == 1
    beside = (tmp_path / "a" / ".harness").resolve()
    assert {lock_root(u) for u in spellings} == {beside / "locks"} and {state_root(u) for u in spellings} == {beside / "state"}
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "elsewhere"))  # state may move; the locks stay with the store
    assert {lock_root(u) for u in spellings} == {beside / "locks"}
    monkeypatch.delenv("HARNESS_STATE_DIR")
    assert not any(shared_store(u) for u in spellings)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    server = ["http://user:secret@Tracking.example:5000/", "http://user:other@tracking.example:5000"]
    assert len({store_identity(u) for u in server}) == 1 and "secret" not in store_identity(server[0])
    assert all(shared_store(u) for u in server) and {lock_root(u) for u in server} == {tmp_path / "cache" / "harness" / "locks"}
