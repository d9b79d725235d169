"""The crash-point matrix's machinery (test_crash_matrix.py and its server case,
test_crash_server.py): a fork server for the commands (crash_zygote.py), a cell (one store, one state folder, the same command run
with a fault and then again), and the ONE checker of every invariant of runs/lifecycle.py.

A cell's store is a SQLite file copied from a template, or an experiment of its own on the
session's tracking server (PostgreSQL + basic-auth MLflow, tests/servers.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from harness.runs.liveness import process_alive
from tests.conftest import make_synthetic

REPO = Path(__file__).resolve().parents[1]
RECIPE, EPOCHS = "tutorial-base", 2
EXPERIMENT = "cifar10-harness"


class Zygote:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("HARNESS_FAULT", None)
        self.p = subprocess.Popen([sys.executable, "-m", "tests.crash_zygote"], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def ask(self, **req) -> dict:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, argv, env, out: Path, sigint="default") -> int:
        return self.ask(op="start", argv=[str(a) for a in argv], env=env, out=str(out), sigint=sigint)["pid"]

    def wait(self, pid: int) -> int:
        return self.ask(op="wait", pid=pid)["rc"]

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("tiny"), n_train=120, n_test=60)


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny) -> Path:
    """A store with its schema and experiment made once (copied per cell)."""
    from harness.tracking import Tracker

    folder = tmp_path_factory.mktemp("template")
    Tracker(f"sqlite:///{folder}/mlflow.db")
    return folder / "mlflow.db"


class Cell:
    """One cell's store and folders. `template`: a SQLite store to copy; `server`: the session's
    tracking server instead (an experiment of the cell's own, checkpoints as the runs' artifacts)."""

    def __init__(self, root: Path, zygote: Zygote, tiny: Path, template: Path | None = None, server: dict | None = None):
        self.root, self.z = root, zygote
        (root / "faults").mkdir(parents=True)
        self.env = {"HARNESS_STATE_DIR": str(root / "state"), "HARNESS_FAULT_DIR": str(root / "faults"), "HARNESS_JOBS": "1",
                    "HARNESS_OUTAGE_WINDOW_S": "1", "HARNESS_FAULT": "", "HARNESS_FAKE_CLOCK_STEP": ""}
        self.experiment = EXPERIMENT
        if server is None:
            shutil.copy(template, root / "mlflow.db")
            self.store = f"sqlite:///{root}/mlflow.db"
        else:
            from tests.servers import ADMIN, PASSWORD

            self.store, self.experiment = server["url"], f"crash-{root.name}"
            # no state folder: the checkpoints live on the server; the locks in the cell's own cache
            self.env.update(HARNESS_STATE_DIR="", XDG_CACHE_HOME=str(root / "cache"), MLFLOW_TRACKING_USERNAME=ADMIN,
                            MLFLOW_TRACKING_PASSWORD=PASSWORD)
        self.argv = ["run", RECIPE, "--data-dir", tiny, "--tracking-uri", self.store, "--epochs", EPOCHS, "--max-train-images", 60,
                     "--no-progress", "--no-system-metrics", "--jobs", 1, "--experiment-name", self.experiment]
        self.n = 0

    def start(self, fault: str = "", sigint="default", **env) -> tuple[int, Path]:
        self.n += 1
        out = self.root / f"out{self.n}.txt"
        return self.z.start(self.argv, {**self.env, "HARNESS_FAULT": fault, **env}, out, sigint), out

    def run(self, fault: str = "", sigint="default", **env) -> tuple[int, str]:
        pid, out = self.start(fault, sigint, **env)
        return self.z.wait(pid), out.read_text()

    def wait_paused(self, out: Path) -> None:
        paused = self.root / "faults" / "paused"
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.02)


def runs(cell: Cell):
    c = MlflowClient(cell.store)
    exp = c.get_experiment_by_name(cell.experiment)
    return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=100)


def check(cell: Cell, rc: int, out: str, *, done: bool, unwritable: bool = False, held: bool = False, deleted: bool = False) -> dict:
    """Every invariant, after one command (`done`: the work must be complete now; `unwritable`: the
    command could write nothing at its end, SIGKILLed or its store gone; `deleted`: the fault
    deleted the run in the store, perhaps after a line said what became of it). Returns the runs by status."""
    c, found = runs(cell)
    live = [r for r in found if r.info.lifecycle_stage == "active"]
    by = {}
    for r in live:
        by.setdefault(r.info.status, []).append(r)
        # 1. each epoch at most once, a finished run has every epoch
        for key in ("epoch_time_s", "train_loss", "val_acc"):
            steps = [m.step for m in c.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.info.run_id, key, steps, out)
            if r.info.status == "FINISHED":
                assert sorted(steps) == list(range(EPOCHS)), (key, steps, out)
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train_loss_step")]
        assert len(steps) == len(set(steps)), (r.info.run_id, "train_loss_step twice", out)
        # 3. RUNNING only with a live owner; a process SIGKILLed, or whose store is gone, cannot
        # write its end: its run stays RUNNING under a dead owner, which the next claim sees at once
        if r.info.status == "RUNNING":
            owner_alive = process_alive(r.data.tags.get("harness.owner", ""))
            assert owner_alive or unwritable, (r.info.run_id, r.data.tags.get("harness.state"), out)
        if r.info.status == "FINISHED":
            assert r.data.tags.get("harness.state") == "finished", (r.data.tags.get("harness.state"), out)
            assert "harness.failure_reason" not in r.data.tags
        # 4. none of these faults is one a rerun repeats
        assert r.info.status != "FAILED", (r.data.tags.get("harness.failure_reason"), out)
    # 2. at most one trainer: one finished run of the configuration, one that is not retired
    assert len(by.get("FINISHED", [])) <= 1, out
    current = [r for r in live if r.data.tags.get("harness.state") != "superseded"]
    assert len(current) <= 1, ([(r.info.status, r.data.tags.get("harness.state")) for r in current], out)
    # 4. (as said) no outcome line calls a transient fault a failure
    assert "FAILED" not in out and "run(s) failed" not in out, out
    # 5. nothing left behind: checkpoints (a state folder's, a server's artifacts) only of runs still
    # to resume, no lock file, no half-written file
    state = cell.root / "state"
    resumable = {r.info.run_id for r in current if r.info.status in ("RUNNING", "KILLED")}
    if unwritable:  # a kill between a run's finish and its checkpoint's removal: the next claim removes it
        resumable |= {r.info.run_id for r in by.get("FINISHED", [])}
    left = {p.name for p in state.iterdir()} if state.exists() else set()
    left |= {r.info.run_id for r in live if c.list_artifacts(r.info.run_id, "harness-state")}
    assert left <= resumable, (left, resumable, out)
    assert not list(cell.root.rglob("*.pt.tmp")), out
    if not unwritable:
        assert not list(cell.root.rglob("*.lock")), out
    # 6. one line, no traceback, and what each line says of a run is what the store says of it
    assert "Traceback" not in out, out
    said_as_stored(found, current, out, deleted)
    if rc not in (0, -9):
        said = [ln for ln in out.splitlines() if ln.startswith(("error:", "interrupted:"))]
        assert len(said) == 1, out
    if held:  # Ctrl-C or SIGTERM in the final writes waits until the run is complete, foreground or background
        assert [r.data.tags.get("harness.state") for r in by.get("FINISHED", [])] == ["finished"], out
        assert not left, (left, out)
    if done:
        assert rc == 0, out
        assert [r.data.tags.get("harness.state") for r in by.get("FINISHED", [])] == ["finished"], out
        assert not left and not list(cell.root.rglob("*.lock")), (left, out)
        assert c.search_logged_models(experiment_ids=[live[0].info.experiment_id]), out
    return by


RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
STOP_LINE = re.compile(r"^(error:|interrupted:|\S+ \(seed \d+\): |\S+: test accuracy )")
# what a clause of a stop line says became of a run, by its words (the first that matches)
CLAIMS = (("could not be", "unwritten"), ("recorded FINISHED", "FINISHED"), ("test accuracy", "FINISHED"),
          ("identical finished run exists", "FINISHED"), ("superseded", "superseded"), ("was deleted in the store", "deleted"),
          ("were deleted", "deleted"), ("marked KILLED", "resumable"), ("left resumable", "resumable"),
          ("is resumable", "resumable"), ("RESUMABLE, ", "resumable"))


def said_as_stored(found: list, current: list, out: str, deleted: bool = False) -> None:
    """Each stop line (an outcome, the finished line, `interrupted:`/`error:`) is cut into its
    clauses; a clause that says what became of a run (finished, resumable, deleted, superseded)
    must agree with the store: the runs it names by id, or else the configuration's current run.
    `unwritten`: the line says the end could not be recorded (the store gone): RUNNING or resumable.
    `deleted`: someone else deleted the run (the `delete` fault), maybe after the line was said."""
    by_id = {r.info.run_id: r for r in found}
    for line in out.splitlines():
        if not STOP_LINE.match(line):
            continue
        for clause in line.split("; "):
            claim = next((c for words, c in CLAIMS if words in clause), None)
            if claim is None:
                continue
            ids = RUN_ID.findall(clause)
            if not ids and claim == "resumable" and "RESUMABLE, " in clause and "to resume it" not in line:
                continue  # nothing of it was recorded: no run to be resumable
            if not ids and claim in ("superseded", "deleted"):
                continue
            runs_meant = [by_id[i] for i in ids if i in by_id] if ids else current[:1] if len(current) == 1 else []
            assert runs_meant or not ids, (clause, "names a run the store does not have", out)
            for r in runs_meant:
                assert _stored(r) in _AGREES[claim] | ({"deleted"} if deleted else set()), (clause, _stored(r), out)


_AGREES = {"FINISHED": {"FINISHED"}, "resumable": {"KILLED/resumable"}, "unwritten": {"RUNNING/training", "KILLED/resumable", "RUNNING/claimed",
                                                                                      "RUNNING/recorded"},
           "deleted": {"deleted"}, "superseded": {"KILLED/superseded"}}


def _stored(r) -> str:
    if r.info.lifecycle_stage == "deleted":
        return "deleted"
    if r.info.status == "FINISHED":
        return "FINISHED"
    return f"{r.info.status}/{r.data.tags.get('harness.state')}"
