"""The end of one run's life: test metrics, artifacts and the kept model, logged so that doing
it twice (a process killed half-way, then rerun) completes what is missing and repeats nothing;
then the run FINISHED and its checkpoint removed (`finish`, for one_run.py and group_run.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from . import lifecycle
from ..data.cifar_files import Cifar10
from ..errors import Interrupted
from .job import Job, Outcome, Progress
from ..training.loop import evaluate
from ..training.recipe_data import Prepared
from ..recipes.spec import Experiment
from ..tracking import Tracker, faults
from ..tracking.guards import sigint_deferred
from ..tracking.outage import Fenced
from ..tracking.outbox import Outbox


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Rows true class, columns predicted (sklearn's confusion_matrix with labels 0..k-1)."""
    return np.bincount(y.astype(np.int64) * k + pred.astype(np.int64), minlength=k * k).reshape(k, k)


def f1_scores(cm: np.ndarray) -> tuple[float, float]:
    """(macro, micro) F1 as sklearn computes them without `labels`: the macro mean runs over
    the classes present in the labels or the predictions, a class never predicted scores 0."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0, float(tp.sum() / max(cm.sum(), 1))


def final_metrics(data: Cifar10, prep: Prepared, test, test_std, train_time: float, epochs: int, n_params: int):
    """(metrics, confusion matrix, per-class accuracy) of the test evaluation. `test` follows
    the write-up's protocol (compared with the published number), `test_std` is eval mode."""
    y = prep.test_y.cpu().numpy()
    pred = test.preds.numpy()
    k = len(data.classes)
    cm = confusion(y, pred, k)
    per_class = [100.0 * cm[i, i] / cm[i].sum() if cm[i].sum() else float("nan") for i in range(k)]
    f1_macro, f1_micro = f1_scores(cm)
    metrics = {"test_loss": test.loss, "test_acc": test.acc, "test_f1_macro": f1_macro,
               "test_f1_micro": f1_micro, "train_time_s": train_time,
               "images_per_s": prep.n_train * epochs / max(train_time, 1e-9), "params": n_params,
               "test_acc_eval_mode": test_std.acc, "test_loss_eval_mode": test_std.loss}
    metrics.update({f"test_acc_{c}": a for c, a in zip(data.classes, per_class)})
    return metrics, cm, per_class


def write_artifacts(folder: Path, tracker: Tracker, run_id: str, exp: Experiment, data: Cifar10, prep: Prepared, test, cm, per_class) -> None:
    import pandas as pd

    from ..plots import confusion_figure, loss_curve_figure, save_png

    pd.DataFrame(cm, index=data.classes, columns=data.classes).to_csv(folder / "confusion_matrix.csv", index_label="true\\predicted")
    save_png(confusion_figure(cm, data.classes, f"{exp.id}: test confusion matrix"), folder / "confusion_matrix.png", tight=False)
    pd.DataFrame({"class": data.classes, "accuracy": per_class, "n": cm.sum(1)}).to_csv(folder / "per_class_accuracy.csv", index=False)
    preds = pd.DataFrame({"label": prep.test_y.cpu().numpy(), "pred": test.preds.numpy()})
    for i, c in enumerate(data.classes):
        preds[f"p_{c}"] = test.probs[:, i].numpy().round(6)
    preds.to_csv(folder / "test_predictions.csv", index_label="index")
    hist_tr = tracker.metric_history(run_id, "train_loss")
    hist_va = tracker.metric_history(run_id, "val_loss")
    save_png(loss_curve_figure([s + 1 for s, _ in hist_tr], [v for _, v in hist_tr], [v for _, v in hist_va],
                               f"{exp.id}: loss", "test" if prep.val_is_test else "validation"), folder / "loss_curve.png")


def log_final(tracker: Tracker, run_id: str, model, exp: Experiment, data: Cifar10, prep: Prepared, test, test_std,
              train_time: float, epochs: int, n_params: int) -> None:
    """Idempotent: the metrics are logged once (skipped when a previous attempt logged them),
    artifacts are overwritten with identical files, and the model is logged only if no
    complete copy exists (a half-logged one from a killed attempt is removed)."""
    metrics, cm, per_class = final_metrics(data, prep, test, test_std, train_time, epochs, n_params)
    faults.point("final_metrics", tracker, run_id)
    if epochs not in tracker.logged_steps(run_id, "test_acc"):
        tracker.log_metrics(run_id, metrics, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(Path(tmp), tracker, run_id, exp, data, prep, test, cm, per_class)
        tracker.log_artifacts(run_id, tmp)
    faults.point("model", tracker, run_id)
    if not tracker.has_model(run_id):
        model.eval()
        example = prep.test_x[:2].float().cpu().numpy()
        # a user's network travels with the model (MLflow's code_paths): it loads without their folder
        code_paths = [exp.code.ship] if exp.code is not None and exp.code.ship else None
        tracker.log_model(run_id, model.cpu(), example, [f"torch=={torch.__version__.split('+')[0]}"], code_paths)


def finish(job: Job, run_id: str, prep: Prepared, model, loss_fn, state, pr: Progress, n_params: int, outbox: Outbox,
           owner: str | None) -> Outcome:
    """Test, log the final metrics and model, end the run FINISHED and remove its checkpoint. A run
    taken over or deleted meanwhile (TakenOver, RunDeleted) gets nothing more: the run's writes
    still queued are dropped too."""
    try:
        return _finish(job, run_id, prep, model, loss_fn, state, pr, n_params, outbox, owner)
    except Fenced as e:
        outbox.drop(run_id, e)
        raise


def _finish(job: Job, run_id: str, prep: Prepared, model, loss_fn, state, pr: Progress, n_params: int, outbox: Outbox,
            owner: str | None) -> Outcome:
    exp = job.exp
    faults.point("outbox_flush", job.tracker, run_id)
    # a process that stalled past the stale limit and wakes after another took the run over must
    # not write its final metrics and model into the new owner's run (its status write checks again)
    lifecycle.check_owner(job.tracker, run_id, owner)
    outbox.flush(run_id)  # every epoch's metrics and checkpoint have landed (the loss curve reads them back)
    if exp.train.checkpoint == "best_val_loss" and pr.best_weights is not None:
        model.load_state_dict(pr.best_weights)
    test = evaluate(model, prep.test_x, prep.test_y, loss_fn, exp.eval.batch_size, job.opts.precision, exp.eval.mode)
    # the standard protocol as well, for every recipe (the same figure where the write-up uses it)
    test_std = test if exp.eval.mode == "eval" else evaluate(model, prep.test_x, prep.test_y, loss_fn, precision=job.opts.precision)
    # a Ctrl-C now waits the few seconds until the run is complete and FINISHED (a second one
    # cuts it short; the rerun then completes what is missing, see finish.py)
    interrupted = False
    try:
        with sigint_deferred():
            lifecycle.still_held(job.tracker, run_id, owner)  # again after the test pass: nothing final into another's run
            log_final(job.tracker, run_id, model, exp, job.data, prep, test, test_std, pr.train_time, job.epochs, n_params)
            faults.point("finish", job.tracker, run_id)
            lifecycle.finish(job.tracker, run_id, owner)
            faults.point("clear", job.tracker, run_id)
            state.clear()  # held too: a stop now leaves no checkpoint beside a FINISHED run (a kill: the next claim removes it)
    except KeyboardInterrupt:
        if job.tracker.run_status(run_id) != "FINISHED":
            raise
        interrupted = True
        state.clear()
    protocol = f" measured in {exp.eval.mode} mode as the write-up did, {test_std.acc:.2f}% in eval mode" if exp.eval.mode != "eval" else ""
    job.echo(f"{job.run_name}: test accuracy {test.acc:.2f}%{protocol} (published {_fmt_pub(exp)}), train {pr.train_time:.1f}s, run {run_id}")
    if interrupted:
        raise Interrupted(f"run {job.run_name} ({run_id}) had finished and is recorded FINISHED")
    return Outcome(exp.id, job.seed, "finished", run_id, test.acc, pr.train_time)


def _fmt_pub(exp: Experiment) -> str:
    acc = exp.published.test_accuracy
    return ", ".join(f"{a:.2f}%" for a in acc) if acc else "none"
