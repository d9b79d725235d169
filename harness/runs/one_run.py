"""One run's training, once it is claimed: record it (or pick up where a killed attempt stopped),
train epoch by epoch with a checkpoint after each, then finish; a fault ends it failed or
resumable as lifecycle.py decides.

The same code trains a run for the local executor and inside a Ray task. Who trains what is
claims.py, where the state lives checkpoints.py, the loop training/loop.py, the final logging finish.py,
the run's status lifecycle.py, MLflow calls tracking/. An epoch's store writes (metrics, the
shared checkpoint's upload) go through an Outbox, off the training thread and in order; every
store call rides out an outage of up to the Tracker's window.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import lifecycle
from .checkpoints import HOME_TAG, run_state
from .claims import DELETED, Heartbeat
from .lifecycle import FAILED, RESUMABLE, RunDeleted, TakenOver
from ..training.environment import choose_conv, choose_threads, configure_backend, flushing_denormals
from ..errors import DivergedError, Interrupted, one_line
from .finish import finish
from .job import Job, Outcome, Progress
from ..models import apply_init, count_params
from ..recipes.network import build_model
from .progress import epoch_line, progress_bar
from ..training.recipe_data import Prepared, prepare_data
from .run_record import datasets, run_record
from ..recipes.spec import Experiment
from ..tracking import faults
from ..tracking.guards import raise_dropped_stop
from ..tracking.outbox import Outbox
from ..training.loop import build_optimizer, clamp_adam_steps, evaluate, grad_scaler, loss_function, lr_at, phase_of, set_lr, starts_phase, train_one_epoch


def train_run(job: Job, run_id: str, resumed: bool, recorded: bool, beat_s: float, owner: str | None = None) -> Outcome:
    """Train the claimed run `run_id` to its end. `resumed`: an earlier attempt's run, continued
    from its checkpoint; `recorded`: it already has its params and config; `owner`: the claim's
    owner, checked by the heartbeat and before every status write. A run that fails before it
    was recorded (nothing trained, nothing to see) is deleted rather than left behind."""
    tracker = job.tracker
    bar = None
    started = recorded or resumed
    lifecycle.fence(tracker, run_id, owner, beat_s)  # after an outage: the store asked whose the run is before a write
    try:
        with Heartbeat(tracker, beat_s, owner) as heartbeat, Outbox() as outbox, flushing_denormals():
            heartbeat.hold(run_id)
            prep = prepare_data(job.exp, job.data, job.seed, job.opts.max_train_images, job.device)
            model, optimizer, loss_fn, n_params = build(job)
            if not recorded:
                record(job, run_id, prep, n_params)
                recorded = started = True
            state = run_state(tracker, run_id, outbox)  # where it is (a home recorded by an earlier attempt), or this process's
            lifecycle.start_training(tracker, run_id, owner, resumed, {HOME_TAG: state.home()})
            with tracker.system_metrics(run_id, job.opts.system_metrics, job.opts.system_metrics_interval_s, resume=resumed):
                pr = _restore(job, run_id, state, model, optimizer, owner) if resumed else Progress()
                bar = progress_bar(job, len(prep.train) * (job.epochs - pr.start_epoch))
                _train_epochs(job, run_id, prep, model, optimizer, loss_fn, state, pr, bar, heartbeat, outbox, owner)
                if bar is not None:
                    bar.close()
                    bar = None
                return finish(job, run_id, prep, model, loss_fn, state, pr, n_params, outbox, owner)
    except Interrupted:  # already settled: the run finished before the interrupt took effect
        raise
    except TakenOver as e:  # the run and its checkpoint are the new owner's now: touch neither
        return Outcome(job.exp.id, job.seed, "skipped", run_id, reason=str(e))
    except KeyboardInterrupt as e:
        if not started:
            tracker.delete_run(run_id)
            raise Interrupted(f"run {job.run_name} was interrupted before it started; nothing of it was recorded") from None
        try:
            if lifecycle.settle(tracker, run_id, owner, started, e, "interrupted (Ctrl-C); run again to resume") == lifecycle.FINISHED:
                raise Interrupted(f"run {job.run_name} ({run_id}) had finished and is recorded FINISHED") from None
        except TakenOver:
            raise Interrupted(f"run {job.run_name} ({run_id}) was taken over by another process; it trains there") from None
        except Exception as w:  # left RUNNING, its heartbeat stops: it is resumed next time all the same
            raise Interrupted(f"run {job.run_name} ({run_id}) could not be marked KILLED ({type(w).__name__}); run the same command again to resume it") from None
        raise Interrupted(f"run {job.run_name} ({run_id}) is marked KILLED; run the same command again to resume it") from None
    except Exception as e:  # any other fault ends this run (failed or resumable), not the whole run-all
        return ended_outcome(job, run_id, owner, started, e)
    finally:
        lifecycle.unfence(tracker, run_id)
        if bar is not None:
            bar.close()


def ended_outcome(job: Job, run_id: str, owner: str | None, started: bool, e: Exception) -> Outcome:
    """The outcome of a run that a fault ended: FAILED where a rerun would fail the same way,
    else resumable (lifecycle.ending); a store that cannot even take that write leaves the run
    RUNNING with a silent heartbeat, which claims take over all the same."""
    reason = f"diverged: {e}" if isinstance(e, DivergedError) else one_line(e)
    deleted = _deleted(job.tracker, run_id)  # asked about this run: `e` may be another run's of a group
    if deleted is None:  # the store cannot say: `e` decides only if it names this run
        deleted = isinstance(e, RunDeleted) and e.run_id == run_id
    if deleted:
        run_state(job.tracker, run_id).clear()
        why = str(e) if isinstance(e, RunDeleted) and e.run_id in (None, run_id) else "deleted in the store while it trained"
        return Outcome(job.exp.id, job.seed, "skipped", run_id,
                       reason=f"run {run_id} was {why}; its checkpoint was removed and nothing more written to it: "
                              "the same command trains a new run")
    try:
        ended = lifecycle.settle(job.tracker, run_id, owner, started, e, reason)
    except TakenOver as t:
        return Outcome(job.exp.id, job.seed, "skipped", run_id, reason=str(t))
    except Exception as w:
        ended = RESUMABLE if started else None
        reason = f"{reason} (its end could not be recorded either: {type(w).__name__})"
    if ended is None:  # nothing of it was recorded (deleted, or left to a rerun when the store is gone)
        if lifecycle.permanent(e):
            return Outcome(job.exp.id, job.seed, "failed", reason=reason)
        return Outcome(job.exp.id, job.seed, "resumable", reason=f"{reason}; run the same command again")
    if ended == FAILED:  # failed for good: no claim resumes it, so nothing of it is kept to resume from
        run_state(job.tracker, run_id).clear()
        return Outcome(job.exp.id, job.seed, "failed", run_id, reason=reason)
    return Outcome(job.exp.id, job.seed, "resumable", run_id, reason=f"{reason}; run the same command again to resume it")


def _deleted(tracker, run_id: str) -> bool | None:
    """Whether the run was deleted in the store (None when the store cannot say: an outage)."""
    try:
        return tracker.impatient().run_record(run_id).deleted
    except Exception:
        return None


def record(job: Job, run_id: str, prep: Prepared, n_params: int, extra_params: dict | None = None) -> None:
    """The run's tags, params, config.json and dataset inputs; the last tag marks it complete."""
    tags, params, files = run_record(job, prep, n_params, together=int((extra_params or {}).get("together", 1)))
    job.tracker.record(run_id, tags, params | (extra_params or {}), files)
    job.tracker.log_datasets(run_id, datasets(job, prep))
    faults.point("record", job.tracker, run_id)
    lifecycle.mark_recorded(job.tracker, run_id)


def build(job: Job):
    """(model, optimizer, loss function, parameter count), seeded as the run's seed says."""
    exp = job.exp
    torch.manual_seed(job.seed)  # weight init, dropout
    np.random.seed(job.seed)
    model = apply_init(build_model(exp), exp.model.init).to(job.device)
    # fixed for the whole run (a resume included) by the recipe and the machine: never by what else runs
    job.threads = min(choose_threads(model, exp.train.batch_size, job.device, job.opts.threads), job.opts.max_threads or 1 << 30)
    job.conv = choose_conv(model, exp.train.batch_size, job.device)
    configure_backend(job.device, job.threads, job.conv)
    optimizer = build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr)
    return model, optimizer, loss_function(exp.train.loss), count_params(model)


def _restore(job: Job, run_id: str, state, model, optimizer, owner: str | None = None) -> Progress:
    """Continue a killed run after its last checkpointed epoch (logging that epoch if the kill
    came between the checkpoint and the store write)."""
    ck = state.load(job.device)
    if ck is None:
        if job.tracker.logged_steps(run_id, "epoch_time_s"):  # gone since the claim looked: never log an epoch twice
            raise lifecycle.NoCheckpoint(f"run {run_id} has epochs logged but no checkpoint at {state.where()}; "
                                         "the next command supersedes it with a new run")
        return Progress()
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng_cpu"].cpu())
    if job.device.type == "cuda" and ck.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ck["rng_cuda"].cpu())
    relog_missing(job.tracker, run_id, ck, owner)
    keep_threads(job, ck.get("threads"))
    job.echo(f"{job.run_name}: resuming run {run_id} after epoch {ck['epoch'] + 1}/{job.epochs}")
    return Progress(ck["epoch"] + 1, ck["best_val"], ck["train_time"], ck.get("best_model"), scaler=ck.get("scaler"),
                    history=dict(ck.get("history", {})))


def keep_threads(job: Job, threads: int | None) -> None:
    """A resumed run trains on the threads it started with (its checkpoint's), not this machine's
    choice: resumed where the cores differ (another Ray node, a narrower container) it still sums
    as it did, and its numbers are those of the run never stopped. `--threads N` pins."""
    if threads and threads != job.threads and not job.opts.threads and job.device.type == "cpu":
        job.echo(f"{job.run_name}: {threads} thread(s), as it started (this machine would choose {job.threads})")
        job.threads = threads
        torch.set_num_threads(threads)


def relog_missing(tracker, run_id: str, ck: dict, owner: str | None = None) -> None:
    """Log the epochs the checkpoint has and the store lacks: the epoch of a kill between the
    checkpoint and its metrics, and any still queued (outbox) when the process ended. Only while
    `owner` holds the run (the store asked after reading what is logged: a run taken over since
    the claim is relogged by its new owner, not by both)."""
    logged = set(tracker.logged_steps(run_id, "epoch_time_s"))
    history = {int(e): v for e, v in ck.get("history", {}).items()} | {ck["epoch"]: {"metrics": ck["metrics"], "series": ck["series"]}}
    missing = sorted(set(history) - logged)
    if missing:
        lifecycle.still_held(tracker, run_id, owner)
    for epoch in missing:
        tracker.log_metrics(run_id, history[epoch]["metrics"], epoch, history[epoch]["series"])


def _train_epochs(job: Job, run_id: str, prep: Prepared, model, optimizer, loss_fn, state, pr: Progress, bar, heartbeat: Heartbeat,
                  outbox: Outbox, owner: str | None) -> None:
    exp, steps = job.exp, len(prep.train)
    clamp = exp.train.optimizer.step_clamp
    scaler = grad_scaler(job.device, job.opts.precision)  # fp16's loss scale, carried across epochs (and a resume)
    if scaler is not None and pr.scaler:
        scaler.load_state_dict(pr.scaler)
    t_start = time.perf_counter()
    for epoch in range(pr.start_epoch, job.epochs):
        raise_dropped_stop()  # a Ctrl-C or SIGTERM a finalizer swallowed during the last epoch
        if exp.train.fresh_optimizer_per_phase and starts_phase(exp.train.phases, epoch):
            optimizer.state.clear()  # a new fit() call: fastai builds a new optimizer, momentum restarts
        set_lr(optimizer, lr_at(exp.train.phases, epoch, 0, steps))
        lr_fn = (lambda i, e=epoch: lr_at(exp.train.phases, e, i, steps)) if phase_of(exp.train.phases, epoch).schedule == "sgdr" else None
        last = [0]

        def on_log(step, loss, seen, e=epoch, t0=time.perf_counter()):
            if bar is not None:
                bar.update(step - last[0])
                last[0] = step
                bar.set_postfix(epoch=f"{e + 1}/{job.epochs}", loss=f"{loss:.3f}", img_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")

        before_step = (lambda: clamp_adam_steps(optimizer, clamp.limit, clamp.reset_to)) if clamp and epoch > clamp.after_epoch else None
        stats = train_one_epoch(model, prep.train.batches(epoch), steps, optimizer, loss_fn, lr_fn, job.opts.precision, on_log, before_step, scaler)
        pr.train_time += stats.time_s
        # validation as the write-up measured it (for cs598 that is the test set, in training mode)
        val = evaluate(model, prep.val_x, prep.val_y, loss_fn, exp.eval.batch_size, job.opts.precision, exp.eval.mode)
        faults.point("epoch_end", job.tracker, run_id)
        if run_id in heartbeat.lost:  # the run is not ours to write any more: what is queued is dropped too
            outbox.abandon()
        if heartbeat.lost.get(run_id) == DELETED:
            raise RunDeleted(f"deleted in the store while it trained (seen after epoch {epoch + 1})", run_id=run_id)
        if run_id in heartbeat.lost:
            raise TakenOver(f"taken over by {heartbeat.lost[run_id]} while this process stalled; stopped after epoch {epoch}", run_id=run_id)
        outbox.raise_error(run_id)  # a queued write fenced off (taken over during an outage): no checkpoint either
        _still_held(job.tracker, run_id, owner, outbox, epoch)
        metrics, series = epoch_metrics(stats, val, epoch, steps)
        metrics.update(epoch_test_acc(exp, model, prep, loss_fn, job.opts.precision))
        metrics["threads"] = job.threads  # what this epoch trained on: the run's fixed count (param `threads`)
        keep_best(exp, model, val, pr)
        pr.scaler = scaler.state_dict() if scaler is not None else None
        pr.history[epoch] = {"metrics": metrics, "series": series}
        state.save(checkpoint(job, model.state_dict(), optimizer.state_dict(), torch.get_rng_state(), epoch, pr, metrics, series))
        outbox.submit(job.tracker.log_metrics, run_id, metrics, epoch, series, run=run_id)  # after the checkpoint: in order
        if job.opts.progress and (bar is None or bar.disable):
            job.echo(epoch_line(job, epoch, pr, metrics, t_start))


def _still_held(tracker, run_id: str, owner: str | None, outbox: Outbox, epoch: int) -> None:
    """The store's own word, before this epoch's checkpoint and metrics: a run deleted or taken over
    since the heartbeat last looked (up to a beat ago) gets nothing more from this process."""
    try:
        lifecycle.still_held(tracker, run_id, owner)
    except RunDeleted:
        outbox.abandon()
        raise RunDeleted(f"deleted in the store while it trained (seen after epoch {epoch + 1})", run_id=run_id) from None
    except TakenOver as e:
        outbox.abandon()
        why = str(e) if "while this process" in str(e) else f"{e} while this process stalled"
        raise TakenOver(f"{why}; stopped after epoch {epoch}", run_id=run_id) from None


def epoch_metrics(stats, val, epoch: int, steps: int) -> tuple[dict, dict]:
    metrics = {"train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
               "lr": stats.lr, "epoch_time_s": stats.time_s, "epoch_images_per_s": stats.images / max(stats.time_s, 1e-9)}
    return metrics, {"train_loss_step": [(epoch * steps + s, v) for s, v in stats.step_losses]}


def epoch_test_acc(exp: Experiment, model, prep: Prepared, loss_fn, precision: str) -> dict:
    """`test_acc_epoch`: the test accuracy after this epoch, for a recipe with a validation split
    (one that validates on the test set has it as val_acc already). The budget table chooses an
    epoch on the validation split and scores it here, on images that did not choose it. Measured in
    eval mode under no_grad: no dropout draw (no RNG consumed), BatchNorm's running statistics
    untouched, so training is bit-identical with or without it (tests/test_epoch_test_acc.py);
    nothing of training reads it, and its time is not training time."""
    if prep.val_is_test:
        return {}
    return {"test_acc_epoch": evaluate(model, prep.test_x, prep.test_y, loss_fn, exp.eval.batch_size, precision, "eval").acc}


def keep_best(exp: Experiment, model, val, pr: Progress) -> None:
    if exp.train.checkpoint == "best_val_loss" and val.loss <= pr.best_val:  # `<=` as in the write-up
        pr.best_val = val.loss
        pr.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def checkpoint(job: Job, weights: dict, optimizer_state: dict, rng: torch.Tensor, epoch: int, pr: Progress, metrics: dict, series: dict) -> dict:
    """What a run keeps after each epoch to resume after it (checkpoints.py keeps it)."""
    return {"model": weights, "optimizer": optimizer_state, "rng_cpu": rng,
            "rng_cuda": torch.cuda.get_rng_state() if job.device.type == "cuda" else None, "epoch": epoch,
            "best_val": pr.best_val, "best_model": pr.best_weights, "train_time": pr.train_time, "metrics": metrics, "series": series,
            "scaler": pr.scaler, "threads": job.threads,
            "history": dict(pr.history)}
