"""An owner that lost its run writes nothing more into it, whatever cut it off: an outage on its
side only that let another machine take the run over (the fence of tracking/outage.py), two
attempts of a Ray task taking one run at once, a resume's relogged epochs; and what a lost or
failed run leaves behind is removed (lifecycle.py's invariants 2 and 5). The end-to-end case of
the outage, with two processes, is test_crash_matrix.py's."""

from __future__ import annotations

import threading

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.runs import lifecycle
from harness.runs.claims import ClaimPolicy, Claimed, Claimer, take_attempt
from harness.runs.lifecycle import OWNER, TakenOver
from harness.tracking import TAG, Tracker, faults
from harness.tracking.outage import Outage
from harness.tracking.outbox import Outbox

TAKER = "elsewhere/0/0|1|t1|taker"


@pytest.fixture
def tracker(store) -> Tracker:
    return Tracker(store)


def test_a_write_retried_through_an_outage_asks_whose_the_run_is_first(tracker, monkeypatch):
    """The owner's store calls fail (an outage on its side) while another machine takes the run
    over and logs epoch 1; when the store answers again the owner's queued epoch-1 write was
    landing in the taker's run (epoch_time_s at [0, 1, 1]). Now the retry first asks the store
    whose the run is: it is dropped, and the owner's training thread is told TakenOver."""
    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    rid = claimer.claim("hf1", "r", {}, False, True).run_id
    tracker.log_metrics(rid, {"epoch_time_s": 1.0}, 0)  # epoch 0 landed before the outage
    other = MlflowClient(tracker.uri)  # another machine: the store answers it all along
    waits = []

    def meanwhile(s):  # the owner's retry waits; meanwhile the taker takes over, then the store returns
        waits.append(s)
        if len(waits) == 1:
            other.set_tag(rid, OWNER, TAKER)
            other.log_metric(rid, "epoch_time_s", 2.0, step=1)
        else:
            faults._store_down = False

    tracker.outage = Outage(300, sleep=meanwhile)
    lifecycle.fence(tracker, rid, claimer.owner)
    monkeypatch.setattr(faults, "_store_down", True)
    with pytest.raises(TakenOver, match="taken over by elsewhere"):
        with Outbox() as outbox:
            outbox.submit(tracker.log_metrics, rid, {"epoch_time_s": 1.0}, 1, run=rid)
            outbox.submit(tracker.log_metrics, rid, {"train_loss": 0.5}, 1, run=rid)  # queued behind it: dropped too
            outbox.flush(rid)
    with pytest.raises(TakenOver):  # any call about the run, from this owner, is refused from now on
        tracker.logged_steps(rid, "epoch_time_s")
    assert sorted(m.step for m in other.get_metric_history(rid, "epoch_time_s")) == [0, 1] and len(waits) == 2
    assert [m.value for m in other.get_metric_history(rid, "epoch_time_s") if m.step == 1] == [2.0]  # the taker's
    assert not other.get_metric_history(rid, "train_loss")
    # outside an outage a write asks nothing first (the fence costs one call per outage)
    asked = []
    lifecycle.unfence(tracker, rid)
    tracker.outage.fence(rid, lambda: asked.append(1))
    tracker.set_tags(rid, {"x": "1"})
    assert asked == []


def test_two_attempts_taking_one_run_at_once_leave_it_to_one(tracker, monkeypatch):
    """A Ray task retried while its first attempt starts: both read the driver's claim, both
    wrote their own owner, and both trained until an owner check. Now each writes, waits the
    settling time and reads back: only the last writer keeps the run."""
    driver = Claimer(tracker, ClaimPolicy(settle_s=0))
    rid = driver.claim("hf2", "r", {}, False, True).run_id
    real, second = Tracker.set_tags, []

    def then_the_retry(self, run_id, tags):  # the first attempt's owner written: the retry takes the run now
        real(self, run_id, tags)
        if not second:
            second.append(None)
            second[0] = take_attempt(tracker, run_id, driver.owner)

    monkeypatch.setattr(Tracker, "set_tags", then_the_retry)
    first = take_attempt(tracker, rid, driver.owner)
    owners = [o for o, _ in (first, second[0]) if o is not None]
    assert len(owners) == 1 and tracker.run_tags(rid)[OWNER] == owners[0], (first, second)


def test_a_resume_relogs_no_epoch_into_a_run_taken_over(tracker):
    from harness.runs.one_run import relog_missing

    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    rid = claimer.claim("hf3", "r", {}, False, True).run_id
    ck = {"epoch": 0, "metrics": {"epoch_time_s": 1.0}, "series": {}, "history": {}}
    tracker.set_tags(rid, {OWNER: TAKER})
    with pytest.raises(TakenOver):
        relog_missing(tracker, rid, ck, claimer.owner)
    assert tracker.logged_steps(rid, "epoch_time_s") == []
    relog_missing(tracker, rid, ck, TAKER)  # its owner relogs it, once
    relog_missing(tracker, rid, ck, TAKER)
    assert tracker.logged_steps(rid, "epoch_time_s") == [0]


def test_a_run_failed_for_good_keeps_no_checkpoint(tracker, synthetic_root, monkeypatch):
    """Invariant 5: no claim resumes a FAILED run, so its checkpoint would outlive it; only a
    diverged run's was removed (here the model fails in epoch 2, after epoch 1's checkpoint)."""
    import harness.runs.one_run as one_run
    from harness.data.cifar_files import load_cifar10
    from harness.executors.local import run_one
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.checkpoints import run_state
    from harness.runs.job import RunOptions

    real, n = one_run.train_one_epoch, []

    def broken_in_epoch_2(*a, **k):
        n.append(1)
        if len(n) == 2:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 20x10)")
        return real(*a, **k)

    monkeypatch.setattr(one_run, "train_one_epoch", broken_in_epoch_2)
    exp, data = load_catalogue()["tutorial-base"], load_cifar10(synthetic_root / "cifar-10-batches-py")
    opts = RunOptions(epochs=2, max_train_images=60, progress=False, system_metrics=False)
    o = run_one(exp, data, tracker, opts, 0, echo=lambda *a: None, claimer=Claimer(tracker, ClaimPolicy(settle_s=0)))
    assert o.status == "failed" and tracker.run_status(o.run_id) == "FAILED"
    assert not run_state(tracker, o.run_id).exists()


def test_a_dropped_checkpoint_upload_leaves_no_temporary_file(tracker):
    from harness.runs.checkpoints import SharedRunState

    rid = tracker.create_run("r", {}).run_id
    gate = threading.Event()
    with Outbox() as outbox:
        outbox.submit(gate.wait)  # the outbox busy with an earlier write
        state = SharedRunState(tracker, rid, outbox)
        state.save({"epoch": 0, "w": torch.zeros(2)})
        tmp = state._pending[0].parent
        assert tmp.exists()
        outbox.abandon()  # the run lost: what is queued is dropped
        gate.set()
        outbox.flush()
    assert not tmp.exists()


class _RayStopped:
    """Just enough of Ray for the driver's stop: every task already ended, without a reply."""

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs), []

    def cancel(self, ref, force=False):
        raise AssertionError("nothing to cancel")

    def get(self, ref, timeout=None):
        raise TimeoutError("no reply")


def test_a_ray_stop_leaves_a_killed_run_it_had_claimed_resumable_again(tracker):
    """The driver took over a KILLED run (still KILLED, state claimed) and was stopped before its
    task started: the run stayed KILLED/claimed; now it is resumable again, and said so."""
    from harness.executors.ray import _stop

    old = tracker.create_run("r", {f"{TAG}config_hash": "hf5"}).run_id
    lifecycle.stop(tracker, old, None, "killed earlier")
    driver = Claimer(tracker, ClaimPolicy(settle_s=0))
    claim = driver.claim("hf5", "r", {}, False, True)
    assert isinstance(claim, Claimed) and claim.run_id == old and claim.resumed
    assert tracker.run_tags(old)[lifecycle.STATE] == lifecycle.CLAIMED and tracker.run_status(old) == "KILLED"
    said = _stop(_RayStopped(), {"ref": (0, old)}, tracker, {0: claim}, driver.owner, [None], lambda *a: None)
    assert tracker.run_status(old) == "KILLED" and tracker.run_tags(old)[lifecycle.STATE] == lifecycle.RESUMABLE
    assert "1 run(s) in flight are marked KILLED" in said, said
