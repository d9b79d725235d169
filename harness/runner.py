"""Runs experiments as MLflow runs: skip what is finished, resume what was killed, record
failures and go on. Orchestration only; the loop is in train.py, MLflow calls in tracking.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .data import NORMALIZATIONS, Cifar10, TensorLoader, balanced_subset, normalize, split_train_val
from .errors import DivergedError, HarnessError
from .models import count_params, create_model
from .spec import Experiment, Phase, config_hash, flatten
from .tracking import TAG, Tracker
from .train import build_optimizer, evaluate, loss_function, lr_at, phase_of, set_lr, train_one_epoch

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunOptions:
    seed: int = 0
    repeats: int = 1
    epochs: int | None = None  # cap: follow the recipe's schedule, stop after N epochs
    max_train_images: int | None = None
    force: bool = False
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True

    def overrides(self) -> dict:
        """What changes the result beyond the spec and the seed (recorded and hashed)."""
        o = {}
        if self.epochs is not None:
            o["epochs"] = self.epochs
        if self.max_train_images is not None:
            o["max_train_images"] = self.max_train_images
        if self.precision != "fp32":
            o["precision"] = self.precision
        return o


@dataclass
class Outcome:
    experiment_id: str
    seed: int
    status: str  # finished | skipped | failed | killed
    run_id: str | None = None
    test_acc: float | None = None
    train_time_s: float | None = None
    reason: str = ""


# --------------------------------------------------------------------------- environment


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device available (torch %s)" % torch.__version__)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HarnessError("--device mps: MPS is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise HarnessError(f"unknown device {name!r} (known: auto, cpu, cuda, mps)")
    return torch.device(name)


def configure_backend(device: torch.device) -> None:
    # all cores for intra-op work; PyTorch's default can be lower inside containers
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.processor() or platform.machine()}"


def state_root() -> Path:
    return Path(os.environ.get("HARNESS_STATE_DIR") or Path.cwd() / ".harness" / "state")


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


class ConfigLock:
    """An flock per configuration: a second process on the same store skips it instead of
    training it twice; the kernel drops the lock when a holder dies, even by SIGKILL."""

    def __init__(self, key: str):
        root = state_root()
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{key}.lock"
        self.fd = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- data for one recipe


@dataclass
class Prepared:
    train: TensorLoader
    val_x: torch.Tensor
    val_y: torch.Tensor
    val_is_test: bool
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_train: int


def prepare_data(exp: Experiment, data: Cifar10, seed: int, max_train_images: int | None, device: torch.device) -> Prepared:
    mean, std = NORMALIZATIONS[exp.data.normalization]
    y = data.train_y
    tr_idx, va_idx = split_train_val(y, exp.data.val_fraction, seed, exp.data.val_split == "stratified")
    if max_train_images is not None:
        keep = balanced_subset(y[tr_idx], max_train_images, seed)
        tr_idx = tr_idx[keep]
    x_tr = normalize(data.train_x[tr_idx], mean, std, device)
    y_tr = y[tr_idx].to(device)
    pad_values = (-torch.tensor(mean) / torch.tensor(std)).to(device)
    loader = TensorLoader(x_tr, y_tr, exp.train.batch_size, shuffle=True, augmentation=exp.data.augmentation,
                          pad_mode=exp.data.pad_mode, pad_values=pad_values, seed=seed)
    test_x = normalize(data.test_x, mean, std, device)
    test_y = data.test_y.to(device)
    if len(va_idx):
        val_x, val_y, val_is_test = normalize(data.train_x[va_idx], mean, std, device), y[va_idx].to(device), False
    else:  # as the write-ups without a split do: validate on the test set
        val_x, val_y, val_is_test = test_x, test_y, True
    return Prepared(loader, val_x, val_y, val_is_test, test_x, test_y, len(tr_idx))


# --------------------------------------------------------------------------- one run


def capped_phases(phases: list[Phase], epochs: int) -> int:
    return min(epochs, sum(p.epochs for p in phases))


def run_one(exp: Experiment, data: Cifar10, tracker: Tracker, opts: RunOptions, seed: int, echo=print) -> Outcome:
    device = resolve_device(opts.device)
    overrides = opts.overrides()
    chash = config_hash(exp, overrides, seed, data.fingerprint)
    run_name = exp.id if opts.repeats == 1 else f"{exp.id}-s{seed}"
    key = hashlib.sha256(f"{tracker.uri}|{tracker.experiment_name}|{chash}".encode()).hexdigest()[:20]
    lock = ConfigLock(key)
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
        return _train_run(exp, data, tracker, opts, seed, device, chash, run_name, resume.run_id if resume else None, echo)
    finally:
        lock.release()


def _train_run(exp, data, tracker, opts, seed, device, chash, run_name, resume_id, echo) -> Outcome:
    configure_backend(device)
    total_epochs = exp.train.epochs
    epochs = capped_phases(exp.train.phases, opts.epochs) if opts.epochs is not None else total_epochs
    capped = epochs < total_epochs or opts.max_train_images is not None
    prep = prepare_data(exp, data, seed, opts.max_train_images, device)

    torch.manual_seed(seed)  # weight init, dropout
    np.random.seed(seed)
    model = create_model(exp.model.name, **exp.model.args).to(device)
    n_params = count_params(model)
    loss_fn = loss_function(exp.train.loss)
    optimizer = build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr)

    if resume_id is None:
        commit = git_commit()
        tags = {
            f"{TAG}experiment_id": exp.id,
            f"{TAG}config_hash": chash,
            f"{TAG}seed": seed,
            f"{TAG}source": exp.source.seed,
            f"{TAG}capped": str(capped).lower(),
            f"{TAG}git_commit": commit,
            f"{TAG}version": __version__,
            f"{TAG}torch_version": torch.__version__,
            f"{TAG}device": device_name(device),
            f"{TAG}data_fingerprint": data.fingerprint,
            f"{TAG}data_dir": str(data.root),
            f"{TAG}published_accuracy": json.dumps(exp.published.test_accuracy),
            f"{TAG}assumed": ",".join(exp.assumed),
            "mlflow.note.content": f"{exp.title}. Source: {exp.source.site} ({exp.source.seed}).",
            # MLflow's own fields, so the UI's Source and git columns are filled
            "mlflow.source.name": "harness", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        }
        params = flatten(exp.training_dict())
        params.update({
            "params": n_params, "seed": seed, "epochs": epochs, "recipe_epochs": total_epochs,
            "precision": opts.precision, "data.n_train": prep.n_train, "data.n_val": 0 if prep.val_is_test else len(prep.val_x),
            "data.n_test": len(prep.test_x), "data.val_on": "test" if prep.val_is_test else "validation split",
            "override.epochs": opts.epochs if opts.epochs is not None else "none",
            "override.max_train_images": opts.max_train_images if opts.max_train_images is not None else "none",
            "published.test_accuracy": json.dumps(exp.published.test_accuracy),
        })
        resolved = exp.to_dict() | {"resolved": {"seed": seed, "overrides": opts.overrides(), "epochs": epochs, "config_hash": chash, "params": n_params}}
        run_id = tracker.start_run(run_name, tags, params, {"config.json": json.dumps(resolved, indent=2)})
    else:
        run_id = resume_id
        tracker.reopen(run_id)

    state_dir = state_root() / run_id
    state_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best_val, train_time = 0, float("inf"), 0.0
    ckpt_path, best_path = state_dir / "state.pt", state_dir / "best.pt"
    if resume_id is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng_cpu"])
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        start_epoch, best_val, train_time = ck["epoch"] + 1, ck["best_val"], ck["train_time"]
        # the kill may have come between checkpoint and logging: log that epoch if missing
        if ck["epoch"] not in tracker.logged_steps(run_id, "epoch_time_s"):
            tracker.log_metrics(run_id, ck["metrics"], ck["epoch"], ck["series"])
        echo(f"{run_name}: resuming run {run_id} after epoch {ck['epoch'] + 1}/{epochs}")
    elif resume_id is not None:
        echo(f"{run_name}: restarting run {run_id} from epoch 1 (no checkpoint)")

    steps = len(prep.train)
    bar = None
    try:
        if opts.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps * (epochs - start_epoch), desc=run_name, unit="step", dynamic_ncols=True, leave=False,
                       mininterval=0.5, disable=None)  # None: silent when stderr is not a terminal
        for epoch in range(start_epoch, epochs):
            phase = phase_of(exp.train.phases, epoch)
            set_lr(optimizer, lr_at(exp.train.phases, epoch, 0, steps))
            lr_fn = (lambda i, e=epoch: lr_at(exp.train.phases, e, i, steps)) if phase.schedule == "sgdr" else None
            last = [0]

            def on_log(step, loss, seen, e=epoch, t0=time.perf_counter()):
                if bar is not None:
                    bar.update(step - last[0])
                    last[0] = step
                    bar.set_postfix(epoch=f"{e + 1}/{epochs}", loss=f"{loss:.3f}", img_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")

            stats = train_one_epoch(model, prep.train.batches(epoch), steps, optimizer, loss_fn, lr_fn, opts.precision, on_log)
            train_time += stats.time_s
            val = evaluate(model, prep.val_x, prep.val_y, loss_fn, precision=opts.precision)
            metrics = {"train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
                       "lr": stats.lr, "epoch_time_s": stats.time_s, "epoch_images_per_s": stats.images / max(stats.time_s, 1e-9)}
            series = {"train_loss_step": [(epoch * steps + s, v) for s, v in stats.step_losses]}
            if exp.train.checkpoint == "best_val_loss" and val.loss <= best_val:  # `<=` as in the write-up
                best_val = val.loss
                atomic_save(model.state_dict(), best_path)
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state(),
                         "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None, "epoch": epoch,
                         "best_val": best_val, "train_time": train_time, "metrics": metrics, "series": series}, ckpt_path)
            tracker.log_metrics(run_id, metrics, epoch, series)
        if bar is not None:
            bar.close()
            bar = None

        if exp.train.checkpoint == "best_val_loss" and best_path.exists():
            model.load_state_dict(torch.load(best_path, map_location=device))
        test = evaluate(model, prep.test_x, prep.test_y, loss_fn, precision=opts.precision)
        _log_final(tracker, run_id, model, exp, data, prep, test, train_time, epochs, n_params)
        tracker.terminate(run_id, "FINISHED")
        shutil.rmtree(state_dir, ignore_errors=True)
        echo(f"{run_name}: test accuracy {test.acc:.2f}% (published {_fmt_pub(exp)}), train {train_time:.1f}s, run {run_id}")
        return Outcome(exp.id, seed, "finished", run_id, test.acc, train_time)
    except KeyboardInterrupt:
        try:
            tracker.terminate(run_id, "KILLED", "interrupted (Ctrl-C); run again to resume")
        except Exception as e:  # left RUNNING with no lock holder, it is still resumed next time
            echo(f"{run_name}: could not mark the run KILLED ({type(e).__name__}); run again to resume it")
        raise
    except DivergedError as e:
        tracker.terminate(run_id, "FAILED", f"diverged: {e}")
        shutil.rmtree(state_dir, ignore_errors=True)
        return Outcome(exp.id, seed, "failed", run_id, reason=f"diverged: {e}")
    except Exception as e:  # any other fault fails this run, not the whole run-all
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        tracker.terminate(run_id, "FAILED", reason)
        return Outcome(exp.id, seed, "failed", run_id, reason=reason)
    finally:
        if bar is not None:
            bar.close()


def _fmt_pub(exp: Experiment) -> str:
    acc = exp.published.test_accuracy
    return ", ".join(f"{a:.2f}%" for a in acc) if acc else "none"


def _log_final(tracker: Tracker, run_id: str, model, exp: Experiment, data: Cifar10, prep: Prepared, test, train_time: float, epochs: int, n_params: int) -> None:
    import pandas as pd
    from sklearn.metrics import confusion_matrix, f1_score

    from .plots import confusion_figure, loss_curve_figure, save_png

    y = prep.test_y.cpu().numpy()
    pred = test.preds.numpy()
    k = len(data.classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    per_class = [100.0 * cm[i, i] / cm[i].sum() if cm[i].sum() else float("nan") for i in range(k)]
    total_images = prep.n_train * epochs
    metrics = {"test_loss": test.loss, "test_acc": test.acc, "test_f1_macro": f1_score(y, pred, average="macro"),
               "test_f1_micro": f1_score(y, pred, average="micro"), "train_time_s": train_time,
               "images_per_s": total_images / max(train_time, 1e-9), "params": n_params}
    metrics.update({f"test_acc_{c}": a for c, a in zip(data.classes, per_class)})
    tracker.log_metrics(run_id, metrics, epochs)

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        pd.DataFrame(cm, index=data.classes, columns=data.classes).to_csv(t / "confusion_matrix.csv", index_label="true\\predicted")
        save_png(confusion_figure(cm, data.classes, f"{exp.id}: test confusion matrix"), t / "confusion_matrix.png")
        pd.DataFrame({"class": data.classes, "accuracy": per_class, "n": cm.sum(1)}).to_csv(t / "per_class_accuracy.csv", index=False)
        preds = pd.DataFrame({"label": y, "pred": pred})
        for i, c in enumerate(data.classes):
            preds[f"p_{c}"] = test.probs[:, i].numpy().round(6)
        preds.to_csv(t / "test_predictions.csv", index_label="index")
        hist_tr = tracker.metric_history(run_id, "train_loss")
        hist_va = tracker.metric_history(run_id, "val_loss")
        save_png(loss_curve_figure([s + 1 for s, _ in hist_tr], [v for _, v in hist_tr], [v for _, v in hist_va],
                                   f"{exp.id}: loss", "test" if prep.val_is_test else "validation"), t / "loss_curve.png")
        tracker.log_artifacts(run_id, t)
    model.eval()
    example = prep.test_x[:2].float().cpu().numpy()
    tracker.log_model(run_id, model.cpu(), example, [f"torch=={torch.__version__.split('+')[0]}"])


# --------------------------------------------------------------------------- many runs


def run_many(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, echo=print) -> list[Outcome]:
    outcomes = []
    for exp in experiments:
        for seed in range(opts.seed, opts.seed + opts.repeats):
            try:
                o = run_one(exp, data, tracker, opts, seed, echo)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # raised before a run existed: report it, go on with the rest
                o = Outcome(exp.id, seed, "failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
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
