"""A run's life at every crash point: each fault injected at each named step of a run
(tracking/faults.py), then every invariant checked by ONE checker, then the same command run
again and the invariants checked once more (after Jepsen's checkers and FoundationDB's
simulation: one checker, many faults). The invariants are runs/lifecycle.py's:

  1. every epoch of a run is logged exactly once (no step twice, a finished run has them all);
  2. at most one live process trains a configuration (one finished run of it, at most);
  3. a run is RUNNING only while a live owner holds it;
  4. FAILED only for what a rerun repeats (none of these faults is such: no run ends FAILED);
  5. nothing a run leaves behind outlives it (checkpoints, lock files, half-written files);
  6. every stop says in one line what became of the run (no traceback), and the same command then
     finishes the work.

Small runs (a 2-epoch recipe on 60 synthetic images, SQLite), each command forked from one
process that imported the harness once (crash_zygote.py).

The steps now include `clear` (the run FINISHED, its checkpoint not yet removed): 63 cells.

Cells skipped by design: `disk` (torch.save failing as on a full disk) only at `checkpoint`, the
one local file a run writes (the store's own disk is the `store` fault); `clock` (a second claimer
whose wall clock is stepped) at claim, epoch_end and model only: it is the `claimer` cell with
another clock, and the owner's liveness it tests does not change between the steps. On one
machine a SQLite store's lock (beside the file) orders the two claimers before liveness is asked,
so the liveness under a stepped clock itself is checked in test_run_invariants.py.

Run time: about 4 minutes for the 60 tests on 2 cores shared with other work (3 to 6 s a cell:
two or three commands of about a second each, their imports paid once by the fork server), plus
a few seconds for the fork server and the template store. The quick tier (`-m "not slow"`) keeps
three cells (a resume from a checkpoint, the final writes held, two claimers) and the stalled
owner; the rest are marked slow. The cells are independent (each its own folder and store copy;
the fork server and template are per module, so per xdist worker), so `pytest -n 2` splits them.
The cells' artifacts share the template store's artifact folder; every check reads the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from harness.runs.liveness import process_alive
from harness.tracking.faults import STEPS
from tests.conftest import make_synthetic

REPO = Path(__file__).resolve().parents[1]
RECIPE, EPOCHS = "tutorial-base", 2
NTH = {"epoch_end": 2, "checkpoint": 2}  # the second epoch: one checkpoint exists to resume from
FAULTS = ("kill", "term", "term_bg", "store", "disk", "delete", "claimer", "clock")
CLOCK_STEPS = ("claim", "epoch_end", "model")


def skipped(step: str, fault: str) -> str | None:
    if fault == "disk" and step != "checkpoint":
        return "the disk fault is torch.save's: only the checkpoint writes a local file"
    if fault == "delete" and step == "checkpoint":
        return "the checkpoint follows the epoch's end with no store call between: delete-epoch_end is that moment"
    if fault == "clock" and step not in CLOCK_STEPS:
        return "a stepped clock is the claimer cell seen with another clock: three steps suffice"
    return None


CELLS = [(s, f) for f in FAULTS for s in STEPS if not skipped(s, f)]
QUICK = {("epoch_end", "kill"), ("finish", "term"), ("claim", "claimer")}  # the quick tier's sample of the matrix


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
    def __init__(self, root: Path, zygote: Zygote, tiny: Path, template: Path):
        self.root, self.z = root, zygote
        (root / "faults").mkdir(parents=True)
        shutil.copy(template, root / "mlflow.db")
        self.store = f"sqlite:///{root}/mlflow.db"
        self.argv = ["run", RECIPE, "--data-dir", tiny, "--tracking-uri", self.store, "--epochs", EPOCHS, "--max-train-images", 60,
                     "--no-progress", "--no-system-metrics", "--jobs", 1]
        self.env = {"HARNESS_STATE_DIR": str(root / "state"), "HARNESS_FAULT_DIR": str(root / "faults"), "HARNESS_JOBS": "1",
                    "HARNESS_OUTAGE_WINDOW_S": "1", "HARNESS_FAULT": "", "HARNESS_FAKE_CLOCK_STEP": ""}
        self.n = 0

    def start(self, fault: str = "", sigint="default", **env) -> tuple[int, Path]:
        self.n += 1
        out = self.root / f"out{self.n}.txt"
        return self.z.start(self.argv, {**self.env, "HARNESS_FAULT": fault, **env}, out, sigint), out

    def run(self, fault: str = "", sigint="default", **env) -> tuple[int, str]:
        pid, out = self.start(fault, sigint, **env)
        return self.z.wait(pid), out.read_text()


def runs(store: str):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=100)


def check(cell: Cell, rc: int, out: str, *, done: bool, unwritable: bool = False, held: bool = False) -> dict:
    """Every invariant, after one command (`done`: the work must be complete now; `unwritable`: the
    command could write nothing at its end, SIGKILLed or its store gone). Returns the runs by status."""
    c, found = runs(cell.store)
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
    # 5. nothing left behind: checkpoints only of runs still to resume, no lock file, no half-written file
    state = cell.root / "state"
    resumable = {r.info.run_id for r in current if r.info.status in ("RUNNING", "KILLED")}
    if unwritable:  # a kill between a run's finish and its checkpoint's removal: the next claim removes it
        resumable |= {r.info.run_id for r in by.get("FINISHED", [])}
    left = {p.name for p in state.iterdir()} if state.exists() else set()
    assert left <= resumable, (left, resumable, out)
    assert not list(cell.root.rglob("*.pt.tmp")), out
    if not unwritable:
        assert not list(cell.root.rglob("*.lock")), out
    # 6. one line, no traceback
    assert "Traceback" not in out, out
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


def fault_run(cell: Cell, step: str, fault: str) -> tuple[int, str]:
    nth = NTH.get(step, 1)
    spec = f"{step}@{nth}:"
    if fault in ("kill", "term", "store", "disk", "delete"):
        return cell.run(spec + fault)
    if fault == "term_bg":
        return cell.run(spec + "term", sigint="ignore")
    # claimer / clock: the first pauses at the step while a second claims the same configuration
    # from another state folder (claimer) or with its wall clock stepped by a second (clock)
    pid, out = cell.start(spec + "pause")
    paused = cell.root / "faults" / "paused"
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    other = {"HARNESS_STATE_DIR": str(cell.root / "state2")} if fault == "claimer" else {"HARNESS_FAKE_CLOCK_STEP": "1"}
    rc2, out2 = cell.run(**other)
    assert rc2 == 0 and "skipped" in out2 and "test accuracy" not in out2, out2  # it left the run to the first
    assert not (cell.root / "state2").exists() or not any((cell.root / "state2").iterdir()), out2
    (cell.root / "faults" / "go").touch()
    return cell.z.wait(pid), out.read_text() + out2


@pytest.mark.parametrize("step,fault", [pytest.param(s, f, id=f"{f}-{s}", marks=() if (s, f) in QUICK else pytest.mark.slow)
                                        for s, f in CELLS])
def test_crash_point(step, fault, tmp_path, zygote, tiny, template):
    cell = Cell(tmp_path, zygote, tiny, template)
    rc, out = fault_run(cell, step, fault)
    fired = cell.root / "faults" / f"fired-{step}"
    assert fired.exists(), f"the {fault} fault never fired at {step}:\n{out}"  # no cell passes vacuously
    if fault == "kill":
        assert rc == -9, out
    check(cell, rc, out, done=fault in ("claimer", "clock"), unwritable=fault in ("kill", "store"),
          held=fault in ("term", "term_bg") and step in ("final_metrics", "model", "finish", "clear"))
    rc2, out2 = cell.run()  # the same command again finishes the work
    check(cell, rc2, out2, done=True)


@pytest.mark.slow  # --jobs starts worker processes of their own (imports each): about 20 s
def test_a_jobs_worker_killed_then_the_supervisor_stopped(tmp_path, zygote, tiny, template):
    """--jobs: a worker SIGKILLed at an epoch's end, then SIGTERM to the supervisor while the run
    waits for a new worker: the run is marked KILLED (resumable) and said so, not left RUNNING
    and counted among the runs never started."""
    cell = Cell(tmp_path, zygote, tiny, template)
    cell.argv[cell.argv.index("--jobs") + 1] = "2"
    pid, out = cell.start("epoch_end@1:kill", HARNESS_JOBS="2")
    deadline = time.monotonic() + 180
    while "a new worker resumes the run" not in out.read_text():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    rc = zygote.wait(pid)
    text = out.read_text()
    assert rc == 130 and "never started" not in text and "it is resumable" in text, text
    by = check(cell, rc, text, done=False, unwritable=True)  # (the killed worker's lock file: the rerun removes it)
    assert [r.data.tags["harness.state"] for r in by["KILLED"]] == ["resumable"] and "RUNNING" not in by, text
    rc2, out2 = cell.run(HARNESS_JOBS="2")
    assert check(cell, rc2, out2, done=True)["FINISHED"][0].info.run_id == by["KILLED"][0].info.run_id, out2  # the same run, resumed


def test_a_stalled_owner_that_wakes_after_a_takeover_writes_nothing(tmp_path, zygote, tiny, template):
    """An owner stalled before its final writes (paused at outbox_flush) while another process
    took the run over (its owner tag): once it wakes it writes no final metric, no model and no
    status into the new owner's run, and says so in one line."""
    cell = Cell(tmp_path, zygote, tiny, template)
    pid, out = cell.start("outbox_flush:pause")
    paused = cell.root / "faults" / "paused"
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    c, [run] = runs(cell.store)
    c.set_tag(run.info.run_id, "harness.owner", "elsewhere/0/0|1|t1|newowner")
    (cell.root / "faults" / "go").touch()
    rc, text = zygote.wait(pid), out.read_text()
    assert rc == 0 and "skipped" in text and "taken over by elsewhere" in text and "Traceback" not in text, text
    after = c.get_run(run.info.run_id)
    assert after.info.status == "RUNNING" and "test_acc" not in after.data.metrics, text
    assert not c.search_logged_models(experiment_ids=[run.info.experiment_id]), text


def test_a_stalled_owner_that_wakes_mid_training_after_a_takeover_writes_nothing(tmp_path, zygote, tiny, template):
    """An owner stalled after training its second epoch (paused before that epoch's checkpoint)
    while another process took the run over: the heartbeat looks only every few seconds, so the
    owner asks the store itself before the checkpoint and the epoch's metrics; it writes neither
    (the new owner's checkpoint and epochs are not overwritten or doubled) and stops in one line."""
    cell = Cell(tmp_path, zygote, tiny, template)
    pid, out = cell.start("epoch_end@2:pause")
    paused = cell.root / "faults" / "paused"
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    c, [run] = runs(cell.store)
    ck = cell.root / "state" / run.info.run_id / "state.pt"
    before = ck.read_bytes()  # epoch 1's checkpoint, as the new owner would have resumed from it
    c.set_tag(run.info.run_id, "harness.owner", "elsewhere/0/0|1|t1|newowner")
    (cell.root / "faults" / "go").touch()
    rc, text = zygote.wait(pid), out.read_text()
    assert rc == 0 and "skipped" in text and "taken over by elsewhere" in text and "Traceback" not in text, text
    assert ck.read_bytes() == before, text  # no checkpoint of epoch 2 written over the new owner's
    assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")] == [0], text
    assert c.get_run(run.info.run_id).info.status == "RUNNING", text
