"""Many runs on this machine (the local executor): for each (experiment, seed), resolve the
job, claim its configuration (runs/claims.py) and train the run (runs/one_run.py) in this process.

The Ray executor (ray.py) uses the same job, claim and one-run code.
"""

from __future__ import annotations

import hashlib

from ..runs import lifecycle
from ..runs.checkpoints import clear_leftover, lock_root, run_state, store_identity
from ..data.cifar_files import Cifar10
from ..runs.claims import Claimed, ClaimPolicy, Claimer, ConfigLock, Heartbeat, Request
from ..training.environment import choose_conv, choose_threads, configure_backend, resolve_device
from ..errors import Interrupted, one_line
from ..runs.group_run import train_group, without_checkpoint
from ..runs.job import Job, Outcome, RunOptions, capped_phases, effective_overrides, legacy_aliases
from ..recipes.network import build_model
from ..runs.one_run import train_run
from ..recipes.spec import Experiment, config_hash
from ..training.recipe_data import train_split_size
from ..training.together import stacking_rates, why_sequential
from ..tracking import TAG, Tracker
from ..tracking.guards import sigint_deferred

# --------------------------------------------------------------------------- one configuration


def make_job(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print) -> Job:
    device = resolve_device(opts.device)
    train_images = train_split_size(exp, data)
    overrides = effective_overrides(opts, exp.train.epochs, train_images)
    chash = config_hash(exp, overrides, seed, data.fingerprint)
    # runs recorded before effective overrides: this command's own old hash, and the old hashes of
    # finished runs of this seed and data set that trained the same (`--epochs 5` then, no flag now)
    recorded = tracker.finished_runs_tagged({f"{TAG}experiment_id": exp.id, f"{TAG}seed": seed, f"{TAG}data_fingerprint": data.fingerprint})
    found = legacy_aliases(recorded, overrides, exp.train.epochs, train_images, lambda o: config_hash(exp, o, seed, data.fingerprint))
    legacy = tuple(dict.fromkeys(h for h in (config_hash(exp, opts.overrides(), seed, data.fingerprint), *found) if h != chash))
    epochs = capped_phases(exp.train.phases, opts.epochs) if opts.epochs is not None else exp.train.epochs
    return Job(exp, data, tracker, opts, seed, device, chash, exp.id if opts.repeats == 1 and not opts.loop_tags else f"{exp.id}-s{seed}", epochs, echo,
               overrides=overrides, train_images=train_images, legacy_hashes=legacy)


def config_lock(job: Job) -> ConfigLock:
    """This machine's lock on the job's configuration in its store (from any folder)."""
    tracker = job.tracker
    key = hashlib.sha256(f"{store_identity(tracker.uri)}|{tracker.experiment_name}|{job.chash}".encode()).hexdigest()[:20]
    return ConfigLock(key, lock_root(tracker.uri))


def claim_request(job: Job, lock_held: bool) -> Request:
    """What claiming the job's configuration in the store asks for (claims.Claimer)."""
    tags = {f"{TAG}experiment_id": job.exp.id, f"{TAG}seed": job.seed}
    return Request(job.chash, job.run_name, tags, job.opts.force, lock_held, aliases=job.legacy_hashes)


def claim_jobs(jobs: list[Job], claimer: Claimer) -> tuple[list[ConfigLock], dict[int, Claimed], dict[int, Outcome]]:
    """Lock each job's configuration on this machine, then claim the locked ones in the store
    with one settling wait: (the locks, the claims by job index, the skipped by job index). A
    job not claimed has its lock released at once; the caller releases the others."""
    locks = [config_lock(job) for job in jobs]
    held = [i for i, lock in enumerate(locks) if lock.acquire()]
    try:
        got = dict(zip(held, claimer.claim_many([claim_request(jobs[i], lock_held=True) for i in held])))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    claimed: dict[int, Claimed] = {}
    skipped: dict[int, Outcome] = {}
    for i, job in enumerate(jobs):
        c = got.get(i)
        if isinstance(c, Claimed):
            claimed[i] = c
            continue
        locks[i].release()
        skipped[i] = Outcome(job.exp.id, job.seed, "skipped", c.run_id if c else None,
                             reason=c.reason if c else "being trained by another process on this machine")
    return locks, claimed, skipped


def finished_already(todo: list[tuple[Experiment, int]], data: Cifar10, tracker: Tracker, opts: RunOptions) -> dict[int, Outcome]:
    """The skipped outcomes, by index in `todo`, of the runs whose configuration the store holds
    a finished run of (what a claim finds first: claims.Claimer._propose, a leftover checkpoint of
    it removed as there), so that a rerun of finished work starts no worker process to learn it.
    A run this cannot decide (its job raises) is left to its worker, which says why."""
    done: dict[int, Outcome] = {}
    for i, (exp, seed) in enumerate([] if opts.force else todo):
        try:
            job = make_job(exp, data, tracker, opts, seed)
            runs = [r for h in (job.chash, *job.legacy_hashes) for r in tracker.find_runs(h) if r.status == "FINISHED"]
        except Exception:  # noqa: BLE001 - the worker meets it again and reports it
            continue
        for r in runs:
            clear_leftover(tracker, r)
        if runs:
            done[i] = Outcome(exp.id, seed, "skipped", runs[0].run_id, reason="identical finished run exists (use --force to train again)")
    return done


def run_one(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print, claimer: Claimer | None = None,
            on_claim=None) -> Outcome:
    """Claim and train one (experiment, seed); `on_claim(run_id, owner)`: told which run this
    process owns before it trains it."""
    job = make_job(exp, data, tracker, opts, seed, echo)
    claimer = claimer or Claimer(tracker, ClaimPolicy.for_store(tracker.uri))
    try:
        [lock], claimed, skipped = claim_jobs([job], claimer)
    except Interrupted as e:
        raise Interrupted(f"run {job.run_name} (seed {seed}): {e}") from None
    if skipped:
        return skipped[0]
    try:
        claim = claimed[0]
        try:
            if claim.note:
                echo(f"{job.run_name}: {claim.note}")
            if on_claim is not None:
                on_claim(claim.run_id, claimer.owner)
        except KeyboardInterrupt as e:  # claimed, not yet training: the claim is given up, and said so
            raise Interrupted(f"run {job.run_name} (seed {seed}) was interrupted before it trained; "
                              + _release(tracker, claimer.owner, [claim], e)) from None
        return train_run(job, claim.run_id, claim.resumed, claim.recorded, claimer.policy.beat_s, claimer.owner)
    finally:
        lock.release()


def run_seeds_together(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, echo, claimer: Claimer) -> list[Outcome]:
    """A recipe's repeats as one stacked model (group_run.py), each still its own MLflow run.
    Runs already finished or claimed elsewhere are skipped; a group killed part-way resumes as a
    group when its checkpoints agree on the epoch, run by run otherwise (the same result)."""
    jobs = [make_job(exp, data, tracker, opts, seed, echo) for seed in range(opts.seed, opts.seed + opts.repeats)]
    locks, claims, outcomes = claim_jobs(jobs, claimer)
    try:
        mine = sorted(claims)
        beat = claimer.policy.beat_s
        try:
            cks = [run_state(tracker, claims[i].run_id).load(jobs[i].device) if claims[i].resumed else None for i in mine]
            # measured only now, for the runs there are to train (a rerun that skips them pays nothing)
            why = "nothing to stack" if len(mine) < 2 else _slower_stacked(exp, opts, len(mine))
        except KeyboardInterrupt as e:  # the claimed runs exist: say so, and leave nothing RUNNING
            raise Interrupted(f"interrupted while measuring whether to stack {exp.id}'s seeds, before any trained; "
                              + _release(tracker, claimer.owner, [claims[i] for i in mine], e)) from None
        gone = without_checkpoint([jobs[i] for i in mine], [claims[i].run_id for i in mine], [claims[i].resumed for i in mine], cks, claimer.owner)
        outcomes.update((mine[k], o) for k, o in gone.items())
        mine, cks = [i for k, i in enumerate(mine) if k not in gone], [ck for k, ck in enumerate(cks) if k not in gone]
        if why is None and len(mine) < 2:
            why = "nothing to stack"
        if why is None and len({ck["epoch"] if ck else None for ck in cks}) > 1:
            why = "their checkpoints are at different epochs"
        if mine:
            echo(f"{exp.id}: {len(mine)} seed(s) " + ("trained together, one stacked model" if why is None else f"one by one ({why})"))
        if why is None:
            group = train_group([jobs[i] for i in mine], [claims[i].run_id for i in mine], [claims[i].recorded for i in mine], cks, beat,
                                claimer.owner, [claims[i].resumed for i in mine])
            outcomes.update(zip(mine, group))
        else:  # one by one, the waiting claims kept alive meanwhile (a silent one would look abandoned)
            with Heartbeat(tracker, beat, claimer.owner) as waiting:
                for i in mine:
                    waiting.hold(claims[i].run_id)
                for k, i in enumerate(mine):
                    rid = claims[i].run_id
                    if rid in waiting.lost:
                        outcomes[i] = Outcome(exp.id, jobs[i].seed, "skipped", rid, reason=f"taken over by {waiting.lost[rid]} while waiting")
                        continue
                    waiting.drop(rid)
                    try:
                        outcomes[i] = train_run(jobs[i], rid, claims[i].resumed, claims[i].recorded, beat, claimer.owner)
                    except KeyboardInterrupt as e:  # the seeds still waiting are released too, not left RUNNING
                        rest = [claims[j] for j in mine[k + 1:] if claims[j].run_id not in waiting.lost]
                        raise Interrupted("; ".join([str(e) or f"run of {exp.id} (seed {jobs[i].seed}) interrupted"]
                                                    + ([f"its later seeds: {_release(tracker, claimer.owner, rest, e)}"] if rest else []))) from None
        return [outcomes[i] for i in range(len(jobs))]
    finally:
        for lock in locks:
            lock.release()


def _release(tracker: Tracker, owner: str, claims: list[Claimed], e: BaseException) -> str:
    """Give up claimed runs that did not train: new ones are deleted, resumed ones left
    resumable (lifecycle.settle). What became of them, in words."""
    deleted = kept = 0
    with sigint_deferred():  # a second Ctrl-C waits for these few writes: nothing claimed stays RUNNING
        for c in claims:
            try:
                ended = lifecycle.settle(tracker, c.run_id, owner, c.resumed or c.recorded, e, "interrupted (Ctrl-C) before it trained; run again")
            except lifecycle.TakenOver:
                continue
            deleted += ended is None
            kept += ended is not None
    return (f"{deleted} claimed new run(s) were deleted and {kept} earlier one(s) left resumable; none of them trained"
            if kept else f"{deleted} claimed run(s) were deleted; none of them trained")


# stacking must beat one network alone by this much in the probe to be used (the probe is short)
MIN_SPEEDUP = 1.1
PROBE_STEPS = 30


def stackable(exp: Experiment, opts: RunOptions) -> bool:
    """Whether this recipe's repeats may train as one stacked model (together.why_sequential)."""
    if opts.repeats < 2 or opts.together == "never" or opts.precision == "fp16":
        return False  # fp16's loss scaler skips steps per network: one shared by a stack would not
    return why_sequential(exp, build_model(exp), resolve_device(opts.device)) is None


def _slower_stacked(exp: Experiment, opts: RunOptions, n: int) -> str | None:
    """With --together auto, why stacking `n` networks is not worth it here (measured side by
    side for a moment at the run's threads; both ways give the same runs), else None."""
    if opts.together == "always":
        return None
    device = resolve_device(opts.device)
    model = build_model(exp)
    threads = min(choose_threads(model, exp.train.batch_size, device, opts.threads), opts.max_threads or 1 << 30)
    configure_backend(device, threads, choose_conv(model, exp.train.batch_size, device))
    alone, stacked = stacking_rates(exp, n, PROBE_STEPS, device)
    return f"stacking {n} measured {stacked / alone:.2f}x one network alone here" if stacked < MIN_SPEEDUP * alone else None


# --------------------------------------------------------------------------- many runs


def run_many(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, echo=print) -> list[Outcome]:
    outcomes: list[Outcome] = []
    claimer = Claimer(tracker, ClaimPolicy.for_store(tracker.uri))  # one owner: this process
    total, current = len(experiments) * opts.repeats, 0
    try:
        for exp in experiments:
            if stackable(exp, opts):
                current = opts.repeats
                try:
                    group = run_seeds_together(exp, data, tracker, opts, echo, claimer)
                except Interrupted:
                    raise
                except KeyboardInterrupt:
                    raise Interrupted(f"no run of {exp.id} had been created yet; nothing of it was recorded") from None
                except Exception as e:  # raised before the runs existed (or while claiming them)
                    group = [_unclaimed(exp.id, s, e) for s in range(opts.seed, opts.seed + opts.repeats)]
                for o in group:
                    _say(o, echo)
                outcomes.extend(group)
                continue
            for seed in range(opts.seed, opts.seed + opts.repeats):
                current = 1
                try:
                    o = run_one(exp, data, tracker, opts, seed, echo, claimer)
                except Interrupted:
                    raise
                except KeyboardInterrupt:
                    raise Interrupted(f"no run of {exp.id} (seed {seed}) had been created yet; nothing of it was recorded") from None
                except SystemExit:
                    raise
                except Exception as e:  # raised before a run existed (or while claiming it): report it, go on with the rest
                    o = _unclaimed(exp.id, seed, e)
                _say(o, echo)
                outcomes.append(o)
    except Interrupted as e:  # what was stopped (the message), what is done and what never started
        raise Interrupted("; ".join([str(e)] + ([f"{len(outcomes)} earlier run(s) had ended"] if outcomes else [])
                                    + ([f"{total - len(outcomes) - current} later run(s) were never started"]
                                       if total > len(outcomes) + current else []))) from None
    return outcomes


def _unclaimed(exp_id: str, seed: int, e: Exception) -> Outcome:
    """A fault before a run trained: failed where a rerun fails the same way (a bad spec), else
    resumable (the store unreachable while claiming: a claim it left behind is taken over at once)."""
    if lifecycle.permanent(e):
        return Outcome(exp_id, seed, "failed", reason=one_line(e))
    return Outcome(exp_id, seed, "resumable", reason=f"{one_line(e)}; run the same command again")


def outcome_line(o: Outcome) -> str:
    """One line per outcome, the same from every executor."""
    if o.status == "finished":
        return f"{o.experiment_id} (seed {o.seed}): finished, test accuracy {o.test_acc:.2f}%, train {o.train_time_s:.1f}s, run {o.run_id}"
    return f"{o.experiment_id} (seed {o.seed}): {'skipped' if o.status == 'skipped' else o.status.upper()}, {o.reason}"


def _say(o: Outcome, echo) -> None:
    """A run that trained here has said its own line (one_run.finish); the others are said now."""
    if o.status != "finished":
        echo(outcome_line(o))


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [("experiment", "seed", "status", "test acc", "train s", "run id / reason")]
    for o in outcomes:
        rows.append((o.experiment_id, str(o.seed), o.status, f"{o.test_acc:.2f}%" if o.test_acc is not None else "-",
                     f"{o.train_time_s:.1f}" if o.train_time_s is not None else "-", o.reason if o.status != "finished" else (o.run_id or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
