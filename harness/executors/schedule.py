"""In what order a suite's runs start: longest first, so the longest run never starts last.

A suite on a few cores finishes when its longest run does. Started in catalogue order
(alphabetical), the 50-epoch VGG began first by the luck of its name; a user's own long recipe
named `zz-...` would begin after every other run, on the cores they left idle. Every executor
(one process, `--jobs`, Ray) takes the experiments in this order; the order changes nothing a
run records (its configuration and hash do not depend on it).
"""

from __future__ import annotations

import math

from ..recipes.network import build_model
from ..recipes.spec import Experiment
from ..runs.job import RunOptions, capped_phases
from ..training.environment import macs_per_image

# A training step costs about three forward passes of arithmetic (forward, then the gradients
# of the inputs and of the weights), plus a fixed cost of its own (dispatch, optimizer, batch
# assembly) that dominates the tiny batch-4 steps. On 2 CPU cores the suite measured 13-15 G
# multiply-accumulates per second for the VGGs (cs598-vgg-bn-aug 36 T in 2,713 s, medium-vgg-bn
# 17 T in 1,109 s) and ~3 ms per step beyond the arithmetic for skl-cnn@4 (229 s for 25,860
# steps of 76 M): that fixed cost is worth about 40 M multiply-accumulates.
STEP_PASSES = 3
STEP_FIXED_MACS = 40e6


def expected_work(exp: Experiment, train_images: int, opts: RunOptions) -> float:
    """The run's training work in multiply-accumulate equivalents: steps x (arithmetic per
    step + a step's fixed cost), after the run's caps (`--epochs`, `--max-train-images`)."""
    epochs = capped_phases(exp.train.phases, opts.epochs) if opts.epochs is not None else exp.train.epochs
    images = int(train_images * (1 - exp.data.val_fraction))
    if opts.max_train_images is not None:
        images = min(images, opts.max_train_images)
    steps = epochs * math.ceil(max(images, 1) / exp.train.batch_size)
    model = build_model(exp)
    per_step = STEP_PASSES * macs_per_image(model) * exp.train.batch_size + STEP_FIXED_MACS
    return steps * per_step * opts.repeats


def longest_first(experiments: list[Experiment], train_images: int, opts: RunOptions) -> list[Experiment]:
    """The experiments by expected training work, largest first (ties: catalogue order)."""
    work = {exp.id: expected_work(exp, train_images, opts) for exp in experiments}
    return sorted(experiments, key=lambda e: -work[e.id])
