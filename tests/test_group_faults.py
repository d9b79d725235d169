"""A recipe's seeds trained together (group_run.py) hold the single run's invariants: a run
deleted in the store mid-group stops alone (its checkpoint removed, nothing more written to it)
while the others finish, and a run to resume whose checkpoint is gone is never trained again from
epoch 1 inside itself."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from harness.cli import main

ARGS = ["--repeats", "2", "--together", "always", "--epochs", "2", "--max-train-images", "60", "--no-progress", "--no-system-metrics"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def runs_by_seed(store: str) -> dict:
    c = MlflowClient(store)
    return {r.data.tags["harness.seed"]: r for r in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])}


def epochs(store: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(store).get_metric_history(run_id, "epoch_time_s"))


@pytest.mark.slow
def test_a_run_deleted_mid_group_stops_alone(synthetic_root, store, tmp_path, monkeypatch):
    """Seed 1's run deleted in the store during the group's second epoch: the heartbeat would see
    it seconds later, the group asks the store before each checkpoint. Before, its checkpoint was
    written and its metrics queued into a deleted run, whose failing write then stopped the whole
    group (seed 0 too)."""
    import harness.runs.group_run as group_run

    real, calls = group_run.group_epoch, []

    def delete_seed_1_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            MlflowClient(store).delete_run(runs_by_seed(store)["1"].info.run_id)
        return real(*a, **k)

    monkeypatch.setattr(group_run, "group_epoch", delete_seed_1_in_epoch_2)
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert r.exit_code == 0 and "deleted in the store" in r.output and "Traceback" not in r.output, r.output
    c = MlflowClient(store)
    [deleted] = [x for x in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id], run_view_type=ViewType.ALL)
                 if x.info.lifecycle_stage == "deleted"]
    assert epochs(store, deleted.info.run_id) == [0]  # nothing written to it after the deletion
    assert not (tmp_path / "state" / deleted.info.run_id).exists()  # its checkpoint removed
    kept = runs_by_seed(store)
    assert list(kept) == ["0"] and kept["0"].info.status == "FINISHED" and epochs(store, kept["0"].info.run_id) == [0, 1], r.output


@pytest.mark.slow
def test_a_group_to_resume_without_its_checkpoints_logs_no_epoch_twice(synthetic_root, store, monkeypatch):
    """Two runs killed after epoch 1, their checkpoints gone between the claim and the load (or
    in another home): the group trained them from epoch 1 inside themselves (each epoch logged
    twice); now each is left resumable with the reason, and once the checkpoints are back the
    same command resumes them."""
    import harness.executors.local as local
    import harness.runs.group_run as group_run

    real_metrics = group_run.epoch_metrics

    def ctrl_c_in_epoch_2(stats, val, epoch, steps):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_metrics(stats, val, epoch, steps)

    monkeypatch.setattr(group_run, "epoch_metrics", ctrl_c_in_epoch_2)
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert r.exit_code == 130 and "KILLED" in r.output, r.output
    monkeypatch.setattr(group_run, "epoch_metrics", real_metrics)

    real_state = local.run_state

    class Gone:
        def __init__(self, state):
            self.state = state

        def load(self, device):
            return None

    monkeypatch.setattr(local, "run_state", lambda tracker, run_id, *a, **k: Gone(real_state(tracker, run_id, *a, **k)))
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert "no checkpoint" in r.output and "Traceback" not in r.output, r.output
    runs = runs_by_seed(store)
    assert all(epochs(store, x.info.run_id) == [0] and x.info.status == "KILLED" for x in runs.values()), r.output
    monkeypatch.setattr(local, "run_state", real_state)
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert r.exit_code == 0 and "resuming together after epoch 1/2" in r.output, r.output
    again = runs_by_seed(store)
    assert sorted(again) == ["0", "1"] and all(x.info.status == "FINISHED" and epochs(store, x.info.run_id) == [0, 1] for x in again.values())
    assert {x.info.run_id for x in again.values()} == {x.info.run_id for x in runs.values()}


def all_by_seed(store: str) -> dict:
    c = MlflowClient(store)
    eid = c.get_experiment_by_name("cifar10-harness").experiment_id
    return {r.data.tags["harness.seed"]: r for r in c.search_runs([eid], run_view_type=ViewType.ALL)}


@pytest.mark.parametrize("how", ["delete", "takeover"])
def test_one_runs_fenced_write_ends_only_that_run(synthetic_root, store, tmp_path, monkeypatch, how):
    """Seed 0's run deleted or taken over by another machine while this one could not reach the
    store: its queued write is refused by the fence (outbox.lost) between its epoch-2 look at the
    store and its checkpoint. Before, that refusal escaped the group's epoch loop, every run's queue
    was dropped and seed 1 was ended with seed 0's error (deleted: its checkpoint removed, left
    RUNNING). Now only seed 0 stops; seed 1 finishes, each epoch logged once."""
    import harness.runs.group_run as group_run
    from harness.runs.lifecycle import OWNER

    real, fired = group_run._lost, []

    def lost_then_fenced(tracker, run_id, owner, heartbeat, outbox, epoch):
        r = real(tracker, run_id, owner, heartbeat, outbox, epoch)
        if r is None and epoch == 1 and run_id == all_by_seed(store)["0"].info.run_id and not fired:
            fired.append(1)
            other = MlflowClient(store)  # another machine, while this one could not reach the store
            other.delete_run(run_id) if how == "delete" else other.set_tag(run_id, OWNER, "elsewhere/0/0|1|t1|taker")
            tracker.outage.note_outage()  # the store answers again: the next write about seed 0 is fenced
            outbox.submit(tracker.set_tags, run_id, {"harness.x": "1"}, run=run_id)
            outbox.flush()
            assert run_id in outbox.lost
        return r

    monkeypatch.setattr(group_run, "_lost", lost_then_fenced)
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert fired and "Traceback" not in r.output, r.output
    runs = all_by_seed(store)
    s0, s1 = runs["0"], runs["1"]
    assert s1.info.status == "FINISHED" and epochs(store, s1.info.run_id) == [0, 1], r.output
    assert "deleted" not in s1.data.tags.get("harness.failure_reason", ""), r.output
    assert epochs(store, s0.info.run_id) == [0]  # nothing more into seed 0's run after the refusal
    if how == "delete":
        assert not (tmp_path / "state" / s0.info.run_id).exists()  # the deleted run's checkpoint removed
    else:
        assert s0.info.status == "RUNNING"  # the taker's now: this process leaves it alone


def test_a_run_taken_over_in_a_group_drops_only_its_queued_writes(synthetic_root, store, monkeypatch):
    """Seed 0 taken over (the store says so before its epoch-2 checkpoint) while a write of its is
    still queued: that write is dropped, not landed in the taker's run; seed 1's land."""
    import threading

    import harness.runs.group_run as group_run
    from harness.runs.lifecycle import OWNER

    real, gate = group_run._lost, threading.Event()

    def taken_over_with_a_write_queued(tracker, run_id, owner, heartbeat, outbox, epoch):
        seeds = all_by_seed(store)
        if epoch == 1 and run_id == seeds["0"].info.run_id and not gate.is_set():
            outbox.submit(gate.wait, 10)
            outbox.submit(tracker.set_tags, run_id, {"harness.late": "1"}, run=run_id)
            MlflowClient(store).set_tag(run_id, OWNER, "elsewhere/0/0|1|t1|taker")
            r = real(tracker, run_id, owner, heartbeat, outbox, epoch)
            threading.Timer(0.5, gate.set).start()
            return r
        return real(tracker, run_id, owner, heartbeat, outbox, epoch)

    monkeypatch.setattr(group_run, "_lost", taken_over_with_a_write_queued)
    r = cli("run", "tutorial-base", *ARGS, "--data-dir", synthetic_root, "--tracking-uri", store)
    assert gate.is_set() and "Traceback" not in r.output, r.output
    runs = all_by_seed(store)
    assert "harness.late" not in runs["0"].data.tags, r.output
    assert runs["1"].info.status == "FINISHED" and epochs(store, runs["1"].info.run_id) == [0, 1], r.output
