"""One run's life, and many runs in turn: claim a configuration, start or resume its MLflow
run, train epoch by epoch with a checkpoint after each, finish or fail.

Who trains what is claims.py, where the state lives is checkpoints.py, the loop is train.py,
the final logging finish.py, MLflow calls tracking/.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from .checkpoints import RunState, state_root, store_identity
from .cifar_files import Cifar10
from .claims import ConfigLock
from .environment import choose_threads, configure_backend, resolve_device
from .errors import DivergedError, Interrupted, one_line
from .finish import log_final
from .job import Job, Outcome, Progress, RunOptions, capped_phases
from .models import apply_init, count_params, create_model
from .progress import epoch_line, progress_bar
from .recipe_data import Prepared, prepare_data
from .run_record import datasets, run_record
from .spec import Experiment, config_hash
from .tracking import Tracker
from .tracking.guards import sigint_deferred
from .train import build_optimizer, clamp_adam_steps, evaluate, loss_function, lr_at, phase_of, set_lr, starts_phase, train_one_epoch

# --------------------------------------------------------------------------- claim


def run_one(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print) -> Outcome:
    device = resolve_device(opts.device)
    chash = config_hash(exp, opts.overrides(), seed, data.fingerprint)
    epochs = capped_phases(exp.train.phases, opts.epochs) if opts.epochs is not None else exp.train.epochs
    job = Job(exp, data, tracker, opts, seed, device, chash, exp.id if opts.repeats == 1 else f"{exp.id}-s{seed}", epochs, echo)
    key = hashlib.sha256(f"{store_identity(tracker.uri)}|{tracker.experiment_name}|{chash}".encode()).hexdigest()[:20]
    lock = ConfigLock(key, state_root(tracker.uri))
    if not lock.acquire():
        return Outcome(exp.id, seed, "skipped", reason="being trained by another process")
    try:
        existing = tracker.find_runs(chash)
        done = [r for r in existing if r.status == "FINISHED"]
        if done and not opts.force:
            return Outcome(exp.id, seed, "skipped", done[0].run_id, reason="identical finished run exists (use --force to train again)")
        # we hold the lock, so a RUNNING run of this configuration has no live process
        stale = [r for r in existing if r.status in ("RUNNING", "KILLED")]
        resume = None if opts.force else (max(stale, key=lambda r: r.start_time) if stale else None)
        if opts.force:
            for r in stale:
                tracker.terminate(r.run_id, "KILLED", "abandoned: superseded by a --force run")
        return _train_run(job, resume.run_id if resume else None)
    finally:
        lock.release()


# --------------------------------------------------------------------------- start or resume


def _restore(job: Job, run_id: str, state: RunState, model, optimizer) -> Progress:
    """Continue a killed run after its last checkpointed epoch (logging that epoch if the kill
    came between the checkpoint and the store write)."""
    ck = state.load_last(job.device)
    if ck is None:
        job.echo(f"{job.run_name}: restarting run {run_id} from epoch 1 (no checkpoint)")
        return Progress()
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng_cpu"])
    if job.device.type == "cuda" and ck.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ck["rng_cuda"])
    if ck["epoch"] not in job.tracker.logged_steps(run_id, "epoch_time_s"):
        job.tracker.log_metrics(run_id, ck["metrics"], ck["epoch"], ck["series"])
    job.echo(f"{job.run_name}: resuming run {run_id} after epoch {ck['epoch'] + 1}/{job.epochs}")
    return Progress(ck["epoch"] + 1, ck["best_val"], ck["train_time"])


# --------------------------------------------------------------------------- train


def _train_epochs(job: Job, run_id: str, prep: Prepared, model, optimizer, loss_fn, state: RunState, pr: Progress, bar) -> None:
    exp, steps = job.exp, len(prep.train)
    clamp = exp.train.optimizer.step_clamp
    t_start = time.perf_counter()
    for epoch in range(pr.start_epoch, job.epochs):
        phase = phase_of(exp.train.phases, epoch)
        if exp.train.fresh_optimizer_per_phase and starts_phase(exp.train.phases, epoch):
            optimizer.state.clear()  # a new fit() call: fastai builds a new optimizer, momentum restarts
        set_lr(optimizer, lr_at(exp.train.phases, epoch, 0, steps))
        lr_fn = (lambda i, e=epoch: lr_at(exp.train.phases, e, i, steps)) if phase.schedule == "sgdr" else None
        last = [0]

        def on_log(step, loss, seen, e=epoch, t0=time.perf_counter()):
            if bar is not None:
                bar.update(step - last[0])
                last[0] = step
                bar.set_postfix(epoch=f"{e + 1}/{job.epochs}", loss=f"{loss:.3f}", img_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")

        before_step = (lambda: clamp_adam_steps(optimizer, clamp.limit, clamp.reset_to)) if clamp and epoch > clamp.after_epoch else None
        stats = train_one_epoch(model, prep.train.batches(epoch), steps, optimizer, loss_fn, lr_fn, job.opts.precision, on_log, before_step)
        pr.train_time += stats.time_s
        # validation as the write-up measured it (for cs598 that is the test set, in training mode)
        val = evaluate(model, prep.val_x, prep.val_y, loss_fn, exp.eval.batch_size, job.opts.precision, exp.eval.mode)
        metrics = {"train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
                   "lr": stats.lr, "epoch_time_s": stats.time_s, "epoch_images_per_s": stats.images / max(stats.time_s, 1e-9)}
        series = {"train_loss_step": [(epoch * steps + s, v) for s, v in stats.step_losses]}
        if exp.train.checkpoint == "best_val_loss" and val.loss <= pr.best_val:  # `<=` as in the write-up
            pr.best_val = val.loss
            state.save_best(model.state_dict())
        state.save_last({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state(),
                         "rng_cuda": torch.cuda.get_rng_state() if job.device.type == "cuda" else None, "epoch": epoch,
                         "best_val": pr.best_val, "train_time": pr.train_time, "metrics": metrics, "series": series})
        job.tracker.log_metrics(run_id, metrics, epoch, series)
        if job.opts.progress and (bar is None or bar.disable):
            job.echo(epoch_line(job, epoch, pr, metrics, t_start))


def _train_run(job: Job, resume_id: str | None) -> Outcome:
    exp, tracker = job.exp, job.tracker
    prep = prepare_data(exp, job.data, job.seed, job.opts.max_train_images, job.device)
    torch.manual_seed(job.seed)  # weight init, dropout
    np.random.seed(job.seed)
    model = apply_init(create_model(exp.model.name, **exp.model.args), exp.model.init).to(job.device)
    job.threads = choose_threads(model, exp.train.batch_size, job.device, job.opts.threads)
    configure_backend(job.device, job.threads)
    n_params = count_params(model)
    loss_fn = loss_function(exp.train.loss)
    optimizer = build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr)
    if resume_id is None:
        run_id = tracker.start_run(job.run_name, *run_record(job, prep, n_params))
        tracker.log_datasets(run_id, datasets(job, prep))
    else:
        run_id = resume_id
        tracker.reopen(run_id)
    state = RunState(run_id, state_root(tracker.uri))
    bar = None
    try:
        with tracker.system_metrics(run_id, job.opts.system_metrics, job.opts.system_metrics_interval_s, resume=resume_id is not None):
            pr = _restore(job, run_id, state, model, optimizer) if resume_id is not None else Progress()
            bar = progress_bar(job, len(prep.train) * (job.epochs - pr.start_epoch))
            _train_epochs(job, run_id, prep, model, optimizer, loss_fn, state, pr, bar)
            if bar is not None:
                bar.close()
                bar = None
            return _finish(job, run_id, prep, model, loss_fn, state, pr, n_params)
    except Interrupted:  # already settled: the run finished before the interrupt took effect
        raise
    except KeyboardInterrupt:
        try:
            tracker.terminate(run_id, "KILLED", "interrupted (Ctrl-C); run again to resume")
        except Exception as e:  # left RUNNING with no lock holder, it is still resumed next time
            raise Interrupted(f"run {job.run_name} ({run_id}) could not be marked KILLED ({type(e).__name__}); run the same command again to resume it") from None
        raise Interrupted(f"run {job.run_name} ({run_id}) is marked KILLED; run the same command again to resume it") from None
    except DivergedError as e:
        tracker.terminate(run_id, "FAILED", f"diverged: {e}")
        state.clear()
        return Outcome(exp.id, job.seed, "failed", run_id, reason=f"diverged: {e}")
    except Exception as e:  # any other fault fails this run, not the whole run-all
        reason = one_line(e)
        tracker.terminate(run_id, "FAILED", reason)
        return Outcome(exp.id, job.seed, "failed", run_id, reason=reason)
    finally:
        if bar is not None:
            bar.close()


def _finish(job: Job, run_id: str, prep: Prepared, model, loss_fn, state: RunState, pr: Progress, n_params: int) -> Outcome:
    exp = job.exp
    if exp.train.checkpoint == "best_val_loss":
        best = state.load_best(job.device)
        if best is not None:
            model.load_state_dict(best)
    test = evaluate(model, prep.test_x, prep.test_y, loss_fn, exp.eval.batch_size, job.opts.precision, exp.eval.mode)
    # the standard protocol as well, for every recipe (the same figure where the write-up uses it)
    test_std = test if exp.eval.mode == "eval" else evaluate(model, prep.test_x, prep.test_y, loss_fn, precision=job.opts.precision)
    # a Ctrl-C now waits the few seconds until the run is complete and FINISHED (a second one
    # cuts it short; the rerun then completes what is missing, see finish.py)
    interrupted = False
    try:
        with sigint_deferred():
            log_final(job.tracker, run_id, model, exp, job.data, prep, test, test_std, pr.train_time, job.epochs, n_params)
            job.tracker.terminate(run_id, "FINISHED")
    except KeyboardInterrupt:
        if job.tracker.run_status(run_id) != "FINISHED":
            raise
        interrupted = True
    state.clear()
    protocol = f" measured in {exp.eval.mode} mode as the write-up did, {test_std.acc:.2f}% in eval mode" if exp.eval.mode != "eval" else ""
    job.echo(f"{job.run_name}: test accuracy {test.acc:.2f}%{protocol} (published {_fmt_pub(exp)}), train {pr.train_time:.1f}s, run {run_id}")
    if interrupted:
        raise Interrupted(f"run {job.run_name} ({run_id}) had finished and is recorded FINISHED; nothing else was started")
    return Outcome(exp.id, job.seed, "finished", run_id, test.acc, pr.train_time)


def _fmt_pub(exp: Experiment) -> str:
    acc = exp.published.test_accuracy
    return ", ".join(f"{a:.2f}%" for a in acc) if acc else "none"


# --------------------------------------------------------------------------- many runs


def run_many(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, echo=print) -> list[Outcome]:
    outcomes = []
    for exp in experiments:
        for seed in range(opts.seed, opts.seed + opts.repeats):
            try:
                o = run_one(exp, data, tracker, opts, seed, echo)
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
