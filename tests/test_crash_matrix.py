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
another clock, and the owner's liveness it tests does not change between the steps. The second
claimer of both takes a lock folder of its own (tests/crash_zygote.py's HARNESS_TEST_LOCK_DIR):
a SQLite store's lock beside the file would stop it before the store's claim and the owner's
liveness were asked, and those are what the cells test. `delete` not at
`checkpoint`: the checkpoint follows the epoch's end with no store call between (delete-epoch_end
is that moment).

Beside the matrix: an outage on the owner's side only, past the stale limit, while another
machine takes the run over (the fence: nothing of the old owner lands in the taker's run), two
stalled owners that wake after a takeover, a killed --jobs worker, the checker's own test and that of the faults counted across a command.

Run time: 140 CPU-s for the 69 tests (about 2 CPU-s a cell: two or three commands of about a
CPU-second each, their imports and the SQL store's machinery paid once by the fork server; 245
CPU-s when each command still imported the store's 420 modules), plus a few seconds for the fork
server and the template store. The quick tier (`-m "not slow"`) keeps
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
    # from another state folder (claimer) or with its wall clock stepped by a second (clock). The
    # second takes a lock folder of its own (crash_zygote's hook), as a claimer the local lock does
    # not order would: it gets past this machine's quick skip, so the store's claim and the
    # owner's liveness are what must stop it
    pid, out = cell.start(spec + "pause")
    cell.wait_paused(out)
    other = {"HARNESS_STATE_DIR": str(cell.root / "state2")} if fault == "claimer" else {"HARNESS_FAKE_CLOCK_STEP": "1"}
    rc2, out2 = cell.run(HARNESS_TEST_LOCK_DIR=str(cell.root / "locks2"), **other)
    assert rc2 == 0 and "skipped" in out2 and "test accuracy" not in out2, out2  # it left the run to the first
    assert "on this machine" not in out2, out2  # ... because of the store, not of the local lock
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
          held=fault in ("term", "term_bg") and step in ("final_metrics", "model", "finish", "clear"), deleted=fault == "delete")
    rc2, out2 = cell.run()  # the same command again finishes the work
    check(cell, rc2, out2, done=True)


@pytest.mark.slow  # --jobs starts a fork server for its workers (imports once): about 10 s
def test_a_jobs_worker_killed_then_the_supervisor_stopped(tmp_path, zygote, tiny, template):
    """--jobs: a worker SIGKILLed at an epoch's end, then SIGTERM to the supervisor while the run
    waits for a new worker: the run is marked KILLED (resumable) and said so, not left RUNNING
    and counted among the runs never started. The replacement pauses before it says it is ready
    (worker_ready#2, the command's second worker), so the SIGTERM lands while the run waits,
    however fast a worker starts; it goes on once the run is marked, and is told to stop."""
    cell = Cell(tmp_path, zygote, tiny, template)
    cell.argv[cell.argv.index("--jobs") + 1] = "2"
    pid, out = cell.start("epoch_end@1:kill,worker_ready#2:pause", HARNESS_JOBS="2")
    cell.wait_paused(out)
    assert "a new worker resumes the run" in out.read_text() and (cell.root / "faults" / "fired-epoch_end").exists(), out.read_text()
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: [r.info.status for r in runs(cell)[1]] == ["KILLED"], "the run waiting for a new worker was never marked KILLED", out)
    (cell.root / "faults" / "go").touch()
    rc = zygote.wait(pid)
    text = out.read_text()
    assert rc == 130 and "never started" not in text and "it is resumable" in text and "waited for a new one" in text, text
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


def _wait_for(check, what: str, out) -> None:
    deadline = time.monotonic() + 120
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{out.read_text()}"
        time.sleep(0.05)


def _checkpoint_epoch(path) -> int | None:
    import torch

    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet
        return None


@pytest.mark.slow  # two commands and a 4-s stale watch, about 20 s; test_run_fences.py checks the fence in-process, quick
def test_an_owner_cut_off_from_the_store_past_the_stale_limit_writes_nothing_into_its_takers_run(tmp_path, zygote, tiny, template):
    """An outage on the owner's side only, longer than the stale limit and inside the outage
    window: another machine sees the heartbeat silent, takes the run over and finishes it. When
    the store answers the owner again, its queued epoch writes (retried through the outage) were
    landing in the new owner's run (epoch_time_s at steps [0, 1, 1]); now the first call after
    the outage asks the store whose the run is (a fence), the queue is dropped and the old owner
    stops with one line. Ordered by files (the outage ends when the test writes `go`), no sleeps."""
    cell = Cell(tmp_path, zygote, tiny, template)
    quick = {"HARNESS_STALE_AFTER_S": "4", "HARNESS_OUTAGE_WINDOW_S": "300"}  # beats every second; 4 s silent is dead
    pid, out = cell.start("epoch_end@2:outage", **quick)  # the store gone for this process after its second epoch
    _wait_for((cell.root / "faults" / "fired-epoch_end").exists, "the outage never began", out)
    c, [run] = runs(cell)
    rid = run.info.run_id
    _wait_for(lambda: _checkpoint_epoch(cell.root / "state" / rid / "state.pt") == 1, "no checkpoint of epoch 2", out)
    # another machine (its own lock folder, its own host name): it watches the silent heartbeat and takes the run over
    rc2, out2 = cell.run(HARNESS_FAKE_HOST="elsewhere", HARNESS_TEST_LOCK_DIR=str(cell.root / "locks-b"), **quick)
    assert rc2 == 0 and "test accuracy" in out2 and f"run {rid}" in out2, out2
    assert c.get_run(rid).data.tags["harness.owner"].startswith("elsewhere/"), out2
    (cell.root / "faults" / "go").touch()  # the store answers the first owner again
    rc, text = zygote.wait(pid), out.read_text()
    said = [ln for ln in text.splitlines() if "(seed 0): skipped" in ln]
    assert rc == 0 and len(said) == 1 and "taken over by elsewhere/" in said[0], text
    by = check(cell, rc, text + out2, done=True)
    assert [r.info.run_id for r in by["FINISHED"]] == [rid], text
    for key in ("epoch_time_s", "train_loss", "val_acc"):
        assert sorted(m.step for m in c.get_metric_history(rid, key)) == [0, 1], (key, text)
    assert "test_acc" in c.get_run(rid).data.metrics, text


def test_the_checker_holds_each_stop_line_to_the_store():
    """A line that says a run is resumable while the store says FINISHED (or the reverse) fails
    the checker, not only a count of lines."""
    from types import SimpleNamespace as NS

    from tests.crash_cells import said_as_stored

    rid = "a" * 32
    done = NS(info=NS(run_id=rid, lifecycle_stage="active", status="FINISHED"), data=NS(tags={"harness.state": "finished"}))
    killed = NS(info=NS(run_id=rid, lifecycle_stage="active", status="KILLED"), data=NS(tags={"harness.state": "resumable"}))
    finished_line = f"tutorial-base: test accuracy 10.00% (published none), train 1.0s, run {rid}"
    resumable_line = "tutorial-base (seed 0): RESUMABLE, interrupted (Ctrl-C); run the same command again to resume it"
    killed_line = f"interrupted: run tutorial-base ({rid}) is marked KILLED; run the same command again to resume it"
    said_as_stored([done], [done], finished_line)
    said_as_stored([killed], [killed], resumable_line + "\n" + killed_line)
    for line in (resumable_line, killed_line):
        with pytest.raises(AssertionError):
            said_as_stored([done], [done], line)
    with pytest.raises(AssertionError):
        said_as_stored([killed], [killed], finished_line)


def test_a_fault_counted_across_the_command_fires_in_the_process_that_reaches_its_step_the_nth_time(tmp_path, monkeypatch):
    """step#n counts every process of the command (a --jobs worker and its replacement each reach
    worker_ready once: `worker_ready#2` is the replacement's); step@n counts this process only;
    several faults joined by commas each fire at their own step."""
    from harness.tracking import faults

    monkeypatch.setenv("HARNESS_FAULT_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_FAULT", "worker_ready#2:disk,record@2:disk")
    monkeypatch.setattr(faults, "_seen", {})
    faults.point("worker_ready")  # the command's first worker
    faults.point("record")
    assert not (tmp_path / "fired-worker_ready").exists() and not (tmp_path / "fired-record").exists()
    with pytest.raises(RuntimeError):
        faults.point("record")  # this process's second
    monkeypatch.setattr(faults, "_seen", {})  # another process: its own count starts again ...
    with pytest.raises(RuntimeError):
        faults.point("worker_ready")  # ... the command's does not
    faults.point("worker_ready")  # the third: nothing
    assert (tmp_path / "fired-worker_ready").read_text() == "disk" and (tmp_path / "fired-record").exists()
