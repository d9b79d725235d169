"""The fixes behind a run's invariants, each checked in this process (fast) where it can be; the
crash-point matrix (test_crash_matrix.py) checks them again end to end, fault by fault."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from harness.runs import lifecycle
from harness.runs.checkpoints import LocalRunState, lock_root, state_root
from harness.runs.claims import ClaimPolicy, Claimed, Claimer, ConfigLock, Request
from harness.runs.liveness import process_alive
from harness.tracking import Tracker


@pytest.fixture
def tracker(store) -> Tracker:
    return Tracker(store)


def test_logging_the_model_writes_no_status(tracker):
    """One writer of a run's status (lifecycle.py): `with mlflow.start_run(run_id)` set FINISHED on
    exit, so a kill between the model and the lifecycle's finish left a FINISHED run mid-state."""
    rid = tracker.create_run("r", {}).run_id
    tracker.log_model(rid, torch.nn.Linear(2, 2), np.zeros((1, 2), dtype="float32"), ["torch"])
    assert tracker.run_status(rid) == "RUNNING" and tracker.has_model(rid)
    lifecycle.stop(tracker, rid, None, "test")
    tracker.log_model(rid, torch.nn.Linear(2, 2), np.zeros((1, 2), dtype="float32"), ["torch"])
    assert tracker.run_status(rid) == "KILLED"


def test_a_live_owner_stays_live_across_a_clock_step(monkeypatch):
    """Liveness by start ticks since boot: a 1-s wall-clock step (psutil's create_time moves with
    the boot time) made a second process take over a live run."""
    child = subprocess.Popen([sys.executable, "-c", "from harness.runs.liveness import new_owner; print(new_owner(), flush=True); "
                              "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        owner = child.stdout.readline().strip()
        assert process_alive(owner) is True
        real_create, real_time = psutil.Process.create_time, time.time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real_create(self) + 1.0)
        monkeypatch.setattr(time, "time", lambda: real_time() + 1.0)
        assert process_alive(owner) is True
    finally:
        child.kill()
        child.wait()
    assert process_alive(owner) is False


def test_claimers_with_other_state_folders_meet_at_one_lock(tmp_path, monkeypatch):
    """The lock folder follows the store only: two claimers of one SQLite store with different
    HARNESS_STATE_DIRs both won a claim (settle 0 on SQLite), in 3 of 30 tries."""
    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "a"))
    a = ConfigLock("k", lock_root(uri))
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "b"))
    b = ConfigLock("k", lock_root(uri))
    assert a.acquire() and not b.acquire()
    a.release()
    assert not list(tmp_path.rglob("*.lock"))  # no lock file outlives its holder
    assert b.acquire() and not a.acquire()
    b.release()
    assert not list(tmp_path.rglob("*.lock"))


def _killed_run(tracker: Tracker, chash: str, epochs: int) -> str:
    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    c = claimer.claim(chash, "r", {}, False, True)
    assert isinstance(c, Claimed)
    for e in range(epochs):
        tracker.log_metrics(c.run_id, {"epoch_time_s": 1.0}, e)
    lifecycle.stop(tracker, c.run_id, claimer.owner, "killed")
    return c.run_id


def test_a_run_with_epochs_and_no_checkpoint_is_superseded_not_restarted(tracker):
    """Resumed without its checkpoint (another HARNESS_STATE_DIR, or deleted), a run was trained
    again from epoch 1 inside the same MLflow run: every epoch logged twice."""
    old = _killed_run(tracker, "h1", 2)
    c = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h1", "r", {}, False, True)
    assert isinstance(c, Claimed) and c.run_id != old and not c.resumed
    assert str(LocalRunState(old, state_root(tracker.uri)).last) in c.note
    tags = tracker.run_tags(old)
    assert tracker.run_status(old) == "KILLED" and tags[lifecycle.STATE] == lifecycle.SUPERSEDED
    assert "no checkpoint" in tags[lifecycle.REASON]
    # a superseded run is nobody's to resume: the next claim of the configuration leaves it alone
    lifecycle.stop(tracker, c.run_id, None, "killed")
    again = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h1", "r", {}, False, True)
    assert again.run_id == c.run_id and again.resumed


def test_a_run_with_its_checkpoint_is_resumed(tracker):
    old = _killed_run(tracker, "h2", 2)
    LocalRunState(old, state_root(tracker.uri)).save({"epoch": 1})
    c = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h2", "r", {}, False, True)
    assert c.run_id == old and c.resumed and not c.note


def test_supersede_leaves_the_run_retired_not_resumable(tracker):
    old = _killed_run(tracker, "h3", 0)
    c = Claimer(tracker, ClaimPolicy(settle_s=0)).claim_many([Request("h3", "r", {}, True, True)])[0]
    assert c.run_id != old
    assert tracker.run_tags(old)[lifecycle.STATE] == lifecycle.SUPERSEDED


def test_an_outage_is_not_counted_as_a_silent_heartbeat():
    """The heartbeat is silent while the store is down: an observer that could not look either
    (its reads rode out the outage) must not count that time as the owner's silence and take over
    a live run once the store is back; it watches afresh, and the owner's next beat shows it alive."""
    from harness.runs.liveness import ALIVE, DEAD, WATCHING, Observer
    from harness.tracking import RunRecord

    now = [0.0]
    obs = Observer(120.0, monotonic=lambda: now[0])
    run = lambda beat: RunRecord("r", "RUNNING", {"harness.heartbeat": beat, "harness.beat_s": "10"}, 0)  # noqa: E731
    assert obs.liveness(run("1")) == WATCHING
    now[0] = 5.0
    assert obs.liveness(run("1")) == WATCHING
    now[0] = 300.0  # the store was down from 5 s to 300 s for both
    assert obs.liveness(run("1")) == WATCHING
    now[0] = 310.0
    assert obs.liveness(run("2")) == ALIVE  # its first beat after the outage
    for t in range(320, 440, 10):  # a dead owner is still found dead by watching
        now[0] = float(t)
        obs.liveness(run("2"))
    assert obs.liveness(run("2")) == DEAD


def test_an_interrupted_takeover_of_a_killed_run_leaves_it_resumable_and_says_so(tracker):
    """Ctrl-C while taking over a KILLED run (its owner tag written, not yet reopened): the run was
    left 'claimed' and the line said no run had been created; it is resumable again, and said so."""
    from harness.errors import Interrupted

    old = _killed_run(tracker, "h4", 0)

    def ctrl_c(_s):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        Claimer(tracker, ClaimPolicy(settle_s=0), sleep=ctrl_c).claim("h4", "r", {}, False, True)
    assert old in str(e.value) and "left resumable" in str(e.value) and "nothing of it was recorded" not in str(e.value)
    assert tracker.run_status(old) == "KILLED" and tracker.run_tags(old)[lifecycle.STATE] == lifecycle.RESUMABLE


def test_a_signal_between_the_claim_and_training_gives_the_claim_up_and_says_so(tracker, synthetic_root):
    """Ctrl-C (or SIGTERM) after the claim and before training (run_one's note and on_claim) went
    out as a bare KeyboardInterrupt, said as "no run had been created yet" while the claimed run
    stayed RUNNING: the claim is given up (a new run deleted) and the line says so."""
    from harness.data.cifar_files import load_cifar10
    from harness.errors import Interrupted
    from harness.executors.local import run_one
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import RunOptions

    exp, data = load_catalogue()["tutorial-base"], load_cifar10(synthetic_root / "cifar-10-batches-py")
    seen = []

    def ctrl_c(run_id, owner):
        seen.append(run_id)
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        run_one(exp, data, tracker, RunOptions(epochs=1, max_train_images=60, progress=False, system_metrics=False), 0,
                echo=lambda *a: None, claimer=Claimer(tracker, ClaimPolicy(settle_s=0)), on_claim=ctrl_c)
    assert "before it trained" in str(e.value) and "deleted" in str(e.value), str(e.value)
    assert tracker.run_record(seen[0]).deleted
    assert not list(lock_root(tracker.uri).glob("*.lock"))


def test_a_finished_runs_leftover_checkpoint_is_removed_by_the_next_claim(tracker):
    """A kill between a run's finish and its checkpoint's removal left the checkpoint for good
    (every later claim declined the finished run and looked no further)."""
    from harness.runs.claims import Declined

    rid = _killed_run(tracker, "h5", 2)
    state = LocalRunState(rid, state_root(tracker.uri))
    state.save({"epoch": 1})
    tracker.reopen(rid)
    lifecycle.finish(tracker, rid, None)
    got = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h5", "r", {}, False, True)
    assert isinstance(got, Declined) and got.finished and got.run_id == rid
    assert not state.exists() and not state.dir.exists()


def test_an_owner_asks_the_store_before_its_writes(tracker):
    """The heartbeat sees a takeover or a deletion only at its next beat (up to 10 s): the owner
    asks the store itself before an epoch's checkpoint and the final writes."""
    from harness.runs.lifecycle import RunDeleted, TakenOver

    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    c = claimer.claim("h7", "r", {}, False, True)
    lifecycle.still_held(tracker, c.run_id, claimer.owner)
    tracker.set_tags(c.run_id, {lifecycle.OWNER: "elsewhere|1|t1|x"})
    with pytest.raises(TakenOver):
        lifecycle.still_held(tracker, c.run_id, claimer.owner)
    tracker.delete_run(c.run_id)
    with pytest.raises(RunDeleted):
        lifecycle.still_held(tracker, c.run_id, claimer.owner)


def test_a_checkpoint_in_another_state_folder_is_resumed_from_there(tracker, tmp_path, monkeypatch):
    """A run killed under HARNESS_STATE_DIR=A and resumed under B (or without it) was superseded
    for want of a checkpoint that was there all along: the run records its checkpoint's home and a
    later attempt resumes from it; where neither has it, the note names both places."""
    from harness.runs.checkpoints import HOME_TAG, run_state

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "A"))
    old = _killed_run(tracker, "h6", 2)
    home = LocalRunState(old, state_root(tracker.uri))
    home.save({"epoch": 1})
    tracker.set_tags(old, {HOME_TAG: home.home()})
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "B"))
    c = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h6", "r", {}, False, True)
    assert c.run_id == old and c.resumed and not c.note
    assert run_state(tracker, old).where() == str(home.last)  # the resume reads (and goes on writing) there
    # gone from both: superseded, and the line says where it was looked for
    lifecycle.stop(tracker, old, None, "killed")
    home.clear()
    new = Claimer(tracker, ClaimPolicy(settle_s=0)).claim("h6", "r", {}, False, True)
    assert new.run_id != old and str(tmp_path / "B") in new.note and str(tmp_path / "A") in new.note


def test_a_retried_ray_task_takes_the_run_from_its_first_attempt(tracker):
    """A Ray task retried while its first attempt still lives (a partition) trained under the
    driver's owner string, beside the first: each attempt now takes the run under an owner of its
    own, the earlier one loses it at its next check, and the driver still ends the run of any of
    its attempts (and of no other claimer)."""
    from harness.executors.ray import _stop_ours
    from harness.runs.claims import Heartbeat, of_claim, take_attempt
    from harness.runs.lifecycle import TakenOver
    from harness.runs.liveness import new_owner

    driver = Claimer(tracker, ClaimPolicy(settle_s=0))
    c = driver.claim("h8", "r", {}, False, True)
    first, found = take_attempt(tracker, c.run_id, driver.owner)
    assert found == driver.owner and first != driver.owner and of_claim(first, driver.owner)
    second, found = take_attempt(tracker, c.run_id, driver.owner)  # the retry, the first still alive
    assert found == first and second not in (first, driver.owner) and of_claim(second, driver.owner)
    assert process_alive(second) is process_alive(driver.owner)  # liveness is the driver's process, as before
    with pytest.raises(TakenOver):
        lifecycle.still_held(tracker, c.run_id, first)
    lifecycle.still_held(tracker, c.run_id, second)
    beat = Heartbeat(tracker, 10.0, first)
    beat.hold(c.run_id)
    beat.beat(c.run_id)
    assert beat.lost == {c.run_id: second}
    _stop_ours(tracker, c.run_id, driver.owner, "its Ray task failed")
    assert tracker.run_status(c.run_id) == "KILLED" and tracker.run_tags(c.run_id)[lifecycle.STATE] == lifecycle.RESUMABLE
    other = new_owner()
    assert not of_claim(other, driver.owner) and not of_claim(driver.owner, second)
    tracker.set_tags(c.run_id, {lifecycle.OWNER: other})
    assert take_attempt(tracker, c.run_id, driver.owner) == (None, other)  # another claimer's run is not taken



def test_a_retried_ray_task_never_reopens_the_run_its_first_attempt_finished(tracker, synthetic_root, monkeypatch):
    """The first attempt finished the run (and removed its checkpoint), then its node was lost
    before Ray had the reply: the retry reopened the FINISHED run, found no checkpoint and left it
    KILLED "resumable", and the next command retrained it from epoch 1. Now the retry sees it
    finished and trains nothing; the run stays FINISHED, each epoch once."""
    from harness.data.cifar_files import load_cifar10
    from harness.executors import ray as ray_executor
    from harness.executors.local import make_job, run_one
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.claims import take_attempt
    from harness.runs.job import RunOptions
    from harness.runs.liveness import attempt_owner, new_owner
    from harness.runs.one_run import train_run

    exp, data = load_catalogue()["tutorial-base"], load_cifar10(synthetic_root / "cifar-10-batches-py")
    opts = RunOptions(epochs=2, max_train_images=60, progress=False, system_metrics=False)
    driver = new_owner()
    first = run_one(exp, data, tracker, opts, 0, echo=lambda *a: None, claimer=Claimer(tracker, ClaimPolicy(settle_s=0), owner=driver))
    assert first.status == "finished"
    tracker.set_tags(first.run_id, {lifecycle.OWNER: attempt_owner(driver)})  # as the first attempt left it
    # the retry, as run_task trains: its own attempt owner, then a resumed train_run
    owner, _ = take_attempt(tracker, first.run_id, driver)
    again = train_run(make_job(exp, data, tracker, opts, 0, echo=lambda *a: None), first.run_id, resumed=True, recorded=True, beat_s=10, owner=owner)
    assert again.status == "skipped" and "finished already" in again.reason
    # and run_task itself answers before taking the run (its node's name, without a cluster)
    monkeypatch.setattr(ray_executor, "_node_name", lambda: "here")
    spec = ray_executor.TaskSpec(exp, opts, 0, first.run_id, tracker.uri, tracker.experiment_name, str(synthetic_root / "cifar-10-batches-py"),
                                 data.fingerprint, {}, 10.0, driver)
    told = ray_executor.run_task(spec)
    assert told.status == "skipped" and "earlier attempt" in told.reason
    rec = tracker.run_record(first.run_id)
    assert rec.status == "FINISHED" and rec.tags[lifecycle.OWNER] == owner
    steps = sorted(s for s in tracker.logged_steps(first.run_id, "epoch_time_s"))
    assert steps == [0, 1]
    rerun = run_one(exp, data, tracker, opts, 0, echo=lambda *a: None, claimer=Claimer(tracker, ClaimPolicy(settle_s=0)))
    assert rerun.status == "skipped" and rerun.run_id == first.run_id  # the same command: done, nothing trained again
