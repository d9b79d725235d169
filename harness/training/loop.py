"""The training loop as plain functions with explicit arguments (pytorch/examples style).

Hot-path rules: no host sync per step (losses and correct counts accumulate on the device
and are read ~100 times per epoch), learning rate set only when it changes, foreach
optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DivergedError, HarnessError
from ..recipes.spec import OptimizerSpec, Phase

LOG_POINTS_PER_EPOCH = 100


# --------------------------------------------------------------------------- recipe pieces


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # "nll" pairs with networks that already end in log_softmax, as the write-ups do
    return {"cross_entropy": F.cross_entropy, "nll": F.nll_loss}[name]


def build_optimizer(model: nn.Module, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay, fused=True)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay, fused=True)
    raise HarnessError(f"unknown optimizer {spec.name!r} (known: sgd, adam)")


def phase_position(phases: list[Phase], epoch: int) -> tuple[int, int]:
    """(index of the phase that `epoch` belongs to, epoch number within that phase)."""
    for i, p in enumerate(phases):
        if epoch < p.epochs:
            return i, epoch
        epoch -= p.epochs
    return len(phases) - 1, epoch + phases[-1].epochs


def phase_of(phases: list[Phase], epoch: int) -> Phase:
    return phases[phase_position(phases, epoch)[0]]


def starts_phase(phases: list[Phase], epoch: int) -> bool:
    """Whether `epoch` is the first epoch of a phase after the first (a new fastai fit() call)."""
    i, within = phase_position(phases, epoch)
    return i > 0 and within == 0


def lr_at(phases: list[Phase], epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for a step. SGDR is fastai 0.7's CosAnneal with cycle_len=1 (sgdr.py):
    lr/2 * (1 + cos(pi * step / steps)), restarted at every epoch, except that while the fit
    call's iteration counter is below nb/20 (nb = steps per cycle) the rate is lr/100. That
    counter (LR_Updater.iteration) starts at 0 in on_train_begin and is never reset per
    cycle, so the warm-up opens the phase's first epoch only; the cosine still counts those
    steps (cycle_iter advances during the warm-up)."""
    i, within = phase_position(phases, epoch)
    p = phases[i]
    if p.schedule == "sgdr":
        if within == 0 and step < steps_per_epoch / 20:
            return p.lr / 100
        return p.lr / 2 * (1 + math.cos(math.pi * step / steps_per_epoch))
    return p.lr


def clamp_adam_steps(optimizer: torch.optim.Optimizer, limit: int, reset_to: int) -> None:
    """cs598's workaround, as written: `if state['step'] >= limit: state['step'] = reset_to`
    for every parameter, before the step (current PyTorch keeps `step` as a tensor)."""
    for state in optimizer.state.values():
        step = state.get("step")
        if step is not None and float(step) >= limit:
            if torch.is_tensor(step):
                step.fill_(reset_to)
            else:
                state["step"] = reset_to


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (None otherwise): fp16 gradients below ~6e-8 flush to zero, so the loss
    is scaled up before backward and the gradients unscaled before the step; a step whose
    gradients overflowed is skipped and the scale lowered. bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# --------------------------------------------------------------------------- loop


@dataclass
class EpochStats:
    loss: float
    acc: float  # percent, on the (augmented) training batches as they were trained
    images: int
    time_s: float
    lr: float
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # (step within epoch, mean loss since last point)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    lr_for_step: Callable[[int], float] | None = None,
    precision: str = "fp32",
    on_log: Callable[[int, float, int], None] | None = None,
    before_step: Callable[[], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """One pass over `batches`. `lr_for_step(i)` is called only when the schedule varies
    within the epoch; `before_step()` between backward and the optimizer step (a recipe's
    optimizer-state quirk). fp16 scales the loss (`scaler`, kept across epochs by the caller;
    a new one when none is given). Raises DivergedError on a non-finite loss."""
    model.train()
    device = next(model.parameters()).device
    if scaler is None:
        scaler = grad_scaler(device, precision)
    every = max(1, steps // LOG_POINTS_PER_EPOCH)
    # per step we only keep references (no extra kernels); reductions run at the log points
    win_losses: list[torch.Tensor] = []
    win_out: list[torch.Tensor] = []
    win_y: list[torch.Tensor] = []
    totals = {"loss": 0.0, "correct": 0, "seen": 0, "batches": 0}
    points: list[tuple[int, float]] = []

    def flush(i: int) -> None:
        # the only host sync: ~100 per epoch
        w = torch.stack(win_losses).sum().item()
        k = len(win_losses)
        totals["correct"] += (torch.cat(win_out).argmax(1) == torch.cat(win_y)).sum().item()
        totals["seen"] += sum(len(t) for t in win_y)
        win_losses.clear(), win_out.clear(), win_y.clear()
        if not math.isfinite(w):
            raise DivergedError(f"loss became {w / k} at epoch step {i}")
        totals["loss"] += w
        totals["batches"] += k
        points.append((i, w / k))
        if on_log:
            on_log(i + 1, w / k, totals["seen"])

    last_lr = optimizer.param_groups[0]["lr"]
    i = -1
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if lr_for_step is not None:
            last_lr = lr_for_step(i)
            set_lr(optimizer, last_lr)
        with autocast_context(device, precision):
            out = model(x)
            loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if before_step is not None:
                before_step()
            scaler.step(optimizer)  # unscales first; skips the step if a gradient overflowed
            scaler.update()
        win_losses.append(loss.detach())
        win_out.append(out.detach())
        win_y.append(y)
        if len(win_losses) == every:
            flush(i)
    if win_losses:  # the epoch's tail, whatever `steps` said
        flush(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    # mean of batch losses (cs598's running_loss / len(trainloader)); equal to the per-image
    # mean except for a smaller last batch
    mean_loss = totals["loss"] / max(totals["batches"], 1)
    return EpochStats(mean_loss, 100.0 * totals["correct"] / max(totals["seen"], 1), totals["seen"], elapsed, last_lr, points)


@dataclass
class EvalResult:
    loss: float
    acc: float  # percent
    preds: torch.Tensor
    probs: torch.Tensor


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, mode: str):
    """`eval`: the standard protocol. `train`: as a write-up that never calls net.eval() measured
    (dropout active, BatchNorm on each batch's own statistics); the running statistics that
    such passes update are put back afterwards, so the eval-mode figure is not disturbed."""
    if mode == "eval":
        model.eval()
        yield
        return
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches_tracked" in k}
    model.train()
    try:
        yield
    finally:
        if saved:
            model.load_state_dict(saved, strict=False)
        model.eval()  # as after an eval-mode evaluation: training puts it back in train mode


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int = 1000, precision: str = "fp32",
             mode: str = "eval") -> EvalResult:
    """Loss, accuracy and softmax probabilities over a resident tensor set, in batches of
    `batch_size` (which matters in `train` mode). softmax(log_softmax(z)) == softmax(z), so
    probabilities are right for NLL models too."""
    with evaluation_mode(model, mode):
        return _evaluate(model, x, y, loss_fn, batch_size, precision)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int, precision: str) -> EvalResult:
    device = x.device
    total = torch.zeros((), device=device)
    probs = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with autocast_context(device, precision):
            out = model(xb).float()
        total += loss_fn(out, yb, reduction="sum")
        probs.append(out.softmax(1))
    p = torch.cat(probs).cpu()
    preds = p.argmax(1)
    loss = total.item() / max(len(x), 1)
    acc = 100.0 * (preds == y.cpu()).float().mean().item() if len(x) else float("nan")
    return EvalResult(loss, acc, preds, p)
