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
process that imported the harness once (crash_zygote.py); the cell and the checker are
crash_cells.py's, shared with test_crash_server.py (the server case: PostgreSQL + basic-auth MLflow).

The matrix: 10 steps (claim, settle, record, epoch_end, checkpoint, outbox_flush, final_metrics,
model, finish, clear) x 8 faults (kill, term, term_bg, store, disk, delete, claimer, clock),
63 cells after the skips below, each checked twice (after the fault, after the rerun).

Cells skipped by design (17): `disk` (torch.save failing as on a full disk) only at `checkpoint`, the
one local file a run writes (the store's own disk is the `store` fault); `clock` (a second claimer
whose wall clock is stepped) at claim, epoch_end and model only: it is the `claimer` cell with
another clock, and the owner's liveness it tests does not change between the steps. On one
machine a SQLite store's lock (beside the file) orders the two claimers before liveness is asked,
so the liveness under a stepped clock itself is checked in test_run_invariants.py. `delete` not at
`checkpoint`: the checkpoint follows the epoch's end with no store call between (delete-epoch_end
is that moment).

Run time: about 4 minutes for the 66 tests on 2 cores shared with other work (3 to 6 s a cell:
two or three commands of about a second each, their imports paid once by the fork server), plus
a few seconds for the fork server and the template store. The quick tier (`-m "not slow"`) keeps
three cells (a resume from a checkpoint, the final writes held, two claimers) and the stalled
owners; the rest are marked slow. The cells are independent (each its own folder and store copy;
the fork server and template are per module, so per xdist worker), so `pytest -n 2` splits them.
The cells' artifacts share the template store's artifact folder; every check reads the store.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.tracking.faults import STEPS
from tests.crash_cells import Cell, check, runs, template, tiny, zygote  # noqa: F401  (fixtures)

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
    cell.wait_paused(out)
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
    cell.wait_paused(out)
    c, [run] = runs(cell)
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
    cell.wait_paused(out)
    c, [run] = runs(cell)
    ck = cell.root / "state" / run.info.run_id / "state.pt"
    before = ck.read_bytes()  # epoch 1's checkpoint, as the new owner would have resumed from it
    c.set_tag(run.info.run_id, "harness.owner", "elsewhere/0/0|1|t1|newowner")
    (cell.root / "faults" / "go").touch()
    rc, text = zygote.wait(pid), out.read_text()
    assert rc == 0 and "skipped" in text and "taken over by elsewhere" in text and "Traceback" not in text, text
    assert ck.read_bytes() == before, text  # no checkpoint of epoch 2 written over the new owner's
    assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")] == [0], text
    assert c.get_run(run.info.run_id).info.status == "RUNNING", text
