"""The owner's lease on its writes (tracking/outage.py's fence, runs/lifecycle.py's `fence` and
`still_held`): an owner writes without asking only while its last heartbeat that landed is younger
than two beats (an observer needs four unchanged before it takes a run over); past that, after an
outage on its side or a stall (SIGSTOP, a paused VM), every write asks the store whose the run is,
and the training thread waits for the store's answer before its next checkpoint. On a healthy store
the heartbeat keeps the lease and nothing more is asked."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from harness.runs import lifecycle
from harness.runs.claims import ClaimPolicy, Claimer
from harness.runs.heartbeat import Heartbeat
from harness.runs.lifecycle import OWNER, TakenOver
from harness.tracking import Tracker, faults
from harness.tracking.outage import Outage
from harness.tracking.outbox import Outbox

TAKER = "elsewhere/0/0|1|t1|taker"
BEAT_S = 1.0  # lease: 2 s


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def tracker(store) -> Tracker:
    return Tracker(store)


def owned(tracker, name: str, clock: Clock, sleep=lambda s: None):
    """A claimed run fenced on a fake monotonic clock, its lease renewed now."""
    claimer = Claimer(tracker, ClaimPolicy(settle_s=0))
    rid = claimer.claim(name, "r", {}, False, True).run_id
    tracker.outage = Outage(300, clock=clock, sleep=sleep)
    lifecycle.fence(tracker, rid, claimer.owner, BEAT_S)
    asked = []
    real = tracker.outage.fences[rid]
    tracker.outage.fences[rid] = lambda: (asked.append(clock.t), real())[1]
    tracker.outage.renew(rid, clock.t)
    return rid, claimer.owner, asked


def steps(tracker, rid) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracker.uri).get_metric_history(rid, "epoch_time_s"))


def test_a_healthy_store_asks_nothing_while_the_heartbeat_keeps_the_lease(tracker):
    """Many epochs' writes, the heartbeat landing every beat: not one ownership check more."""
    clock = Clock()
    rid, owner, asked = owned(tracker, "hl1", clock)
    beat = Heartbeat(tracker, BEAT_S, owner)
    for epoch in range(6):
        clock.t += BEAT_S
        beat.beat(rid)  # what the heartbeat thread does each interval
        tracker.log_metrics(rid, {"epoch_time_s": 1.0}, epoch)
        tracker.set_tags(rid, {"harness.x": str(epoch)})
    assert asked == [] and steps(tracker, rid) == list(range(6))


def test_after_an_outage_longer_than_the_lease_every_queued_write_asks(tracker, monkeypatch):
    """The outage outlasts the lease; the first queued write's check passes, then another machine
    takes the run over while the queue drains: before, the fence asked once per outage and the
    owner's epoch-2 write landed in the taker's run (steps [0, 1, 2, 2]). Now each write asks until
    a heartbeat lands: the epoch-2 write is refused, the taker's epoch 2 is the only one."""
    clock = Clock()

    def outage_ends(s):
        clock.t += 3 * BEAT_S  # past the lease
        faults._store_down = False

    rid, _, asked = owned(tracker, "hl2", clock, sleep=outage_ends)
    tracker.log_metrics(rid, {"epoch_time_s": 1.0}, 0)
    other = MlflowClient(tracker.uri)
    monkeypatch.setattr(faults, "_store_down", True)

    def taker_claims_now():
        other.set_tag(rid, OWNER, TAKER)
        other.log_metric(rid, "epoch_time_s", 2.0, step=2)

    with Outbox() as outbox:
        outbox.submit(tracker.log_metrics, rid, {"epoch_time_s": 1.0}, 1, run=rid)
        outbox.submit(taker_claims_now)
        outbox.submit(tracker.log_metrics, rid, {"epoch_time_s": 1.0}, 2, run=rid)
        with pytest.raises(TakenOver):
            outbox.flush(rid)
    assert steps(tracker, rid) == [0, 1, 2] and len(asked) >= 2
    assert [m.value for m in other.get_metric_history(rid, "epoch_time_s") if m.step == 2] == [2.0]


def test_a_stalled_owner_asks_before_its_queued_write(tracker):
    """No call failed (the process was stopped past the lease, and taken over meanwhile): the
    owner's next write asks first and is refused."""
    clock = Clock()
    rid, _, asked = owned(tracker, "hl3", clock)
    other = MlflowClient(tracker.uri)

    def stalled_and_taken_over():
        clock.t += 60.0
        other.set_tag(rid, OWNER, TAKER)

    with Outbox() as outbox:
        outbox.submit(stalled_and_taken_over)
        outbox.submit(tracker.log_metrics, rid, {"epoch_time_s": 1.0}, 0, run=rid)
        with pytest.raises(TakenOver):
            outbox.flush(rid)
    assert steps(tracker, rid) == [] and len(asked) == 1


def test_a_beat_that_finds_the_run_taken_over_renews_nothing(tracker):
    clock = Clock()
    rid, owner, asked = owned(tracker, "hl4", clock)
    beat = Heartbeat(tracker, BEAT_S, owner)
    clock.t += 3 * BEAT_S
    assert not tracker.outage.leased(rid)
    beat.beat(rid)
    assert tracker.outage.leased(rid)  # the beat landed and read back as ours
    clock.t += 3 * BEAT_S
    MlflowClient(tracker.uri).set_tag(rid, OWNER, TAKER)
    beat.beat(rid)
    assert not tracker.outage.leased(rid) and rid in beat.lost


def test_a_cut_off_owner_past_its_lease_waits_for_the_store_before_its_checkpoint(tracker, monkeypatch):
    """Before, still_held returned at once while the owner's store calls failed: the owner trained
    on and wrote its local checkpoint (a SQLite store's state folder: no store call) beside the
    machine that took the run over. Within the lease it still does (no taker can hold the run
    yet); past it, still_held waits for the store, which then says the run is another's."""
    clock = Clock()
    waited = []

    def meanwhile(s):  # the store answers again after a while, the run another machine's by then
        waited.append(s)
        clock.t += s
        if len(waited) == 3:
            MlflowClient(tracker.uri).set_tag(rid, OWNER, TAKER)
            faults._store_down = False

    rid, owner, asked = owned(tracker, "hl5", clock, sleep=meanwhile)
    monkeypatch.setattr(faults, "_store_down", True)
    with pytest.raises(ConnectionError):
        tracker.impatient().run_record(rid)  # the heartbeat's look fails: an outage on this side
    tracker.outage._failed(ConnectionError("down"))  # the training thread's writes ride it out meanwhile
    lifecycle.still_held(tracker, rid, owner)  # inside the lease: training goes on, nothing asked
    assert waited == [] and asked == []
    clock.t += 2 * BEAT_S
    with pytest.raises(TakenOver):
        lifecycle.still_held(tracker, rid, owner)
    assert len(waited) == 3  # it waited for the store rather than checkpoint on
