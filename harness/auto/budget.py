"""Time: `--budget` read from the command line, a seed's cost estimated, a round fitted into
the budget left (a run that cannot finish within it, by the estimate, is not started)."""

from __future__ import annotations

import math
import re

from ..errors import UsageError
from ..executors.schedule import expected_work
from ..executors.schedule import plan as simulate
from ..recipes.spec import Experiment
from ..runs.job import RunOptions

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# before any seed of the loop finished: work units (schedule.expected_work: a step's arithmetic
# counted 3 times, forward and both backward passes) per second on 2 CPU cores, as the suite
# measured them: cs598-vgg-bn-aug 1.09e14 in 2,238 s and medium-vgg-bn 5.2e13 in 1,109 s (48 and
# 47 G/s), skl-cnn's batch-4 steps 30 G/s; a little under, so a first estimate errs long
DEFAULT_MACS_PER_S = 40e9
RUN_OVERHEAD_S = 3.0  # a run's fixed cost beyond training (claim, evaluation, final writes), until measured
# an untimed recipe's estimate times this until its first seed is timed: priced from the other
# recipes' walls (leave-one-out on the main job's real walls, 2 cores) the estimate fell to 0.70
# of the wall, and a budget would start a run it then overran
UNTIMED_MARGIN = 1.5


def parse_budget(text: str | None) -> float | None:
    """'2h', '30m', '90s', '1h30m' -> seconds; None -> no budget."""
    if text is None:
        return None
    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", t)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd])", "", t).strip():
        raise UsageError(f"--budget {text!r}: give a duration such as 2h, 30m, 90s or 1h30m")
    seconds = sum(float(v) * UNITS[u] for v, u in parts)
    if seconds <= 0:
        raise UsageError(f"--budget {text!r}: must be more than zero")
    return seconds


def fmt_duration(seconds: float) -> str:
    s = int(round(max(seconds, 0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def seed_costs(experiments: list[Experiment], train_images: int, opts: RunOptions, walls: dict[str, list[float]]) -> dict[str, float]:
    """Seconds a further seed of each recipe is expected to take: the mean wall time of its
    finished seeds (`walls`: timed on the device the loop trains on, timed_here); else a run's
    fixed cost plus its work (schedule.expected_work) at a rate, both calibrated on the store's
    finished seeds of the other recipes (calibrate), times UNTIMED_MARGIN (the model's error
    across recipes: a budget must not start a seed it will overrun)."""
    one = RunOptions(**{**opts.__dict__, "repeats": 1})
    work = {e.id: expected_work(e, train_images, one) for e in experiments}
    done = {i: (sum(walls[i]) / len(walls[i]), work[i]) for i in work if walls.get(i)}
    out = {}
    for i in work:
        if walls.get(i):
            out[i] = done[i][0]
        else:
            fixed, rate = calibrate(done, work[i])
            out[i] = UNTIMED_MARGIN * (work[i] / rate + fixed)
    return out


def calibrate(done: dict[str, tuple[float, float]], work: float | None = None) -> tuple[float, float]:
    """(a run's fixed seconds, work units a second for a recipe of `work` units) from finished
    recipes' (mean wall s, work). The fixed cost (start, claim, evaluation, final writes): the
    wall of the recipe with least work, less that work at the default rate. The rate: that of
    the timed recipe nearest in work (log scale; None: the largest) among those whose training
    takes longer than the fixed cost, on its time beyond the least fixed cost any timed recipe
    allows; none yet: the default. (A rate taken on whole walls of the tiny recipes a loop trains
    first, mostly fixed cost, put a VGG at 30x its time and left it out of every budget. A rate
    taken beyond the first fixed cost, pooled over recipes, made a tiny recipe that trains
    slower than the default rate, its slow training counted as fixed cost, shrink the time of
    the others' training: a VGG of 2,274 s priced at 278 s, started under a budget it overran.)"""
    if not done:
        return RUN_OVERHEAD_S, DEFAULT_MACS_PER_S
    small = min(done, key=lambda i: done[i][1])
    fixed = max(0.0, done[small][0] - done[small][1] / DEFAULT_MACS_PER_S)
    floor = max(0.0, min(w - wk / DEFAULT_MACS_PER_S for w, wk in done.values()))  # each recipe's fixed cost at the default rate: the least
    big = [(wk / (w - floor), wk) for w, wk in done.values() if wk > 0 and wk / DEFAULT_MACS_PER_S >= fixed and w > floor]
    if not big:
        return fixed, DEFAULT_MACS_PER_S
    if work is None:
        return fixed, max(big, key=lambda b: b[1])[0]
    return fixed, min(big, key=lambda b: (abs(math.log(b[1] / work)) if work > 0 else 0.0, b[0]))[0]


def timed_here(seeds: dict, device: str | None) -> dict[str, list[float]]:
    """Each recipe's finished seeds' wall times (`seeds`: recipe -> state.Seeds) that price a
    further seed on `device`: its harness.device name (`cuda:NVIDIA H100`), or a device type alone
    (`cuda`, `cpu`: Ray's workers, whose machines the driver does not know, only whether a task
    asks for a GPU); None: any. A seed timed on another kind of machine (a GPU's seeds priced on a
    CPU, 10-50x short, or the reverse) says nothing of its cost here."""
    return {i: [w for k, w in s.wall.items() if w == w and _on(s.device.get(k), device)] for i, s in seeds.items()}


def _on(recorded: str | None, device: str | None) -> bool:
    if device is None:
        return True
    if ":" in device:
        return recorded == device
    return isinstance(recorded, str) and recorded.split(":", 1)[0] == device


def round_time(runs: list[str], cost: dict[str, float], workers: int, widths: dict[str, int] | None = None, cores: int = 0) -> float:
    """A round's estimated wall time: `runs` in that order on `workers` slots, each to the slot
    free first; with `widths` (the `--jobs` pool: recipe -> cores a run's threads hold,
    schedule.run_width) the pool's own schedule simulated (schedule.plan), at most `workers` at
    once within `cores`, so two runs that each need every core take twice as long, not once."""
    if not runs:
        return 0.0
    if widths:
        return max(p.end for p in simulate([cost[r] for r in runs], [widths[r] for r in runs], max(cores, max(widths[r] for r in runs)), workers))
    free = [0.0] * max(1, workers)
    for r in runs:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += cost[r]
    return max(free)


def fit_round(plan: list[str], cost: dict[str, float], workers: int, left_s: float | None, widths: dict[str, int] | None = None,
              cores: int = 0) -> tuple[list[str], float]:
    """The runs of `plan` (in priority order) that finish within `left_s` when started in that
    order (round_time), and the round's estimated wall time."""
    kept: list[str] = []
    for r in plan:
        if left_s is not None and round_time(kept + [r], cost, workers, widths, cores) > left_s:
            continue
        kept.append(r)
    return kept, round_time(kept, cost, workers, widths, cores)


def wave(kept: list[str], cost: dict[str, float], workers: int, most_s: float, widths: dict[str, int] | None = None,
         cores: int = 0) -> tuple[list[str], float]:
    """The longest start of `kept` whose estimated wall time is within `most_s` (at least one run
    a worker): a round cut short so the next one starts from recalibrated costs, with the budget
    checked again, rather than overshooting it on a first estimate."""
    out, eta = kept[: max(1, workers)], round_time(kept[: max(1, workers)], cost, workers, widths, cores)
    for k in range(len(out) + 1, len(kept) + 1):
        t = round_time(kept[:k], cost, workers, widths, cores)
        if t > most_s:
            break
        out, eta = kept[:k], t
    return out, eta
