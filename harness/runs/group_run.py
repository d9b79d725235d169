"""A recipe's seeds trained together (training/together.py), recorded as N ordinary MLflow runs.

Each run gets what a run trained alone gets: its record, its per-epoch metrics, its own
checkpoint in the same format (so a group killed part-way resumes as a group, or run by run),
its test metrics, artifacts and logged model, written by the same functions as one_run.py.
`epoch_time_s` is the group's epoch time divided by N (each network's share of the machine),
and the param `together` says how many networks trained at once.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from . import lifecycle
from .checkpoints import HOME_TAG, run_state
from .claims import DELETED, Heartbeat
from ..errors import DivergedError, Interrupted
from .job import Job, Outcome, Progress
from .lifecycle import RunDeleted, TakenOver
from .finish import finish
from .one_run import build, checkpoint, ended_outcome, epoch_metrics, epoch_test_acc, keep_best, record, relog_missing
from ..tracking.outage import Fenced
from ..tracking.guards import raise_dropped_stop
from ..tracking.outbox import Outbox
from .progress import epoch_line
from ..training.environment import flushing_denormals
from ..training.recipe_data import prepare_data
from ..training.together import Stack, optimizer_state_of, stacked_optimizer_state
from ..training.loop import LOG_POINTS_PER_EPOCH, EpochStats, autocast_context, build_optimizer, evaluate, lr_at, phase_of, set_lr, starts_phase


def train_group(jobs: list[Job], run_ids: list[str], recorded: list[bool], checkpoints: list[dict | None], beat_s: float,
                owner: str | None = None, resumed: list[bool] | None = None) -> list[Outcome]:
    """Train the claimed runs of one recipe's seeds together. `checkpoints`: each run's last
    checkpoint (all None, or all of the same epoch); `resumed`: which claims took over an earlier
    run (default: those with a checkpoint), reopened as they train; `owner`: the claims' owner, checked by the
    heartbeat (a run taken over meanwhile is left to its new owner, as one_run.train_run does).
    As there, a run that fails before it was recorded is deleted rather than left behind, and a
    fault ends each run as lifecycle.py decides; one network's failing finish ends only its run."""
    tracker, n = jobs[0].tracker, len(jobs)
    done: dict[int, Outcome] = {}
    resumed = list(resumed) if resumed is not None else [ck is not None for ck in checkpoints]
    for rid in run_ids:
        lifecycle.fence(tracker, rid, owner, beat_s)
    try:
        with Heartbeat(tracker, beat_s, owner) as heartbeat, Outbox() as outbox, contextlib.ExitStack() as monitors, flushing_denormals():
            for rid in run_ids:
                heartbeat.hold(rid)
            preps = [prepare_data(j.exp, j.data, j.seed, j.opts.max_train_images, j.device) for j in jobs]
            built = [(*build(j), torch.get_rng_state()) for j in jobs]  # seeded per run: its init, then its generator
            models, loss_fn = [b[0] for b in built], built[0][2]
            states = [run_state(tracker, rid, outbox) for rid in run_ids]
            for i, job in enumerate(jobs):
                if not recorded[i]:
                    record(job, run_ids[i], preps[i], built[i][3], {"together": n})
                    recorded[i] = True
                lifecycle.start_training(tracker, run_ids[i], owner, resumed=resumed[i], tags={HOME_TAG: states[i].home()})
                monitors.enter_context(tracker.system_metrics(run_ids[i], job.opts.system_metrics, job.opts.system_metrics_interval_s,
                                                              resume=checkpoints[i] is not None))
            stack = Stack(models, [b[4] for b in built])
            optimizer = build_optimizer(stack.holder, jobs[0].exp.train.optimizer, jobs[0].exp.train.phases[0].lr)
            progress = _restore(jobs, run_ids, stack, optimizer, checkpoints, owner, done, heartbeat, outbox)
            _train_epochs(jobs, run_ids, preps, models, stack, optimizer, loss_fn, states, progress, done, heartbeat, outbox, owner)
            for i, job in enumerate(jobs):
                if i not in done:
                    stack.unstack_into(i, models[i])
                    torch.set_rng_state(stack.rng_state(i))  # a train-mode test pass draws as the sequential run would
                    try:
                        done[i] = finish(job, run_ids[i], preps[i], models[i], loss_fn, states[i], progress[i], built[i][3], outbox, owner)
                    except TakenOver as e:  # this run is another process's now; the others finish
                        done[i] = Outcome(job.exp.id, job.seed, "skipped", run_ids[i], reason=str(e))
                    except Exception as e:  # this network's run ends; the others finish
                        done[i] = ended_outcome(job, run_ids[i], owner, True, e)
    except Interrupted as e:  # one network's finish completed as the Ctrl-C came: the rest stop resumable
        stopped = [jobs[i].run_name for i, rid in enumerate(run_ids) if i not in done and _stop(tracker, rid, owner)]
        raise Interrupted("; ".join([str(e)] + ([f"runs {', '.join(stopped)} of its group are marked KILLED; run the same command "
                                                  "again to resume them"] if stopped else []))) from None
    except KeyboardInterrupt as e:
        for i, rid in enumerate(run_ids):
            if i not in done:
                try:
                    lifecycle.settle(tracker, rid, owner, recorded[i] or resumed[i], e, "interrupted (Ctrl-C); run again to resume")
                except TakenOver:
                    pass
        raise Interrupted(f"runs {', '.join(j.run_name for j in jobs)} are marked KILLED (those not yet recorded are deleted); "
                          "run the same command again to resume them") from None
    except Exception as e:  # TakenOver included: ended_outcome reports those as skipped
        for i, rid in enumerate(run_ids):
            if i not in done:
                done[i] = ended_outcome(jobs[i], rid, owner, recorded[i] or resumed[i], e)
    finally:
        for rid in run_ids:
            lifecycle.unfence(tracker, rid)
    return [done[i] for i in range(n)]


def without_checkpoint(jobs: list[Job], run_ids: list[str], resumed: list[bool], checkpoints: list[dict | None],
                       owner: str | None) -> dict[int, Outcome]:
    """The claimed runs that cannot train in a group, by index: taken over to resume, with epochs
    logged and no checkpoint to continue them from (gone since the claim looked). As one_run's
    NoCheckpoint: each is left resumable and the next claim supersedes it; no epoch is logged twice."""
    out = {}
    for i, job in enumerate(jobs):
        if resumed[i] and checkpoints[i] is None and job.tracker.logged_steps(run_ids[i], "epoch_time_s"):
            where = run_state(job.tracker, run_ids[i]).where()
            out[i] = ended_outcome(job, run_ids[i], owner, True, lifecycle.NoCheckpoint(
                f"run {run_ids[i]} has epochs logged but no checkpoint at {where}; the next command supersedes it with a new run"))
    return out


def _stop(tracker, run_id: str, owner: str | None) -> bool:
    try:
        return lifecycle.stop(tracker, run_id, owner, "interrupted (Ctrl-C); run again to resume")
    except Exception:  # left RUNNING, its heartbeat stops: resumed next time all the same
        return False


def _restore(jobs: list[Job], run_ids: list[str], stack: Stack, optimizer, checkpoints: list[dict | None], owner: str | None,
             done: dict, heartbeat: Heartbeat, outbox: Outbox) -> list[Progress]:
    if checkpoints[0] is None:
        return [Progress() for _ in jobs]
    for i, ck in enumerate(checkpoints):
        stack.load_network(i, ck["model"], ck["rng_cpu"].cpu())
        try:
            relog_missing(jobs[i].tracker, run_ids[i], ck, owner)
        except Fenced as f:  # this run only: the others resume
            _give_up(jobs[i], run_ids[i], i, owner, f, done, heartbeat, outbox)
    optimizer.load_state_dict(stacked_optimizer_state([ck["optimizer"] for ck in checkpoints]))
    jobs[0].echo(f"{', '.join(j.run_name for j in jobs)}: resuming together after epoch {checkpoints[0]['epoch'] + 1}/{jobs[0].epochs}")
    return [Progress(ck["epoch"] + 1, ck["best_val"], ck["train_time"], ck.get("best_model"), history=dict(ck.get("history", {})))
            for ck in checkpoints]


def _train_epochs(jobs, run_ids, preps, models, stack: Stack, optimizer, loss_fn, states, progress: list[Progress], done: dict,
                  heartbeat: Heartbeat, outbox: Outbox, owner: str | None) -> None:
    job0, n = jobs[0], len(jobs)
    exp, steps = job0.exp, len(preps[0].train)
    t_start = time.perf_counter()
    for epoch in range(progress[0].start_epoch, job0.epochs):
        raise_dropped_stop()  # a Ctrl-C or SIGTERM a finalizer swallowed during the last epoch
        if exp.train.fresh_optimizer_per_phase and starts_phase(exp.train.phases, epoch):
            optimizer.state.clear()
        set_lr(optimizer, lr_at(exp.train.phases, epoch, 0, steps))
        lr_fn = (lambda i, e=epoch: lr_at(exp.train.phases, e, i, steps)) if phase_of(exp.train.phases, epoch).schedule == "sgdr" else None
        stats = group_epoch(stack, [p.train.batches(epoch) for p in preps], steps, optimizer, loss_fn, lr_fn, job0.opts.precision)
        for i, job in enumerate(jobs):
            if i in done:
                continue
            if isinstance(stats[i], DivergedError):
                done[i] = ended_outcome(job, run_ids[i], owner, True, stats[i])
                continue
            try:  # a fenced write (raised at this run's next submit) or the store's word ends this run only
                _end_epoch(job, run_ids[i], preps[i], models[i], stack, i, optimizer, loss_fn, states[i], progress[i], stats[i], epoch,
                           heartbeat, outbox, owner, t_start)
            except Fenced as f:
                if f.run_id not in (None, run_ids[i]):
                    raise
                _give_up(job, run_ids[i], i, owner, f, done, heartbeat, outbox)
        if len(done) == n:  # every network diverged or was taken over
            return


def _give_up(job: Job, run_id: str, i: int, owner: str | None, why: Fenced, done: dict, heartbeat: Heartbeat, outbox: Outbox) -> None:
    """A group's run lost (deleted: its checkpoint removed; taken over: the new owner's, touch
    neither), as one run alone would be: only its writes still queued and its heartbeat stop."""
    outbox.drop(run_id, why)
    heartbeat.drop(run_id)
    done[i] = ended_outcome(job, run_id, owner, True, why) if isinstance(why, RunDeleted) else \
        Outcome(job.exp.id, job.seed, "skipped", run_id, reason=str(why))


def _end_epoch(job: Job, run_id: str, prep, model, stack: Stack, i: int, optimizer, loss_fn, state, pr: Progress, stats, epoch: int,
               heartbeat: Heartbeat, outbox: Outbox, owner: str | None, t_start: float) -> None:
    """One network's epoch end: validation, checkpoint and metrics, once the store said it is still ours."""
    exp, tracker, steps = job.exp, job.tracker, len(prep.train)
    lost = _lost(tracker, run_id, owner, heartbeat, outbox, epoch)
    if lost is not None:
        raise lost
    pr.train_time += stats.time_s
    stack.unstack_into(i, model)
    torch.set_rng_state(stack.rng_state(i))  # a train-mode validation draws from the network's own generator
    val = evaluate(model, prep.val_x, prep.val_y, loss_fn, exp.eval.batch_size, job.opts.precision, exp.eval.mode)
    stack.generators[i].set_state(torch.get_rng_state())
    metrics, series = epoch_metrics(stats, val, epoch, steps)
    metrics.update(epoch_test_acc(exp, model, prep, loss_fn, job.opts.precision))  # eval mode: no RNG drawn
    keep_best(exp, model, val, pr)
    pr.history[epoch] = {"metrics": metrics, "series": series}
    state.save(checkpoint(job, model.state_dict(), optimizer_state_of(optimizer, i, stack.n), stack.rng_state(i), epoch, pr, metrics, series))
    outbox.submit(tracker.log_metrics, run_id, metrics, epoch, series, run=run_id)
    if job.opts.progress:
        job.echo(epoch_line(job, epoch, pr, metrics, t_start))


def _lost(tracker, run_id: str, owner: str | None, heartbeat: Heartbeat, outbox: Outbox, epoch: int) -> Exception | None:
    """Why this network's run gets nothing more from this process (RunDeleted, TakenOver), as the
    heartbeat saw it, its fence refused a queued write (outbox.lost) or, before its checkpoint and
    metrics, the store itself says; None: still ours."""
    if run_id in outbox.lost:
        return outbox.lost[run_id]
    seen = heartbeat.lost.get(run_id)
    if seen == DELETED:
        return RunDeleted(f"deleted in the store while it trained (seen after epoch {epoch + 1})", run_id=run_id)
    if seen is not None:
        return TakenOver(f"taken over by {seen} while this process stalled; stopped after epoch {epoch}", run_id=run_id)
    try:
        lifecycle.still_held(tracker, run_id, owner)
    except RunDeleted:
        return RunDeleted(f"deleted in the store while it trained (seen after epoch {epoch + 1})", run_id=run_id)
    except TakenOver as e:
        why = str(e) if "while this process" in str(e) else f"{e} while this process stalled"
        return TakenOver(f"{why}; stopped after epoch {epoch}", run_id=run_id)
    return None


def group_epoch(stack: Stack, batches: list, steps: int, optimizer, loss_fn, lr_for_step=None, precision: str = "fp32") -> list:
    """One epoch of N networks in lockstep (train.train_one_epoch's loop, per network). Each
    entry is the network's EpochStats (time: its share, the group's time / N), or DivergedError."""
    n, every = stack.n, max(1, steps // LOG_POINTS_PER_EPOCH)
    loss_sum, correct, seen, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.long), 0, 0
    points: list[list] = [[] for _ in range(n)]
    diverged: list = [None] * n
    win_l: list[torch.Tensor] = []
    win_c: list[torch.Tensor] = []
    last_lr = optimizer.param_groups[0]["lr"]
    i = -1
    t0 = time.perf_counter()
    for i, pairs in enumerate(zip(*batches)):
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        if lr_for_step is not None:
            last_lr = lr_for_step(i)
            set_lr(optimizer, last_lr)
        with autocast_context(x.device, precision):
            losses, out = stack.forward_loss(x, y, loss_fn)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        win_l.append(losses.detach())
        win_c.append((out.detach().argmax(-1) == y).sum(1))
        seen += y.shape[1]
        if len(win_l) == every or i == steps - 1:
            count += _flush(win_l, win_c, i, loss_sum, correct, points, diverged)
    if win_l:
        count += _flush(win_l, win_c, i, loss_sum, correct, points, diverged)
    share = (time.perf_counter() - t0) / n
    return [diverged[k] or EpochStats(loss_sum[k].item() / max(count, 1), 100.0 * correct[k].item() / max(seen, 1), seen, share, last_lr, points[k])
            for k in range(n)]


def _flush(win_l, win_c, i, loss_sum, correct, points, diverged) -> int:
    w = torch.stack(win_l).sum(0).double()
    k = len(win_l)
    correct += torch.stack(win_c).sum(0)
    loss_sum += w
    for net, v in enumerate(w.tolist()):
        if not math.isfinite(v) and diverged[net] is None:
            diverged[net] = DivergedError(f"loss became {v / k} at epoch step {i}")
        points[net].append((i, v / k))
    win_l.clear(), win_c.clear()
    return k
