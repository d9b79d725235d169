"""Who trains what: an (experiment, seed, configuration) is trained once among every process
that shares a tracking store, on this machine or any other.

Two layers:
- ConfigLock (config_lock.py), an flock per configuration in the store's state root: a quick
  way for processes of one machine that share a state root to skip each other's configurations.
- The store itself, for every process: the MLflow run is the claim. Its owner tag names the
  process that trains it and a heartbeat tag, refreshed every `beat_s` by a background thread
  (heartbeat.py), says it is alive. Whether its owner is alive is liveness.py's: on this machine
  its process decides, at once; elsewhere the heartbeat, watched on this process's monotonic clock until it
  changes (alive: declined) or stays unchanged for the stale limit (dead: taken over and resumed
  from its checkpoint). A run left resumable (KILLED) is free at once.

Races settle deterministically. Two processes that find no run both create one, tag it with
the time their clock read once the store had it (CLAIMED_AT), wait `settle_s` and compare: the
run claimed first (that time, then run id) wins, every other creator deletes its own and does
not train. A run claimed before mine was in the store before my tag, so every reader that
compares sees it (its tag awaited); MLflow's start time, read before the write, was not enough:
a write slower than the wait made two winners. Two processes that
take over one abandoned run both write their owner tag, wait, and read it back: the last
write is the one every reader sees, so exactly one trains. Claim times across machines assume
clocks agree to better than `settle_s` (NTP does).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from ..errors import Interrupted
from ..tracking import TAG, RunRecord, Tracker, faults
from ..tracking.guards import sigint_deferred
from . import lifecycle
from .checkpoints import clear_leftover, expected_at, run_state
from .config_lock import ConfigLock  # noqa: F401  (moved; its callers still import it from here)
from .heartbeat import DELETED, Heartbeat  # noqa: F401  (moved; likewise)
from .lifecycle import BEAT_INTERVAL, HEARTBEAT, OWNER, RECORDED, RESUMABLE, STATE, SUPERSEDED, TakenOver, claimed_tags, supersede  # noqa: F401
from .liveness import ALIVE, DEAD, WATCHING, Observer, attempt_owner, beating, machine_id, new_owner, of_claim, owner_machine, process_alive  # noqa: F401


# --------------------------------------------------------------------------- the store's claim

CLAIMED_AT = f"{TAG}claimed_at"  # a new run's claimer's clock once the store had the run


def claim_order(r: RunRecord) -> tuple[float, str]:
    """Which of racing new runs came first: CLAIMED_AT, or the start time of a run without one (an
    older harness's, or a claimer stopped between its two writes; earlier than its claim time
    would be). An older harness's claimer still orders by start time alone: a store shared with
    one keeps its risk (two trainers when its write is slower than the wait)."""
    try:
        at = float(r.tags.get(CLAIMED_AT, "nan"))
    except ValueError:
        at = math.nan
    return (at if math.isfinite(at) else r.start_time / 1000, r.run_id)


def take_attempt(tracker: Tracker, run_id: str, claim_owner: str, settle_s: float = 0.0, sleep=time.sleep) -> tuple[str | None, str]:
    """One attempt at a run that `claim_owner` claimed (a Ray task of its driver) takes the run
    under an owner of its own (liveness.attempt_owner): (that owner, or None when the run is
    another claimer's or another attempt's now; the owner it found). As a takeover in the store
    (Claimer._confirm): write, wait `settle_s`, read back; of two attempts taking the run at
    once, only the last writer, the one every reader sees, trains."""
    found = tracker.run_tags(run_id).get(OWNER, "")
    if not of_claim(found, claim_owner):
        return None, found
    mine = attempt_owner(claim_owner)
    tracker.set_tags(run_id, {OWNER: mine})
    sleep(settle_s)
    now = tracker.run_tags(run_id).get(OWNER, "")
    return (mine, found) if now == mine else (None, now)


@dataclass(frozen=True)
class ClaimPolicy:
    stale_after_s: float = 120.0  # a heartbeat seen unchanged this long: the run's process is gone
    settle_s: float = 2.0  # > a store write's latency (and clock skew between machines)

    @property
    def beat_s(self) -> float:
        """How often a claim's heartbeat is refreshed (an observer waits about this long to see a live run beat)."""
        return min(self.stale_after_s / 4, 10.0)

    @classmethod
    def for_store(cls, uri: str) -> "ClaimPolicy":
        # one SQLite file is one machine's: its flock already orders the claimers
        settle = 0.0 if uri.startswith("sqlite:") else 2.0
        return cls(float(os.environ.get("HARNESS_STALE_AFTER_S", cls.stale_after_s)), float(os.environ.get("HARNESS_CLAIM_SETTLE_S", settle)))


@dataclass
class Claimed:
    run_id: str
    resumed: bool  # an earlier attempt's run, continued from its checkpoint
    recorded: bool  # it already has its params and config
    note: str = ""  # what the claim did to earlier runs, to say (a run superseded for want of a checkpoint)


@dataclass
class Declined:
    reason: str
    run_id: str | None = None
    finished: bool = False
    watching: bool = False  # its owner's liveness is not known yet: look again


class Claimer:
    """Claims configurations in one store on behalf of one owner (a process, or a Ray driver
    for all its tasks). `clock` writes heartbeat values (never compared) and claim times,
    `monotonic` and `sleep` time the watching of other machines' heartbeats."""

    def __init__(self, tracker: Tracker, policy: ClaimPolicy, owner: str | None = None, clock=time.time, sleep=time.sleep,
                 monotonic=time.monotonic):
        self.tracker, self.policy = tracker, policy
        self.owner = owner or new_owner()
        self.clock, self.sleep, self.monotonic = clock, sleep, monotonic
        self.observer = Observer(policy.stale_after_s, monotonic)

    def liveness(self, run: RunRecord) -> str:
        """ALIVE, DEAD, or WATCHING (another machine's owner whose heartbeat we have not yet
        seen change or stay still for the stale limit)."""
        if run.status not in ("RUNNING", "KILLED"):
            return DEAD
        if run.status == "KILLED" and run.tags.get(STATE, RESUMABLE) in (RESUMABLE, SUPERSEDED):
            return DEAD  # left resumable (or retired), and nobody has claimed it since
        owner = run.tags.get(OWNER, "")
        if owner == self.owner:
            return DEAD  # our own claim: ours to take
        here = process_alive(owner)
        if here is not None:
            return ALIVE if here else DEAD
        return self.observer.liveness(run)

    def alive(self, run: RunRecord, lock_held: bool = False) -> bool:
        """Whether `run` may be being trained (or taken over) by a live process right now."""
        return self.liveness(run) != DEAD

    def claim(self, chash: str, run_name: str, tags: dict, force: bool, lock_held: bool) -> Claimed | Declined:
        return self.claim_many([Request(chash, run_name, tags, force, lock_held)])[0]

    def claim_many(self, requests: list[Request]) -> list[Claimed | Declined]:
        """Claim several configurations with one settling wait between the writes and the checks
        (a Ray driver claims a whole suite in about `settle_s`, not `settle_s` per run). Runs
        owned on other machines are watched until their owner's liveness is known. While it
        claims, this owner counts as alive in this process (its heartbeat starts once the claims
        are made)."""
        beating(self.owner, True)
        proposals: list = []
        results: list = []
        try:
            for r in requests:
                proposals.append(self._propose(r))
                self._stamp(proposals[-1])
            while True:
                watching = [i for i, p in enumerate(proposals) if isinstance(p, Declined) and p.watching]
                if not watching:
                    break
                self.sleep(min(self._poll_s(proposals[i].run_id, requests[i].chash) for i in watching))
                for i in watching:
                    proposals[i] = self._propose(requests[i])
                    self._stamp(proposals[i])
            mine = [p.run_id for p in proposals if isinstance(p, _Proposal)]
            if mine:
                faults.point("claim", self.tracker, mine[0])
                self.sleep(self.policy.settle_s)
            for p in proposals:
                results.append(self._confirm(p) if isinstance(p, _Proposal) else p)
            results = self._recheck_takeovers(proposals, results)
            won = [r.run_id for r in results if isinstance(r, Claimed)]
            if won:
                faults.point("settle", self.tracker, won[0])
            return results
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM mid-claim: nothing claimed stays RUNNING
            raise Interrupted(f"interrupted while claiming; {self._release(proposals, results)}") from None
        finally:
            beating(self.owner, False)

    def _release(self, proposals: list, results: list) -> str:
        """Undo the claims of an interrupted claim_many (Ctrl-C held meanwhile): runs this owner
        created are deleted, runs it was taking over are left resumable again. What became of them."""
        made, taken = [], []
        with sigint_deferred():
            for k, p in enumerate(proposals):
                if not isinstance(p, _Proposal) or (k < len(results) and isinstance(results[k], Declined)):
                    continue  # not ours, or already given up (a creator that lost deletes its own)
                try:
                    if p.takeover:
                        if lifecycle.stop(self.tracker, p.run_id, self.owner, "interrupted while claimed; run again to resume"):
                            taken.append(p.run_id)
                    elif self.tracker.run_tags(p.run_id).get(OWNER) == self.owner:  # still ours (not taken over meanwhile)
                        self.tracker.delete_run(p.run_id)
                        made.append(p.run_id)
                except Exception:  # noqa: BLE001 - left RUNNING under a dead owner: the next claim takes it at once
                    pass
        said = []
        if made or not taken:
            said.append("no run had been created for it yet; nothing of it was recorded" if not made else
                        f"the run(s) it had just created ({', '.join(made)}) were deleted; nothing of them was recorded")
        if taken:
            said.append(f"run(s) {', '.join(taken)} it was resuming are left resumable (run the same command again)")
        return "; ".join(said)

    def _recheck_takeovers(self, proposals: list, results: list) -> list:
        """A taker whose owner write was slowed past the settling wait (a loaded store) lands after
        another read its own back: one more wait and read, and only the last writer keeps it."""
        won = [i for i, (p, r) in enumerate(zip(proposals, results)) if isinstance(p, _Proposal) and p.takeover and isinstance(r, Claimed)]
        if won:
            self.sleep(self.policy.settle_s)
            for i in won:
                now = self.tracker.run_tags(results[i].run_id).get(OWNER)
                if now != self.owner:
                    results[i] = Declined(f"taken over by {now}", results[i].run_id)
        return results

    def _stamp(self, p) -> None:
        """A new run's claim time, read now that the store has it; written once the proposal is
        registered, so a Ctrl-C during the write still finds the run to delete (_release)."""
        if isinstance(p, _Proposal) and not p.takeover:
            self.tracker.set_tags(p.run_id, {CLAIMED_AT: f"{self.clock():.6f}"})

    def _rivals(self, p: _Proposal) -> list[RunRecord]:
        """Our new run and those created since we looked, once each has its claim time (a rival
        between its create and its tag is waited for, up to max(settle_s, 1 s); after that it
        orders by its start time, which may make it first: then nobody trains this time, never
        two). A rival whose owner died on this machine before its tag is no rival."""
        deadline = self.monotonic() + max(self.policy.settle_s, 1.0)
        while True:
            rivals = [r for r in self.tracker.find_runs(p.req.chash) if r.run_id == p.run_id or (r.run_id not in p.known and r.status == "RUNNING")]
            rivals = [r for r in rivals if r.run_id == p.run_id or CLAIMED_AT in r.tags or process_alive(r.tags.get(OWNER, "")) is not False]
            if all(CLAIMED_AT in r.tags for r in rivals) or self.monotonic() >= deadline:
                return rivals
            self.sleep(0.05)

    def _poll_s(self, run_id: str, chash: str) -> float:
        run = next((r for r in self.tracker.find_runs(chash) if r.run_id == run_id), None)
        return self.observer.poll_s(run) if run is not None else 0.05

    def _propose(self, req: Request) -> _Proposal | Declined:
        # runs of the same configuration recorded under an older hash count too: a finished one as
        # done, a killed one resumed (rather than trained again from scratch)
        runs = self.tracker.find_runs(req.chash) + [r for a in req.aliases for r in self.tracker.find_runs(a)]
        done = [r for r in runs if r.status == "FINISHED"]
        for r in done:  # a kill between its finish and its checkpoint's removal: nothing outlives a finished run
            clear_leftover(self.tracker, r)
        if done and not req.force:
            return Declined("identical finished run exists (use --force to train again)", done[0].run_id, finished=True)
        state = {r.run_id: self.liveness(r) for r in runs}
        # several live ones: claimers racing for a new configuration, the first created wins (as in _confirm)
        live = sorted((r for r in runs if state[r.run_id] == ALIVE), key=claim_order)
        if live:
            return Declined(f"being trained by {live[0].tags.get(OWNER, 'another process')}", live[0].run_id)
        unsure = [r for r in runs if state[r.run_id] == WATCHING]
        if unsure:
            return Declined(f"being trained by {unsure[0].tags.get(OWNER, 'another process')} (watching its heartbeat)", unsure[0].run_id,
                            watching=True)
        abandoned = [r for r in runs if r.status in ("RUNNING", "KILLED") and r.tags.get(STATE) != SUPERSEDED]
        mark = claimed_tags(self.owner, f"{self.clock():.3f}", self.policy.beat_s)
        why = {}
        if abandoned and not req.force:
            run = max(abandoned, key=lambda r: r.start_time)
            why = {run.run_id: self._unresumable(run)}
            if not why[run.run_id]:
                self.tracker.set_tags(run.run_id, mark)
                return _Proposal(req, run.run_id, takeover=True)
        mine = self.tracker.create_run(req.run_name, {**req.tags, f"{TAG}config_hash": req.chash, **mark})
        return _Proposal(req, mine.run_id, takeover=False, superseded=[(r.run_id, why.get(r.run_id), r.tags.get(OWNER)) for r in abandoned],
                         known={r.run_id for r in runs})

    def _unresumable(self, run: RunRecord) -> str | None:
        """Why an abandoned run cannot be resumed (None: it can): epochs logged and no checkpoint
        to continue them from (another state folder, or deleted). Training it again from epoch 1
        would log its epochs twice, so a new run supersedes it."""
        state = run_state(self.tracker, run.run_id, tags=run.tags)
        if state.exists():
            return None
        logged = self.tracker.logged_steps(run.run_id, "epoch_time_s")
        if not logged:
            return None
        return (f"superseded: {len(set(logged))} epoch(s) logged but no checkpoint at {expected_at(self.tracker, run.run_id, state, run.tags)} "
                "to resume from (another machine's HARNESS_STATE_DIR, or deleted); a new run trains the configuration")

    def _confirm(self, p: _Proposal) -> Claimed | Declined:
        if p.takeover:  # every taker wrote its name; the last write is what all of them read back
            tags = self.tracker.run_tags(p.run_id)
            if tags.get(OWNER) != self.owner:
                return Declined(f"taken over by {tags.get(OWNER)}", p.run_id)
            if tags.get(STATE) == SUPERSEDED:  # a claimer that could not resume it retired it meanwhile
                return Declined("superseded by another claimer's new run while this took it over", p.run_id)
            return Claimed(p.run_id, resumed=True, recorded=RECORDED in tags)
        # every creator made a run; the one created first trains, the others delete theirs (the
        # runs there were before were all finished or dead: only those created since are rivals)
        rivals = self._rivals(p)
        if p.run_id not in {r.run_id for r in rivals}:  # our new run was deleted in the store meanwhile
            return Declined(f"the run it had just created ({p.run_id}) was deleted in the store while it claimed; "
                            "run the same command again to train the configuration", p.run_id)
        first = min(rivals, key=claim_order)
        if first.run_id != p.run_id:
            self.tracker.delete_run(p.run_id)
            return Declined(f"claimed first by {first.tags.get(OWNER, 'another process')}", first.run_id)
        if not p.req.force:  # a run this would retire that another claimer took over meanwhile: that one trains it
            for rid, _, owner_then in p.superseded:
                now = self.tracker.run_tags(rid).get(OWNER)
                if now != owner_then:
                    self.tracker.delete_run(p.run_id)
                    return Declined(f"run {rid} was taken over by {now} while this claimed", rid)
        notes = []
        for rid, why, _ in p.superseded:
            supersede(self.tracker, rid, *([why] if why else []))
            if why:
                notes.append(f"run {rid} {why}")
        return Claimed(p.run_id, resumed=False, recorded=False, note="; ".join(notes))


@dataclass
class Request:
    chash: str
    run_name: str
    tags: dict
    force: bool
    lock_held: bool  # this process holds the configuration's local lock
    aliases: tuple[str, ...] = ()  # older hashes of the same configuration (finished runs there count as done)


@dataclass
class _Proposal:
    req: Request
    run_id: str
    takeover: bool
    superseded: list = field(default_factory=list)
    known: set = field(default_factory=set)  # the runs of the configuration when it was proposed
