"""Time: `--budget` read from the command line, a seed's cost estimated, a round fitted into
the budget left (a run that cannot finish within it, by the estimate, is not started)."""

from __future__ import annotations

import re

from ..errors import UsageError
from ..executors.schedule import expected_work
from ..executors.schedule import plan as simulate
from ..recipes.spec import Experiment
from ..runs.job import RunOptions

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# before any seed of the loop finished: the suite's measured rate on 2 CPU cores (schedule.py)
DEFAULT_MACS_PER_S = 14e9
RUN_OVERHEAD_S = 3.0  # a run's fixed cost beyond training (claim, evaluation, final writes), roughly


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
    finished seeds; else its work (schedule.expected_work) at the rate the store's finished seeds
    of the other recipes show (calibrated), else at the suite's measured 2-core rate."""
    one = RunOptions(**{**opts.__dict__, "repeats": 1})
    work = {e.id: expected_work(e, train_images, one) for e in experiments}
    done = [(sum(walls[i]), work[i] * len(walls[i])) for i in work if walls.get(i)]
    rate = sum(w for _, w in done) / sum(t for t, _ in done) if done and sum(t for t, _ in done) > 0 else DEFAULT_MACS_PER_S
    return {i: (sum(walls[i]) / len(walls[i]) if walls.get(i) else work[i] / rate + RUN_OVERHEAD_S) for i in work}


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
