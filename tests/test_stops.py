"""Ordinary stops of a long run-all, locally and with `--jobs`: SIGTERM (Slurm, Kubernetes,
`timeout`) ends the runs in flight as Ctrl-C does (KILLED, resumed by a rerun) and starts
nothing more; a `--jobs` worker killed outright (the out-of-memory killer) is replaced and its
run resumed from its checkpoint, the other runs untouched.

Each command runs in a new session: a background child of a non-interactive shell would
otherwise start with SIGINT ignored, and the signals here go to the command alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from . import forkserver

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-images", "300", "--no-progress", "--no-system-metrics"]


def harness(*args, **env) -> forkserver.Child:
    """`harness ARGS` in a session of its own, forked from tests/forkserver.py (SIGINT's default handler, as a fresh process has)."""
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO), **env)
    return forkserver.popen(args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def resume(args: list) -> list:
    """The rerun of a stopped `--jobs` command, in one process: what is checked is that the runs
    the stop left resume and finish once, which does not depend on where they train (a pool
    worker resuming a run: test_a_pool_worker_killed_is_replaced_and_its_run_resumed). A pool
    would add its fork server's imports and two workers: ~7 CPU-seconds a test (~12 spawned)."""
    return [*args[:args.index("--jobs")], "--jobs", "1", *args[args.index("--jobs") + 2:]]


def all_runs(store: str):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    return c.search_runs([exp.experiment_id], max_results=100) if exp else []


def wait_for(what, p: forkserver.Child, seconds: float = 180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        got = what()
        if got:
            return got
        assert p.poll() is None, p.communicate()[0]
        time.sleep(0.05)
    raise AssertionError("timed out")


def checkpointed(store: str) -> list:
    """Runs with an epoch's checkpoint on disk (LocalRunState: <state>/<run id>/state.pt)."""
    state = Path(os.environ["HARNESS_STATE_DIR"])
    ids = {f.parent.name for f in state.glob("*/state.pt")}
    if not ids:  # (and the store is not touched before the command has made it)
        return []
    return [r for r in all_runs(store) if r.info.run_id in ids and r.info.status == "RUNNING"]


def epochs_logged(store: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(store).get_metric_history(run_id, "epoch_time_s"))


def check_each_finished_once(store: str, keys: set, epochs: int) -> None:
    """One FINISHED run per key, each epoch logged once (a recipe may have fewer than `epochs`)."""
    runs = all_runs(store)
    assert sorted((r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"]) for r in runs) == sorted(keys)
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        steps = epochs_logged(store, r.info.run_id)
        assert steps == list(range(min(epochs, int(r.data.params["epochs"])))), (r.info.run_name, steps)


@pytest.mark.slow
def test_a_pool_worker_killed_is_replaced_and_its_run_resumed(synthetic_root, store):
    ids = ["medium-three-conv", "fastai-simplenet", "tutorial-base"]
    args = ["run", *ids, "--jobs", "2", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "3", *SMALL]
    p = harness(*args)
    [victim, *_] = wait_for(lambda: checkpointed(store), p)
    pid = int(victim.data.tags["harness.owner"].split("|")[1])  # the worker training it
    os.kill(pid, signal.SIGKILL)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    assert "its worker process died (killed by SIGKILL); a new worker resumes the run" in out, out
    assert f"resuming run {victim.info.run_id}" in out, out
    check_each_finished_once(store, {(i, "0") for i in ids}, 3)
    assert MlflowClient(store).get_run(victim.info.run_id).info.status == "FINISHED"  # the same run, not a new one


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_ends_runs_resumable_and_starts_nothing_more(synthetic_root, store, jobs, tmp_path):
    ids = ["medium-three-conv", "fastai-simplenet", "tutorial-base"]
    args = ["run", *ids, "--jobs", jobs, "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "3", *SMALL]
    # held at a run's second checkpoint (one exists to resume from) until the SIGTERM: polling for
    # a checkpoint raced the runs' end (these trainings take a second: all three had finished once)
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    p = harness(*args, HARNESS_JOBS=str(jobs), HARNESS_FAULT="checkpoint@2:pause", HARNESS_FAULT_DIR=str(faults_dir))
    wait_for(lambda: (faults_dir / "paused").exists() and checkpointed(store), p)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    took = time.monotonic() - t0
    assert p.returncode == 130 and "Traceback" not in out, out
    runs = all_runs(store)
    assert runs and all(r.info.status in ("KILLED", "FINISHED") for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and "marked KILLED" in out, out
    started = {r.data.tags["harness.experiment_id"] for r in runs}
    if len(started) < len(ids):  # what never started is said, and nothing of it exists
        assert "never started" in out or jobs == 1, out
    print(f"\nSIGTERM to exit, --jobs {jobs}: {took:.2f} s")
    r = harness(*resume(args), HARNESS_JOBS="1")
    out2 = r.communicate(timeout=600)[0]
    assert r.returncode == 0, out2
    for k in killed:
        assert f"resuming run {k.info.run_id}" in out2, out2
    check_each_finished_once(store, {(i, "0") for i in ids}, 3)


@pytest.mark.slow
def test_two_ctrl_c_on_jobs_stop_the_workers_runs_resumable_not_failed(synthetic_root, store):
    """A terminal's Ctrl-C reaches the command's process group; pressed twice, the second is not
    a worker's death: no run is reported failed, and the rerun resumes what was stopped."""
    ids = ["medium-three-conv", "fastai-simplenet", "tutorial-base"]
    args = ["run", *ids, "--jobs", "2", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "3", *SMALL]
    p = harness(*args)
    wait_for(lambda: checkpointed(store), p)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(p.pid, signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130 and "Traceback" not in out, out
    assert "worker process ended" not in out and "FAILED" not in out and "died" not in out, out
    r = harness(*resume(args))
    out2 = r.communicate(timeout=600)[0]
    assert r.returncode == 0, out2
    check_each_finished_once(store, {(i, "0") for i in ids}, 3)


def test_a_run_whose_worker_dies_for_good_is_marked_resumable_not_left_running(tmp_path):
    """The third death of a run's worker ends the pool's attempts: the supervisor marks the run the
    dead worker had claimed KILLED with the reason (a rerun resumes it), rather than leave it
    RUNNING under a dead owner, where the report would list it as in progress."""
    from types import SimpleNamespace

    from harness.executors.pool import MAX_WORKER_DEATHS, Claimed, _Pool, _Slot
    from harness.recipes.catalogue import load_catalogue
    from harness.runs import lifecycle
    from harness.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.start_run("medium-vgg-bn-s0", {lifecycle.OWNER: "host|4242|1"}, {})
    said = []
    pool = _Pool(None, [(load_catalogue()["medium-vgg-bn"], 0)], said.append, 2, tracker=tracker)
    pool.deaths[0] = MAX_WORKER_DEATHS - 1
    dead = SimpleNamespace(exitcode=-9, join=lambda timeout=None: None)
    slot = _Slot(dead, SimpleNamespace(close=lambda: None), task=0, ready=True)
    pool.slots.append(slot)
    pool.handle(slot, (0, Claimed(run_id, "host|4242|1")))  # what the worker said once it claimed the run
    pool._died(slot)
    assert not pool.queue and pool.outcomes[0].status == "resumable" and pool.outcomes[0].run_id == run_id
    assert tracker.run_status(run_id) == "KILLED"
    reason = tracker.run_tags(run_id)[lifecycle.REASON]
    assert f"died {MAX_WORKER_DEATHS} times (last killed by SIGKILL)" in reason and "run again to resume" in reason
    assert any("died 3 times" in line and "resumable" in line for line in said), said
    # a run another process took over meanwhile is its now: left alone
    other = tracker.start_run("medium-vgg-bn-s1", {lifecycle.OWNER: "elsewhere|1|1"}, {})
    pool.claims[0] = Claimed(other, "host|4242|1")
    pool.end_resumable(0, "died")
    assert tracker.run_status(other) == "RUNNING"
