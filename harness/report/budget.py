"""Which recipe for my time budget? Accuracy against cumulative training time, per epoch, from
each run's history; for a few budgets, the best accuracy reached within them."""

from __future__ import annotations

import numpy as np

from .mathstats import welch_p
from .rows import Row

BUDGETS_MIN = (1, 5, 15, 60)
ALPHA = 0.05


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
    times, accs = curve
    inside = accs[times <= budget_s]
    return float(inside.max()) if len(inside) else None


def budget_table(rows: list[Row], curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], budgets_min=BUDGETS_MIN) -> list[dict]:
    """For each budget: the recipe with the highest mean (over seeds) accuracy reached within it,
    the runner-up, and whether the gap is beyond seed noise (Welch over seeds, 2+ seeds each)."""
    out = []
    for minutes in budgets_min:
        scored = []
        for r in rows:
            per_seed = [best_within(c, 60 * minutes) for c in curves.get(r.key, [])]
            per_seed = [v for v in per_seed if v is not None]
            if per_seed:
                scored.append((float(np.mean(per_seed)), r.key, per_seed))
        scored.sort(reverse=True)
        entry = {"minutes": minutes, "best": None, "acc": None, "runner_up": None, "runner_acc": None, "p": None, "verdict": "no run fits"}
        if scored:
            entry.update(best=scored[0][1], acc=scored[0][0], n=len(scored[0][2]))
            entry["verdict"] = "only candidate"
        if len(scored) > 1:
            (_, _, sa), (b, key_b, sb) = scored[0], scored[1]
            entry.update(runner_up=key_b, runner_acc=b, p=welch_p(sa, sb))
            if entry["p"] is None:
                entry["verdict"] = "untested (1 seed; use --repeats for a test)"
            else:
                entry["verdict"] = "beats it beyond noise" if entry["p"] < ALPHA else "within noise"
        out.append(entry)
    return out
