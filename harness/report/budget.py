"""Which recipe for my time budget? Accuracy against cumulative training time, per epoch, from
each run's history; for a few budgets, what a user who stopped there would get.

Epochs are selected on held-out validation data only: a recipe with a validation split scores
its best validation epoch within the budget; a recipe that validates on the test set (as its
write-up does) scores its last epoch within the budget, since choosing its best epoch would be
choosing on the test set. Each entry says which of the two it is."""

from __future__ import annotations

import numpy as np

from .mathstats import welch_p
from .rows import Row

BUDGETS_MIN = (1, 5, 15, 60)
ALPHA = 0.05
MIN_SEEDS = 3  # as stats.MIN_SEEDS: seeds a side before "beats it" can be said

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


def budget_table(rows: list[Row], curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], budgets_min=BUDGETS_MIN) -> list[dict]:
    """For each budget: the row with the highest mean (over seeds) accuracy a user stopping there
    would get, the runner-up, and whether the gap is beyond seed noise (Welch over seeds,
    MIN_SEEDS+ each, and both scored on the same images: a held-out validation split and the test
    set are not)."""
    out = []
    for minutes in budgets_min:
        scored = []
        for r in rows:
            pick = best_within if held_out(r) else last_within
            per_seed = [pick(c, 60 * minutes) for c in curves.get(r.key, [])]
            per_seed = [v for v in per_seed if v is not None]
            if per_seed:
                scored.append((float(np.mean(per_seed)), r.key, per_seed, HELD_OUT if held_out(r) else LAST))
        scored.sort(key=lambda s: (-s[0], s[1]))
        entry = {"minutes": minutes, "best": None, "acc": None, "runner_up": None, "runner_acc": None, "p": None, "verdict": "no run fits",
                 "selected": None, "runner_selected": None, "n": None, "runner_n": None}
        if scored:
            entry.update(best=scored[0][1], acc=scored[0][0], n=len(scored[0][2]), selected=scored[0][3])
            entry["verdict"] = "only candidate"
        if len(scored) > 1:
            (_, _, sa, _), (b, key_b, sb, sel_b) = scored[0], scored[1]
            entry.update(runner_up=key_b, runner_acc=b, runner_n=len(sb), runner_selected=sel_b)
            if scored[0][3] != sel_b:  # a validation split against the test set: accuracies on different images
                entry["verdict"] = "untested: measured on different images (one on its validation split, one on the test set)"
            elif min(len(sa), len(sb)) < MIN_SEEDS:
                entry["verdict"] = f"untested: {min(len(sa), len(sb))} seed(s) on a side, {MIN_SEEDS} needed (--repeats {MIN_SEEDS})"
            else:
                entry["p"] = welch_p(sa, sb)
                entry["verdict"] = "beats it beyond seed noise" if entry["p"] is not None and entry["p"] < ALPHA else "within seed noise"
        out.append(entry)
    return out
