"""What an owner that lost its run does with the writes still queued for it (tracking/outbox.py,
runs/finish.py, runs/one_run.py), each piece on its own: a review's mutations of these lines
(outbox keeps a lost run's queue, no abandon on a fenced exit, finish without drop, no look at a
refused write before the checkpoint, an impatient copy whose failures fence nothing) passed every
test before."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.runs.claims import ClaimPolicy, Claimer
from harness.runs import lifecycle
from harness.runs.lifecycle import TakenOver
from harness.tracking import Tracker, faults
from harness.tracking.outbox import Outbox


def queued_behind_a_gate(outbox: Outbox, landed: list, writes) -> threading.Event:
    gate = threading.Event()
    outbox.submit(gate.wait, 10)
    for run, value in writes:
        outbox.submit(landed.append, value, run=run)
    return gate


def test_a_lost_runs_queued_writes_are_dropped_and_the_others_land():
    landed = []
    with Outbox() as outbox:
        gate = queued_behind_a_gate(outbox, landed, [("a", "a1"), ("b", "b1"), ("a", "a2")])
        outbox.drop("a", TakenOver("taken over", run_id="a"))
        gate.set()
        outbox.flush("b")
        with pytest.raises(TakenOver):
            outbox.flush("a")
    assert landed == ["b1"]


def test_a_fenced_error_leaving_the_block_drops_every_queued_write():
    landed = []
    with pytest.raises(TakenOver):
        with Outbox() as outbox:
            gate = queued_behind_a_gate(outbox, landed, [(None, "x"), ("a", "a1")])
            try:
                raise TakenOver("taken over")
            finally:
                gate.set()
    assert landed == []


def test_one_runs_refusal_leaving_the_block_drops_only_that_runs_writes():
    landed = []
    why = TakenOver("taken over", run_id="a")
    with pytest.raises(TakenOver):
        with Outbox() as outbox:
            gate = queued_behind_a_gate(outbox, landed, [("a", "a1"), ("b", "b1")])
            outbox.drop("a", why)
            try:
                raise why
            finally:
                gate.set()
    assert landed == ["b1"]


def test_finish_refused_drops_the_runs_queued_writes(monkeypatch):
    import harness.runs.finish as finish

    def taken(*a, **k):
        raise TakenOver("taken over", run_id="r")

    monkeypatch.setattr(finish, "_finish", taken)
    with Outbox() as outbox:
        with pytest.raises(TakenOver):
            finish.finish(None, "r", None, None, None, None, None, 0, outbox, "me")
        assert "r" in outbox.lost


def test_an_impatient_calls_failure_fences_the_next_write(store, monkeypatch):
    """A heartbeat's failed look (an impatient copy's call) counts as an outage of the trainer's
    connection: its next write about the run asks whose the run is."""
    tracker = Tracker(store)
    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    rid = claimer.claim("fd1", "r", {}, False, True).run_id
    lifecycle.fence(tracker, rid, claimer.owner)
    asked = []
    real = tracker.outage.fences[rid]
    tracker.outage.fences[rid] = lambda: (asked.append(1), real())[1]
    tracker.set_tags(rid, {"harness.x": "0"})
    assert asked == []
    monkeypatch.setattr(faults, "_store_down", True)
    with pytest.raises(ConnectionError):
        tracker.impatient().run_record(rid)
    monkeypatch.setattr(faults, "_store_down", False)
    tracker.set_tags(rid, {"harness.x": "1"})
    assert asked == [1]


def test_a_refused_write_stops_the_run_before_its_next_checkpoint(synthetic_root, store, tmp_path, monkeypatch):
    """A queued write of the run refused (outbox.lost) while the store's look still says ours: the
    epoch's checkpoint is not written (the training thread raises the refusal first)."""
    import harness.runs.one_run as one_run

    made, real_outbox, real_point = [], one_run.Outbox, faults.point

    class Recorded(real_outbox):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    ends = []

    def refused_at_epoch_2(step, tracker=None, run_id=None):
        if step == "epoch_end" and run_id is not None and len(made):
            ends.append(run_id)
            if len(ends) == 2:  # the second epoch's end, once the first epoch's queued write is in the store
                deadline = time.monotonic() + 60  # (the outbox writes in the background: slow on a loaded machine)
                while not tracker.logged_steps(run_id, "epoch_time_s") and time.monotonic() < deadline:
                    time.sleep(0.05)
                made[0].drop(run_id, TakenOver("taken over by elsewhere", run_id=run_id))
        return real_point(step, tracker, run_id)

    monkeypatch.setattr(one_run, "Outbox", Recorded)
    monkeypatch.setattr(one_run.faults, "point", refused_at_epoch_2)
    saved = []
    import harness.runs.checkpoints as checkpoints
    for cls in {v for v in vars(checkpoints).values() if isinstance(v, type) and hasattr(v, "save") and hasattr(v, "home")}:
        real_save = cls.save
        monkeypatch.setattr(cls, "save", lambda self, state, _r=real_save: (saved.append(state["epoch"]), _r(self, state))[1])
    r = CliRunner().invoke(main, ["run", "tutorial-base", "--epochs", "2", "--max-train-images", "60", "--no-progress",
                                  "--no-system-metrics", "--data-dir", synthetic_root, "--tracking-uri", store])
    assert "taken over" in r.output and "Traceback" not in r.output, r.output
    assert saved == [0], (saved, r.output)
    c = MlflowClient(store)
    [run] = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")) == [0]
