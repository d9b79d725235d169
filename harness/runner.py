"""Many runs on this machine (the local executor): for each (experiment, seed), resolve the
job, claim its configuration (claims.py) and train the run (one_run.py) in this process.

The Ray executor (ray_executor.py) uses the same job, claim and one-run code.
"""

from __future__ import annotations

import hashlib

from .checkpoints import lock_root, store_identity
from .cifar_files import Cifar10
from .claims import Claimed, ClaimPolicy, Claimer, ConfigLock, Request
from .environment import resolve_device
from .errors import Interrupted, one_line
from .job import Job, Outcome, RunOptions, capped_phases
from .one_run import train_run
from .spec import Experiment, config_hash
from .tracking import TAG, Tracker

# --------------------------------------------------------------------------- one configuration


def make_job(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print) -> Job:
    device = resolve_device(opts.device)
    chash = config_hash(exp, opts.overrides(), seed, data.fingerprint)
    epochs = capped_phases(exp.train.phases, opts.epochs) if opts.epochs is not None else exp.train.epochs
    return Job(exp, data, tracker, opts, seed, device, chash, exp.id if opts.repeats == 1 else f"{exp.id}-s{seed}", epochs, echo)


def config_lock(job: Job) -> ConfigLock:
    """This machine's lock on the job's configuration in its store (from any folder)."""
    tracker = job.tracker
    key = hashlib.sha256(f"{store_identity(tracker.uri)}|{tracker.experiment_name}|{job.chash}".encode()).hexdigest()[:20]
    return ConfigLock(key, lock_root(tracker.uri))


def claim_request(job: Job, lock_held: bool) -> Request:
    """What claiming the job's configuration in the store asks for (claims.Claimer)."""
    tags = {f"{TAG}experiment_id": job.exp.id, f"{TAG}seed": job.seed}
    return Request(job.chash, job.run_name, tags, job.opts.force, lock_held)


def run_one(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print, claimer: Claimer | None = None) -> Outcome:
    job = make_job(exp, data, tracker, opts, seed, echo)
    claimer = claimer or Claimer(tracker, ClaimPolicy.for_store(tracker.uri))
    lock = config_lock(job)
    if not lock.acquire():
        return Outcome(exp.id, seed, "skipped", reason="being trained by another process on this machine")
    try:
        [claim] = claimer.claim_many([claim_request(job, lock_held=True)])
        if not isinstance(claim, Claimed):
            return Outcome(exp.id, seed, "skipped", claim.run_id, reason=claim.reason)
        return train_run(job, claim.run_id, claim.resumed, claim.recorded, claimer.policy.stale_after_s / 4)
    finally:
        lock.release()


# --------------------------------------------------------------------------- many runs


def run_many(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, echo=print) -> list[Outcome]:
    outcomes = []
    claimer = Claimer(tracker, ClaimPolicy.for_store(tracker.uri))  # one owner: this process
    for exp in experiments:
        for seed in range(opts.seed, opts.seed + opts.repeats):
            try:
                o = run_one(exp, data, tracker, opts, seed, echo, claimer)
            except Interrupted:
                raise
            except KeyboardInterrupt:
                raise Interrupted(f"no run of {exp.id} (seed {seed}) had been created yet; nothing of it was recorded"
                                  + (f" ({len(outcomes)} earlier run(s) are complete)" if outcomes else "")) from None
            except SystemExit:
                raise
            except Exception as e:  # raised before a run existed: report it, go on with the rest
                o = Outcome(exp.id, seed, "failed", reason=one_line(e))
            if o.status == "skipped":
                echo(f"{exp.id} (seed {seed}): skipped, {o.reason}")
            elif o.status == "failed":
                echo(f"{exp.id} (seed {seed}): FAILED, {o.reason}")
            outcomes.append(o)
    return outcomes


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [("experiment", "seed", "status", "test acc", "train s", "run id / reason")]
    for o in outcomes:
        rows.append((o.experiment_id, str(o.seed), o.status, f"{o.test_acc:.2f}%" if o.test_acc is not None else "-",
                     f"{o.train_time_s:.1f}" if o.train_time_s is not None else "-", o.reason if o.status != "finished" else (o.run_id or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
