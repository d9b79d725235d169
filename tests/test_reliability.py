"""Faults a careless user or an unlucky moment produces: a store killed while it is created,
a run killed during its final logging, interrupts before any run exists, lost artifacts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
CAP = ["--epochs", "1", "--max-train-images", "256", "--no-progress"]
CREATE = ("import sys; from harness.tracking import Tracker; Tracker(sys.argv[1]); print('created')")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def runs(store):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    return c.search_runs([exp.experiment_id], max_results=1000) if exp else []


def create_store_in_subprocess(db: Path, sig: int, after_s: float) -> int:
    """Start creating a store at `db`; send `sig` `after_s` seconds into the schema build."""
    p = subprocess.Popen([sys.executable, "-c", CREATE, f"sqlite:///{db}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    # the schema is being built once the database file (or its temporary twin) appears
    while time.time() < deadline and not (db.exists() or list(db.parent.glob(f".{db.name}.creating-*"))):
        if p.poll() is not None:
            break
        time.sleep(0.005)
    time.sleep(after_s)
    if p.poll() is None:
        os.kill(p.pid, sig)
    p.wait(timeout=60)
    return p.returncode


SLOW = pytest.mark.slow


@pytest.mark.parametrize("sig,after_s", [pytest.param(signal.SIGKILL, 0.0, marks=SLOW), (signal.SIGKILL, 0.3), pytest.param(signal.SIGKILL, 1.0, marks=SLOW),
                                         (signal.SIGINT, 0.3), pytest.param(signal.SIGINT, 0.8, marks=SLOW), pytest.param(signal.SIGINT, 1.0, marks=SLOW)])
def test_a_store_killed_while_it_is_created_is_absent_or_complete(tmp_path, sig, after_s):
    db = tmp_path / "mlflow.db"
    rc = create_store_in_subprocess(db, sig, after_s)
    if sig == signal.SIGINT:  # never swallowed (SQLAlchemy's GC callbacks used to eat it at ~0.8 s)
        assert rc != 0
    from harness.tracking import Tracker

    tracker = Tracker(f"sqlite:///{db}")  # usable: created now, or already complete
    assert tracker.experiment_id
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))
    run_id = tracker.start_run("t", {}, {"a": 1})
    tracker.terminate(run_id, "FINISHED")


def test_a_store_is_created_where_the_folder_refuses_fsync(tmp_path, monkeypatch):
    """Some filesystems (SMB, WSL's drvfs, FUSE mounts) refuse a directory's fsync (EINVAL): the
    store, complete and renamed into place, is used, as SQLite itself treats that sync, rather
    than the command failing on its first use of a store it has just created."""
    import errno
    import stat

    from harness.tracking import Tracker

    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert tracker.experiment_id and not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_a_half_built_store_gets_one_line_with_the_recovery(tmp_path, synthetic_root):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)  # what MLflow leaves when killed early in its first use: tables, no version
    for t in ("experiments", "runs", "metrics", "params", "tags", "experiment_tags", "latest_metrics", "registered_models"):
        con.execute(f"CREATE TABLE {t} (x INTEGER)")
    con.commit()
    con.close()
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", f"sqlite:///{db}", *CAP)
    assert r.exit_code == 1 and "incomplete" in r.output and f"rm {db}" in r.output
    r = cli("report", "--tracking-uri", f"sqlite:///{db}", "--out", tmp_path / "r.html")
    assert r.exit_code == 1 and "incomplete" in r.output


# a writer SIGKILLed mid-transaction once its changes reached the database file (a spilled cache,
# or a kill mid-commit): what a `harness run` killed while it logs an epoch can leave
HOT_JOURNAL = ("import os, signal, sqlite3, sys; con = sqlite3.connect(sys.argv[1], isolation_level=None); "
               "con.execute('PRAGMA cache_size=2'); con.execute('BEGIN IMMEDIATE'); "
               "con.execute('CREATE TABLE filler (x BLOB)'); "
               "[con.execute('INSERT INTO filler VALUES (zeroblob(4096))') for _ in range(200)]; "
               "os.kill(os.getpid(), signal.SIGKILL)")


def test_a_store_whose_writer_was_killed_mid_write_opens(tmp_path):
    """A hot journal left by a SIGKILLed writer made the next command's read-only look at the
    store fail with "attempt to write a readonly database" (SQLITE_READONLY_ROLLBACK): a run
    killed after epoch 2 could not be resumed (test_shared_store's resume, flaky under load,
    where the kill more often lands mid-write). The journal is rolled back, the store opens."""
    from harness.tracking import Tracker

    db = tmp_path / "mlflow.db"
    run_id = Tracker(f"sqlite:///{db}").start_run("t", {}, {"a": 1})
    p = subprocess.run([sys.executable, "-c", HOT_JOURNAL, str(db)], capture_output=True)
    assert p.returncode == -signal.SIGKILL and (tmp_path / "mlflow.db-journal").stat().st_size > 0
    tracker = Tracker(f"sqlite:///{db}")
    assert tracker.run_status(run_id) == "RUNNING"  # the killed transaction rolled back, the run intact
    assert not (tmp_path / "mlflow.db-journal").exists()
    assert "filler" not in {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}


class HardKill(BaseException):
    """Stands for SIGKILL in-process: nothing in the harness catches it, so the run is left
    exactly as a killed process leaves it (RUNNING, partly logged)."""


@pytest.mark.slow
def test_a_run_killed_during_final_logging_completes_without_repeats(synthetic_root, store, monkeypatch):
    import harness.runs.finish as finish

    real = finish.write_artifacts

    def killed_after_metrics_and_a_pending_model(folder, tracker, run_id, *a, **k):
        real(folder, tracker, run_id, *a, **k)
        # the model row exists but its files do not: as MLflow leaves a model cut short
        tracker.client.create_logged_model(experiment_id=tracker.experiment_id, name="model", source_run_id=run_id)
        raise HardKill

    monkeypatch.setattr(finish, "write_artifacts", killed_after_metrics_and_a_pending_model)
    with pytest.raises(HardKill):
        CliRunner().invoke(main, ["run", "fastai-simplenet", "--data-dir", str(synthetic_root), "--tracking-uri", store, *CAP])
    [run] = runs(store)
    assert run.info.status == "RUNNING" and "test_acc" in run.data.metrics
    monkeypatch.setattr(finish, "write_artifacts", real)

    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0, r.output
    [run] = runs(store)
    c = MlflowClient(store)
    assert run.info.status == "FINISHED"
    for key in ("test_acc", "test_f1_macro", "train_time_s", "test_acc_cat"):
        assert len(c.get_metric_history(run.info.run_id, key)) == 1, key
    models = c.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [str(m.status) for m in models] == ["LoggedModelStatus.READY"] or [m.status for m in models] == ["READY"]


def test_ctrl_c_during_final_logging_leaves_a_finished_run(synthetic_root, store, ctrl_c_during_final_writes):
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 130 and "FINISHED" in r.output
    [run] = runs(store)
    assert run.info.status == "FINISHED" and "harness.failure_reason" not in run.data.tags
    assert MlflowClient(store).search_logged_models(experiment_ids=[run.info.experiment_id])


def test_ctrl_c_before_any_run_says_nothing_was_recorded(synthetic_root, store, monkeypatch):
    import harness.data.loader as data

    def interrupted(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_cifar10", interrupted)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 130 and "no run had been created" in r.output and "KILLED" not in r.output


def test_a_resumed_run_that_finishes_loses_its_failure_reason(synthetic_root, store, monkeypatch):
    import harness.runs.one_run as runner

    real, calls = runner._train_epochs, []

    def interrupted_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "_train_epochs", interrupted_once)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 130 and "marked KILLED" in r.output
    [run] = runs(store)
    assert run.info.status == "KILLED" and "harness.failure_reason" in run.data.tags
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, *CAP)
    assert r.exit_code == 0
    [run] = runs(store)
    assert run.info.status == "FINISHED" and "harness.failure_reason" not in run.data.tags


def test_report_names_the_runs_whose_artifacts_are_gone(synthetic_root, store, tmp_path):
    for eid in ("fastai-simplenet", "tutorial-base"):
        assert cli("run", eid, "--data-dir", synthetic_root, "--tracking-uri", store, *CAP).exit_code == 0
    lost = next(r for r in runs(store) if r.info.run_name == "tutorial-base")
    import shutil

    shutil.rmtree(Path(lost.info.artifact_uri.removeprefix("file://")))
    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", "--tracking-uri", store, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "artifacts missing" in r.output and lost.info.run_id in r.output and "tutorial-base" in r.output
    html = out.read_text()
    assert "Runs with missing artifacts" in html and lost.info.run_id in html


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path, monkeypatch):
    import torch

    from harness.runs.checkpoints import LocalRunState

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path))
    state = LocalRunState("r1")
    state.dir.mkdir(parents=True)
    torch.save({"epoch": 1, "evil": HarnessError("x")}, state.last)  # an arbitrary class inside
    with pytest.raises(HarnessError, match="unreadable"):
        state.load(torch.device("cpu"))
