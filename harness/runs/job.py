"""The plain data of runs: options from the command line, one resolved job, its progress
through the epochs and its outcome (no behaviour, so every room below the runner can use it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.cifar_files import Cifar10
from ..recipes.spec import Experiment, Phase
from ..tracking import Tracker


@dataclass
class RunOptions:
    seed: int = 0
    repeats: int = 1
    epochs: int | None = None  # cap: follow the recipe's schedule, stop after N epochs
    max_train_images: int | None = None
    force: bool = False
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True  # tqdm bars on a terminal, one line per epoch elsewhere (logs, nohup, CI)
    bars: bool = True  # False: lines even on a terminal (several processes share it)
    threads: int | None = None  # intra-op threads; None: chosen per recipe (environment.choose_threads)
    max_threads: int | None = None  # at most this many (a Ray task's CPUs)
    together: str = "auto"  # a recipe's repeats as one stacked model: auto (where exact and measured faster), always (where exact), never
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0

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
    status: str  # finished | skipped | failed | resumable (stopped by a fault a rerun resumes)
    run_id: str | None = None
    test_acc: float | None = None
    train_time_s: float | None = None
    reason: str = ""


@dataclass
class Job:
    """Everything one run needs, resolved once."""

    exp: Experiment
    data: Cifar10
    tracker: Tracker
    opts: RunOptions
    seed: int
    device: torch.device
    chash: str
    run_name: str
    epochs: int
    echo: object = print
    threads: int = 1  # intra-op threads the run trains on (recorded as a param)
    conv: str = "onednn"  # the convolution implementation (environment.choose_conv; recorded)


def capped_phases(phases: list[Phase], epochs: int) -> int:
    return min(epochs, sum(p.epochs for p in phases))


@dataclass
class Progress:
    start_epoch: int = 0
    best_val: float = float("inf")
    train_time: float = 0.0
    best_weights: dict | None = None  # the best-validation weights, for recipes that keep them
    history: dict = field(default_factory=dict)  # epoch -> its metrics and series, kept in the checkpoint
