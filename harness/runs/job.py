"""The plain data of runs: options from the command line, one resolved job, its progress
through the epochs and its outcome (no behaviour, so every room below the runner can use it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.cifar_files import Cifar10
from ..recipes.spec import Experiment, Phase
from ..tracking import TAG, Tracker


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
    # --repeats auto: (name, value) tags each run it trains records (harness.repeats=auto, its
    # alpha and margin), so the report knows these seeds were chosen by looking; no part of the hash
    loop_tags: tuple[tuple[str, str], ...] = ()
    # the command that trained the run (tag harness.invocation, with its plan: plan()): a row whose
    # seeds came from more than one plan, or whose command ended short of its plan, may have had
    # their number chosen by looking (report/looked.py). A fresh id for each RunOptions made, so
    # runs trained from Python record their command too; "" records none (a run as recorded
    # before the tag: such runs count together as one earlier command)
    invocation: str = field(default_factory=lambda: new_invocation())

    def overrides(self) -> dict:
        """The overrides as given on the command line (the config hash of runs made before
        effective_overrides; see there)."""
        o = {}
        if self.epochs is not None:
            o["epochs"] = self.epochs
        if self.max_train_images is not None:
            o["max_train_images"] = self.max_train_images
        if self.precision != "fp32":
            o["precision"] = self.precision
        return o

    def plan(self) -> str:
        """What this command set out to train of each recipe (tag harness.plan): its seeds, fixed
        before any result could be read; "--repeats auto" where a loop chooses them. Two commands
        of one plan (a stopped command run again, two drivers sharing it) are one plan: the seeds
        they end with were fixed in advance. `--force` re-draws seeds already trained: its plan
        is its own (the invocation's), never the same as an earlier command's."""
        if self.loop_tags:
            return "--repeats auto"
        seeds = f"seeds {self.seed}-{self.seed + self.repeats - 1}"
        return f"{seeds} --force {self.invocation}" if self.force else seeds


def new_invocation() -> str:
    """An id for one command: its UTC start and 8 random hex digits (sorts by time, never repeats)."""
    import datetime as dt
    import uuid

    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def effective_overrides(opts: RunOptions, recipe_epochs: int, train_images: int) -> dict:
    """What changes the result beyond the spec and the seed (recorded and hashed): `--epochs`
    at or above the recipe's length and `--max-train-images` at or above the training split's
    size train exactly what the recipe does, so they are no cap and no new configuration."""
    o = {}
    if opts.epochs is not None and opts.epochs < recipe_epochs:
        o["epochs"] = opts.epochs
    if opts.max_train_images is not None and opts.max_train_images < train_images:
        o["max_train_images"] = opts.max_train_images
    if opts.precision != "fp32":
        o["precision"] = opts.precision
    return o


def legacy_aliases(recorded: list[tuple[dict, dict]], overrides: dict, recipe_epochs: int, train_images: int, hash_of) -> tuple[str, ...]:
    """The config hashes of finished runs recorded before effective_overrides that trained what
    `overrides` trains (`recorded`: their (tags, params), of this experiment, seed and data set;
    `hash_of(overrides)`: the hash such a run would carry). An old run hashed its overrides as
    given (`--epochs 5` on a 2-epoch recipe); its params say which, so a later command that trains
    the same (no flag, or `--epochs 9`) finds it."""
    out = []
    for tags, params in recorded:
        given = {}
        for name in ("epochs", "max_train_images"):
            v = params.get(f"override.{name}", "none")
            if v not in ("none", None):
                given[name] = int(v)
        if params.get("precision", "fp32") != "fp32":
            given["precision"] = params["precision"]
        opts = RunOptions(epochs=given.get("epochs"), max_train_images=given.get("max_train_images"), precision=given.get("precision", "fp32"))
        h = tags.get(f"{TAG}config_hash")
        if h and h == hash_of(given) and effective_overrides(opts, recipe_epochs, train_images) == overrides and h not in out:
            out.append(h)
    return tuple(out)


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
    overrides: dict = field(default_factory=dict)  # effective_overrides: what the hash and the capped tag follow
    train_images: int = 0  # the training split's size before any cap
    legacy_hashes: tuple[str, ...] = ()  # the same configuration as hashed before effective_overrides

    @property
    def capped(self) -> bool:
        return "epochs" in self.overrides or "max_train_images" in self.overrides


def capped_phases(phases: list[Phase], epochs: int) -> int:
    return min(epochs, sum(p.epochs for p in phases))


@dataclass
class Progress:
    start_epoch: int = 0
    best_val: float = float("inf")
    train_time: float = 0.0
    best_weights: dict | None = None  # the best-validation weights, for recipes that keep them
    scaler: dict | None = None  # fp16's loss-scaler state (its scale and growth counter)
    history: dict = field(default_factory=dict)  # epoch -> its metrics and series, kept in the checkpoint
