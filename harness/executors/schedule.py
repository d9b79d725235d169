"""In what order a suite's runs start, and which start side by side.

Longest first, so the longest run never starts last: a suite on a few cores finishes when its
longest run does. Started in catalogue order (alphabetical), the 50-epoch VGG began first by the
luck of its name; a user's own long recipe named `zz-...` would begin after every other run, on
the cores they left idle. Every executor (one process, `--jobs`, Ray) takes the experiments in
this order; the order changes nothing a run records (its configuration, hash and thread count do
not depend on it).

Side by side (`--jobs`): each run trains on the threads its recipe and the machine chose when it
starts (environment.choose_threads; never more, never fewer), so a run of T threads takes T of the
machine's cores until it ends. The pool starts, whenever cores are free, the longest waiting run
that fits in them (`pick`): a big recipe gets its whole cores from the start, the one-thread
recipes pack beside each other, and the cores are never oversubscribed (OpenMP threads on busy
cores wait on each other: see environment.SMALL_STEP_MACS). `plan` simulates the same rule, for
tests and for tests/measure_suite.py's estimates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..recipes.network import build_model
from ..recipes.spec import Experiment
from ..runs.job import RunOptions, capped_phases
from ..training.environment import choose_threads, macs_per_image, resolve_device

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


def run_threads(exp: Experiment, opts: RunOptions) -> int:
    """The intra-op threads a run of `exp` trains on: the same choice one_run.build makes (the
    recipe, the machine, `--threads`, a Ray task's CPUs), made here before it starts."""
    model = build_model(exp)
    return min(choose_threads(model, exp.train.batch_size, resolve_device(opts.device), opts.threads), opts.max_threads or 1 << 30)


def width(threads: int, cores: int) -> int:
    """The cores a run of `threads` occupies: a run pinned wider than the machine takes all of it."""
    return max(1, min(threads, cores))


def run_width(exp: Experiment, opts: RunOptions, cores: int) -> int:
    """The cores a run of `exp` holds in the pool: its threads' on the CPU; one on a GPU, whose
    runs keep their CPU threads mostly waiting (`--jobs N` alone limits how many share it)."""
    if resolve_device(opts.device).type != "cpu":
        return 1
    return width(run_threads(exp, opts), cores)


def pick(queue: Sequence[int], widths: Mapping[int, int] | Sequence[int], free: int) -> int | None:
    """The run to start now: the first of `queue` (longest first) whose width fits in the `free`
    cores, else None. A wide run waiting behind narrow ones starts once enough of them ended."""
    for i in queue:
        if widths[i] <= free:
            return i
    return None


@dataclass(frozen=True)
class Placed:
    run: int
    start: float
    end: float
    cores: int


def plan(durations: Sequence[float], widths: Sequence[int], cores: int, jobs: int | None = None) -> list[Placed]:
    """The pool's schedule, simulated: runs 0..n-1 queued in that order (longest first), each
    taking `durations[i]` on `widths[i]` cores; at every start or end, `pick` starts what fits,
    at most `jobs` runs at once. Each run's placement, in order of start."""
    jobs = jobs or cores
    queue, running, placed, t = list(range(len(durations))), [], [], 0.0
    while queue or running:
        while len(running) < jobs:
            i = pick(queue, widths, cores - sum(widths[r] for r, _ in running))
            if i is None:
                break
            queue.remove(i)
            running.append((i, t + durations[i]))
            placed.append(Placed(i, t, t + durations[i], widths[i]))
        t = min(end for _, end in running)
        running = [(r, end) for r, end in running if end > t]
    return placed
