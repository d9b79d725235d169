"""Which recipe for my time budget? Accuracy against cumulative training time, per epoch, from
each run's history; for a few budgets, what a user who stopped there would get.

Epochs are selected on held-out validation data only: a recipe with a validation split scores
its best validation epoch within the budget; a recipe that validates on the test set (as its
write-up does) scores its last epoch within the budget, since choosing its best epoch would be
choosing on the test set. The two are ranked apart, each entry saying which it is: a best
validation epoch scored on the split it was chosen on is not comparable with a test accuracy."""

from __future__ import annotations

import numpy as np

from .mathstats import welch_p
from .rows import Row

BUDGETS_MIN = (1, 5, 15, 60)
ALPHA = 0.05
MIN_SEEDS = 3  # as stats.MIN_SEEDS: seeds a side before "beats it" can be said

TEST_SET = "test set"
VAL_SPLIT = "validation split"
HELD_OUT = "best held-out validation epoch"
LAST = "last epoch within the budget (validates on the test set)"


def seed_curve(history: dict[str, list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative training seconds at the end of each epoch, validation accuracy then)."""
    times = dict(history.get("epoch_time_s", []))
    accs = dict(history.get("val_acc", []))
    epochs = sorted(set(times) & set(accs))
    return np.cumsum([times[e] for e in epochs]), np.array([accs[e] for e in epochs])


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds averaged epoch by epoch (over the epochs every seed has)."""
    n = min((len(t) for t, _ in curves), default=0)
    if n == 0:
        return np.array([]), np.array([])
    return np.mean([t[:n] for t, _ in curves], axis=0), np.mean([a[:n] for _, a in curves], axis=0)


def best_within(curve: tuple[np.ndarray, np.ndarray], budget_s: float) -> float | None:
    """The best validation accuracy within the budget: for held-out validation data only."""
    times, accs = curve
    inside = accs[times <= budget_s]
    return float(inside.max()) if len(inside) else None


def last_within(curve: tuple[np.ndarray, np.ndarray], budget_s: float) -> float | None:
    """The accuracy of the last epoch that ends within the budget (no selection)."""
    times, accs = curve
    inside = accs[times <= budget_s]
    return float(inside[-1]) if len(inside) else None


def held_out(row: Row) -> bool:
    return row.stats.get("val_on", "validation split") != "test"


def scored_on(row: Row) -> str:
    """The images a row's curve is scored on: the test set, or its validation split, named by
    the rule that draws it (fraction, random or stratified, per seed): rows whose splits are drawn
    alike are scored on the same images seed by seed, rows drawn otherwise are not."""
    if not held_out(row):
        return TEST_SET
    p = row.runs.iloc[0] if len(row.runs) else {}
    frac, rule = p.get("params.data.val_fraction"), p.get("params.data.val_split")
    try:
        return f"{VAL_SPLIT} ({float(frac):.0%}, {rule})" if rule else VAL_SPLIT
    except (TypeError, ValueError):
        return VAL_SPLIT


def budget_table(rows: list[Row], curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], budgets_min=BUDGETS_MIN) -> list[dict]:
    """For each budget and each kind of images scored on (the test set, a validation split drawn
    by one rule): the row with the highest mean (over seeds) accuracy a user stopping there would
    get, the runner-up on the same images, and whether the gap is beyond seed noise (Welch over
    seeds, MIN_SEEDS+ each). Kinds are ranked apart: a validation-split accuracy, of an epoch chosen
    on that very split, is not comparable with a test accuracy, nor with another split's."""
    out = []
    for minutes in budgets_min:
        by_kind: dict[str, list] = {}
        for r in rows:
            pick = best_within if held_out(r) else last_within
            per_seed = [pick(c, 60 * minutes) for c in curves.get(r.key, [])]
            per_seed = [v for v in per_seed if v is not None]
            if per_seed:
                by_kind.setdefault(scored_on(r), []).append((float(np.mean(per_seed)), r.key, per_seed))
        kinds = sorted(by_kind, key=lambda k: (k != TEST_SET, k))  # the test set first
        out.extend([budget_entry(minutes, k, by_kind[k]) for k in kinds] or [budget_entry(minutes, None, [])])
    return out


def budget_entry(minutes: int, kind: str | None, scored: list[tuple[float, str, list[float]]]) -> dict:
    """One budget's best and runner-up among rows scored on one kind of images."""
    scored = sorted(scored, key=lambda s: (-s[0], s[1]))
    selected = None if kind is None else LAST if kind == TEST_SET else HELD_OUT
    entry = {"minutes": minutes, "scored_on": kind, "selected": selected, "best": None, "acc": None,
             "n": None, "runner_up": None, "runner_acc": None, "runner_n": None, "p": None, "verdict": "no run fits"}
    if scored:
        entry.update(best=scored[0][1], acc=scored[0][0], n=len(scored[0][2]), verdict="only candidate")
    if len(scored) > 1:
        (_, _, sa), (b, key_b, sb) = scored[0], scored[1]
        entry.update(runner_up=key_b, runner_acc=b, runner_n=len(sb))
        if min(len(sa), len(sb)) < MIN_SEEDS:
            entry["verdict"] = f"untested: {min(len(sa), len(sb))} seed(s) on a side, {MIN_SEEDS} needed (--repeats {MIN_SEEDS})"
        else:
            entry["p"] = welch_p(sa, sb)
            entry["verdict"] = "beats it beyond seed noise" if entry["p"] is not None and entry["p"] < ALPHA else "within seed noise"
    return entry
