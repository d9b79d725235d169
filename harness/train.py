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

from .errors import DivergedError, HarnessError
from .spec import OptimizerSpec, Phase

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


def phase_of(phases: list[Phase], epoch: int) -> Phase:
    for p in phases:
        if epoch < p.epochs:
            return p
        epoch -= p.epochs
    return phases[-1]


def lr_at(phases: list[Phase], epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for a step. SGDR is fastai 0.7's CosAnneal with cycle_len=1:
    lr/2 * (1 + cos(pi * step / steps)), restarted at every epoch."""
    p = phase_of(phases, epoch)
    if p.schedule == "sgdr":
        return p.lr / 2 * (1 + math.cos(math.pi * step / steps_per_epoch))
    return p.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


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
) -> EpochStats:
    """One pass over `batches`. `lr_for_step(i)` is called only when the schedule varies
    within the epoch. Raises DivergedError on a non-finite loss."""
    model.train()
    device = next(model.parameters()).device
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
        loss.backward()
        optimizer.step()
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


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int = 1000, precision: str = "fp32") -> EvalResult:
    """Loss, accuracy and softmax probabilities over a resident tensor set.
    softmax(log_softmax(z)) == softmax(z), so probabilities are right for NLL models too."""
    model.eval()
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
