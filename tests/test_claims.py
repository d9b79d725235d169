"""Claims through the store itself: a live run is left alone, an abandoned one is taken over by
exactly one claimer, and claimers that race for a new configuration settle it so that exactly
one trains. Liveness does not depend on clocks: on this machine the owner's process decides, on
another an observer takes a run over only after seeing its heartbeat unchanged for the stale
limit on its own monotonic clock (injected here). (Same-machine processes: test_shared_store.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest

from harness.runs.liveness import UNREADABLE, process_alive, start_ticks
from harness.runs.claims import BEAT_INTERVAL, HEARTBEAT, OWNER, ClaimPolicy, Claimed, Claimer, Declined, beating, machine_id
from harness.tracking import Tracker

ELSEWHERE = "other-host/abcd1234/1|4242|1000.000|deadbeef"  # an owner on another machine


@pytest.fixture
def tracker(store):
    return Tracker(store)


class FakeTime:
    """The observer's monotonic clock and sleep; `on_sleep` runs as time passes (a remote writer's beats)."""

    def __init__(self, on_sleep=None):
        self.now, self.waits, self.on_sleep = 1000.0, [], on_sleep

    def monotonic(self):
        return self.now

    def sleep(self, s):
        self.waits.append(s)
        self.now += s
        if self.on_sleep:
            self.on_sleep(self.now)


def claimer(tracker, settle=0.3, stale=120.0, clock=None, owner=None, fake: FakeTime | None = None):
    fake = fake or FakeTime()
    return Claimer(tracker, ClaimPolicy(stale_after_s=stale, settle_s=settle), owner=owner, clock=clock or time.time,
                   sleep=lambda s: fake.sleep(s) if s != settle else time.sleep(s), monotonic=fake.monotonic)


def other_run(tracker, chash, beat: float, status="RUNNING", owner=ELSEWHERE):
    rec = tracker.create_run("x", {"harness.config_hash": chash, OWNER: owner, HEARTBEAT: f"{beat:.3f}"})
    if status != "RUNNING":
        tracker.terminate(rec.run_id, status)
    return rec.run_id


def dead_owner_here() -> str:
    """An owner on this machine whose process has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = start_ticks(p.pid)
    p.wait()
    return f"{machine_id()}|{p.pid}|t{start}|cafecafe"


def test_a_run_whose_heartbeat_changes_elsewhere_is_left_alone(tracker):
    rid = other_run(tracker, "c1", 5.0)
    beats = iter(range(6, 10_000))
    fake = FakeTime(on_sleep=lambda now: tracker.set_tags(rid, {HEARTBEAT: f"{next(beats)}.000"}) if now > 1010 else None)
    got = claimer(tracker, fake=fake).claim("c1", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Declined) and got.run_id == rid and ELSEWHERE in got.reason and not got.watching
    assert sum(fake.waits) < 30  # decided once the beat changed, not after the stale limit
    assert len(tracker.find_runs("c1")) == 1


def test_a_run_whose_heartbeat_stopped_is_taken_over_after_the_limit_on_the_observers_clock(tracker):
    rid = other_run(tracker, "c2", time.time())  # a fresh-looking value: its age is never judged
    fake = FakeTime()
    c = claimer(tracker, stale=120, fake=fake)
    got = c.claim("c2", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Claimed) and got.run_id == rid and got.resumed
    assert 120 <= sum(fake.waits) < 130
    tags = tracker.run_tags(rid)
    assert tags[OWNER] == c.owner and tags[BEAT_INTERVAL] == "10"  # the writer says how often it beats
    # now it is alive again, under its new owner (a live process on this machine): another
    # claimer leaves it alone at once
    beating(c.owner, True)
    try:
        other = FakeTime()
        assert isinstance(claimer(tracker, fake=other).claim("c2", "x", {}, force=False, lock_held=False), Declined)
        assert other.waits == []
    finally:
        beating(c.owner, False)


def test_skewed_clocks_neither_take_over_a_live_run_nor_keep_a_dead_one(tracker):
    """The writer's clock is hours behind (its beats look ancient) or ahead (they look fresh
    forever): only whether the value changes counts."""
    behind = other_run(tracker, "skew1", time.time() - 36_000)
    fake = FakeTime(on_sleep=lambda now: tracker.set_tags(behind, {HEARTBEAT: f"{time.time() - 36_000 + now:.3f}"}))
    got = claimer(tracker, fake=fake).claim("skew1", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Declined) and got.run_id == behind
    ahead = other_run(tracker, "skew2", time.time() + 36_000)  # and then it died
    fake = FakeTime()
    got = claimer(tracker, fake=fake).claim("skew2", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Claimed) and got.run_id == ahead and sum(fake.waits) >= 120


def test_the_writers_beat_interval_sets_the_limit_whatever_the_observers_setting(tracker):
    """The writer beats every 60 s (its HARNESS_STALE_AFTER_S is 240); an observer set to 20 s
    still waits four of its beats before calling it dead."""
    rid = other_run(tracker, "slow", 1.0)
    tracker.set_tags(rid, {BEAT_INTERVAL: "60"})
    beats = iter(range(2, 10_000))
    fake = FakeTime(on_sleep=lambda now: tracker.set_tags(rid, {HEARTBEAT: f"{next(beats)}"}) if int(now) % 60 == 0 else None)
    got = claimer(tracker, stale=20, fake=fake).claim("slow", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Declined) and not got.watching


def test_a_killed_run_is_resumable_at_once_but_not_twice(tracker):
    rid = other_run(tracker, "c3", time.time(), status="KILLED")  # stopped by Ctrl-C a moment ago
    c = claimer(tracker)
    first = c.claim("c3", "x", {}, force=False, lock_held=True)
    assert isinstance(first, Claimed) and first.run_id == rid
    # still KILLED until its new owner (alive, beating) reopens it, but claimed: nobody else takes it
    beating(c.owner, True)
    try:
        second = claimer(tracker).claim("c3", "x", {}, force=False, lock_held=False)
        assert isinstance(second, Declined)
    finally:
        beating(c.owner, False)


def test_an_owner_on_this_machine_is_judged_by_its_process_whatever_the_lock(tracker):
    """However its lock folder is spelt: a live owner's run is left alone (even by a process that
    holds "its" lock), a dead owner's is taken over at once, without waiting for the stale limit."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"{machine_id()}|{p.pid}|t{start_ticks(p.pid)}|0123abcd"
        rid = tracker.create_run("x", {"harness.config_hash": "c4", OWNER: owner, HEARTBEAT: "1.000"}).run_id
        fake = FakeTime()
        got = claimer(tracker, fake=fake).claim("c4", "x", {}, force=False, lock_held=True)
        assert isinstance(got, Declined) and fake.waits == []
    finally:
        p.kill()
        p.wait()
    fake = FakeTime()
    got = claimer(tracker, fake=fake).claim("c4", "x", {}, force=False, lock_held=False)
    assert isinstance(got, Claimed) and got.run_id == rid and fake.waits == []


@pytest.mark.parametrize("n", [2, 4])
def test_claimers_racing_for_a_new_configuration_train_it_once(tracker, n):
    """Racing claimers order by the claim time each read once the store had its run (claims.py;
    with start times, stamped before the write, 4 threads' SQLite writes on a loaded CI machine
    made two winners). It waits 2 s as the product does on a shared store: a tag write stalled
    past the wait would make nobody win (never two), and that is not what this checks."""
    barrier, results = threading.Barrier(n), [None] * n

    def go(i):
        c = claimer(Tracker(tracker.uri), settle=2.0)
        beating(c.owner, True)  # each thread stands for a live process: its claims stay alive
        barrier.wait()
        results[i] = c.claim(f"race{n}", "x", {}, force=False, lock_held=False)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Claimed)]
    assert len(winners) == 1, results
    # the losers deleted their runs: one run of the configuration is left, the winner's
    assert [r.run_id for r in tracker.find_runs(f"race{n}")] == [winners[0].run_id]
    # each loser names a claimant of this race: the winner, or a run alive when it looked (before
    # it compared claim times: "being trained by") that lost later to one claimed earlier
    from mlflow.entities import ViewType

    made = {r.info.run_id for r in tracker.client.search_runs([tracker.experiment_id], f"tags.`harness.config_hash` = 'race{n}'",
                                                              run_view_type=ViewType.ALL)}
    assert all(r.run_id in made for r in results if isinstance(r, Declined)), (results, made)


def test_a_run_stamped_first_but_stored_last_does_not_win_a_race_already_settled(tracker):
    """MLflow stamps a run's start time before it writes the run: a claimer whose write was slower
    than the settling wait (a loaded store) had a run started first but seen last, and won by
    start time after the other claimer had won already: two trained it (seen in CI). The claim
    time is read once the store has the run, so the late one loses."""
    a, b = claimer(Tracker(tracker.uri)), claimer(Tracker(tracker.uri))
    beating(a.owner, True)
    beating(b.owner, True)
    stamped, go_on, results = threading.Event(), threading.Event(), {}
    create = b.tracker.client.create_run

    def slow_create(experiment_id, start_time=None, **kw):
        start = int(time.time() * 1000)  # stamped now, as MLflow does before its write
        stamped.set()
        go_on.wait(30)
        return create(experiment_id, start_time=start, **kw)

    b.tracker.client.create_run = slow_create
    late = threading.Thread(target=lambda: results.__setitem__("b", b.claim("late", "x", {}, force=False, lock_held=False)))
    try:
        late.start()
        assert stamped.wait(30)  # b looked (no run yet) and stamped its start
        time.sleep(0.01)
        results["a"] = a.claim("late", "x", {}, force=False, lock_held=False)  # created, settled, alone: a trains it
    finally:
        go_on.set()
        late.join(60)
        beating(a.owner, False)
        beating(b.owner, False)
    assert isinstance(results["a"], Claimed) and isinstance(results.get("b"), Declined), results
    assert [r.run_id for r in tracker.find_runs("late")] == [results["a"].run_id]


def test_a_claimer_that_died_before_its_claim_time_is_no_rival(tracker):
    """A claimer of this machine killed between its run's create and its claim-time tag left a
    RUNNING run started before ours: not waited for, not ordered first (nobody would train)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = f"{machine_id()}|{p.pid}|t1|0123abcd"  # gone: its process no longer exists
    a = claimer(Tracker(tracker.uri))
    create = a.tracker.create_run

    def after_the_dead_one(*args, **kw):  # it created its run just before ours, after we looked
        tracker.create_run("x", {"harness.config_hash": "dead-rival", OWNER: dead, HEARTBEAT: "1.000"})
        return create(*args, **kw)

    a.tracker.create_run = after_the_dead_one
    got = a.claim("dead-rival", "x", {}, force=False, lock_held=False)
    assert isinstance(got, Claimed), got


def test_claimers_racing_to_take_over_one_abandoned_run_train_it_once(tracker):
    import time

    rid = other_run(tracker, "c5", time.time() - 1000, owner=dead_owner_here())
    barrier, results = threading.Barrier(3), [None] * 3

    def go(i):
        c = claimer(Tracker(tracker.uri), settle=0.5)
        beating(c.owner, True)  # each thread stands for a live process: its claims stay alive
        barrier.wait()
        results[i] = c.claim("c5", "x", {}, force=False, lock_held=False)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Claimed) for r in results) == 1, results
    assert all(r.run_id == rid for r in results)


def test_a_finished_run_is_not_claimed_unless_forced(tracker):
    import time

    rid = other_run(tracker, "c6", time.time(), status="FINISHED")
    got = claimer(tracker).claim("c6", "x", {}, force=False, lock_held=True)
    assert isinstance(got, Declined) and got.finished and got.run_id == rid
    forced = claimer(tracker).claim("c6", "x", {}, force=True, lock_held=True)
    assert isinstance(forced, Claimed) and forced.run_id != rid and not forced.resumed


def test_a_driver_claims_a_whole_suite_with_one_settling_wait(tracker):
    import time

    from harness.runs.claims import Request

    waits = []
    c = Claimer(tracker, ClaimPolicy(stale_after_s=120, settle_s=0.2), sleep=lambda s: waits.append(s) or time.sleep(s))
    finished = other_run(tracker, "m-done", time.time(), status="FINISHED")
    abandoned = other_run(tracker, "m-old", time.time() - 1000, owner=dead_owner_here())
    got = c.claim_many([Request(h, h, {}, False, True) for h in ("m-new1", "m-done", "m-old", "m-new2")])
    assert waits == [0.2, 0.2]  # one wait for the four (and one more to recheck the takeover), not one each
    assert [type(g).__name__ for g in got] == ["Claimed", "Declined", "Claimed", "Claimed"]
    assert got[1].run_id == finished and got[2].run_id == abandoned and got[2].resumed


def test_a_heartbeat_notices_its_run_was_taken_over(tracker):
    import time

    from harness.runs.claims import Heartbeat

    rid = tracker.create_run("x", {"harness.config_hash": "h1", OWNER: "me|1|a", HEARTBEAT: f"{time.time():.3f}"}).run_id
    hb = Heartbeat(tracker, 60, owner="me|1|a")
    hb.hold(rid)
    hb.beat(rid)
    assert rid not in hb.lost
    tracker.set_tags(rid, {OWNER: ELSEWHERE})  # another process took it over
    before = tracker.run_tags(rid)[HEARTBEAT]
    hb.beat(rid)
    assert hb.lost == {rid: ELSEWHERE} and rid not in hb.runs
    assert tracker.run_tags(rid)[HEARTBEAT] == before  # it no longer keeps the new owner's claim alive


@pytest.mark.slow
def test_a_trainer_whose_run_was_taken_over_stops_and_leaves_it_alone(store, synthetic_root, monkeypatch):
    """A process that stalled past the stale limit finds, at its next heartbeat, that another
    process resumed its run: it stops at the epoch's end without logging, failing or killing it."""
    import time

    import harness.runs.one_run as one_run
    from tests.test_runner import cli, runs

    monkeypatch.setenv("HARNESS_STALE_AFTER_S", "0.4")  # a beat every 0.1 s
    real = one_run.evaluate

    def stolen(model, *a, **k):
        [run] = runs(store)
        Tracker(store).set_tags(run.info.run_id, {OWNER: ELSEWHERE})
        time.sleep(0.5)
        return real(model, *a, **k)

    monkeypatch.setattr(one_run, "evaluate", stolen)
    r = cli("run", "fastai-simplenet", "--data-dir", synthetic_root, "--tracking-uri", store, "--epochs", "2", "--max-train-images", "200",
            "--no-progress", "--no-system-metrics")
    assert r.exit_code == 0 and "taken over by other-host" in r.output, r.output
    [run] = runs(store)
    assert run.info.status == "RUNNING" and run.data.tags[OWNER] == ELSEWHERE  # the new owner's, untouched
    assert "epoch_time_s" not in run.data.metrics


def test_a_killed_run_under_the_old_hash_of_the_same_configuration_is_resumed(tracker):
    """Killed before an upgrade changed its configuration's hash (`--epochs 5` on a 2-epoch
    recipe, hashed with the flag then): the same command resumes it rather than starting over."""
    from harness.runs.claims import Request

    rid = other_run(tracker, "old-hash", 0.0, status="KILLED")
    [got] = claimer(tracker, settle=0.0).claim_many([Request("new-hash", "x", {}, False, True, aliases=("old-hash",))])
    assert isinstance(got, Claimed) and got.run_id == rid and got.resumed
    assert tracker.find_runs("new-hash") == []


def test_a_process_that_proc_will_not_show_is_left_to_the_heartbeat(monkeypatch):
    """Under /proc mounted hidepid (or another user's process), an unreadable stat is no proof of
    death: liveness says "cannot tell" (None), so the heartbeat decides instead of a takeover."""
    import harness.runs.liveness as liveness

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"{machine_id()}|{p.pid}|t{start_ticks(p.pid)}|0123abcd"
        assert process_alive(owner) is True
        real_read = liveness.Path.read_text

        def hidden(self, *a, **k):
            if str(self) == f"/proc/{p.pid}/stat":
                raise PermissionError(13, "hidepid")
            return real_read(self, *a, **k)

        monkeypatch.setattr(liveness.Path, "read_text", hidden)
        assert start_ticks(p.pid) == UNREADABLE and process_alive(owner) is None
    finally:
        p.kill()
        p.wait()
    assert start_ticks(p.pid) is None  # gone: dead, whatever /proc says


def test_an_owner_in_the_old_wall_clock_format_is_never_called_dead_while_its_pid_lives():
    """Owners written before start ticks carry wall seconds, which a stepped clock moves: a live
    pid is left to the heartbeat (None), a missing one is dead."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stepped = psutil.Process(p.pid).create_time() + 1.0  # as a 1-s clock step would read it
        assert process_alive(f"{machine_id()}|{p.pid}|{stepped:.3f}|0123abcd") is None
    finally:
        p.kill()
        p.wait()
    assert process_alive(f"{machine_id()}|{p.pid}|{stepped:.3f}|0123abcd") is False


def test_a_run_taken_over_while_another_claimer_retires_it_is_trained_once(tracker):
    """Two claimers of an abandoned run whose checkpoint is not here (a server store, two machines):
    one proposes to retire it and train a new run, the other takes it over meanwhile. The retiring
    one backs off (its new run deleted), so the configuration has one trainer, not two."""
    from harness.runs.claims import Request
    from harness.runs.lifecycle import STATE, SUPERSEDED

    old = tracker.create_run("x", {"harness.config_hash": "c9", OWNER: dead_owner_here(), HEARTBEAT: "1.000"}).run_id
    tracker.log_metrics(old, {"epoch_time_s": 1.0}, step=0)  # an epoch logged, no checkpoint here: unresumable
    tracker.terminate(old, "KILLED")
    a, b = claimer(tracker), claimer(tracker)
    proposal = a._propose(Request("c9", "x", {}, force=False, lock_held=True))
    assert not proposal.takeover and proposal.superseded[0][0] == old
    tracker.set_tags(old, {OWNER: b.owner})  # b took the old run over between a's proposal and confirmation
    got = a._confirm(proposal)
    assert isinstance(got, Declined) and b.owner in got.reason
    assert [r.run_id for r in tracker.find_runs("c9")] == [old]  # a's new run is gone
    assert tracker.run_tags(old).get(STATE) != SUPERSEDED
    # and the other order: a retired it first, then b's takeover reads it back superseded and declines
    tracker.set_tags(old, {OWNER: b.owner, STATE: SUPERSEDED})
    from harness.runs.claims import _Proposal

    got = b._confirm(_Proposal(Request("c9", "x", {}, force=False, lock_held=True), old, takeover=True))
    assert isinstance(got, Declined) and "superseded" in got.reason
