"""Which recipe for my time budget? Accuracy against cumulative training time, per epoch, from
each run's history; for a few budgets, what a user who stopped there would get on images that did
not choose the epoch.

A recipe that validates on the test set (as its write-up does) scores its last epoch within the
budget (choosing its best epoch would be choosing on the test set). A recipe with a validation
split chooses its best validation epoch within the budget and scores that epoch's test accuracy
(`test_acc_epoch`, recorded each epoch): both are test accuracies of an epoch the test set did not
choose, ranked together. Runs recorded before `test_acc_epoch` existed only have the validation
accuracy of the epoch it chose, which is biased upward (the maximum of many noisy epochs: a recipe
with many cheap epochs gains most); such rows are ranked apart, marked so, never beside the test set.
Times are only compared on one device (build.py passes the rows timed on it)."""

from __future__ import annotations

import numpy as np

from .mathstats import holm_array, welch_matrix, welch_p
from .looked import LOOKED
from .rows import Row

BUDGETS_MIN = (1, 5, 15, 60)
ALPHA = 0.05
MIN_SEEDS = 3  # as stats.MIN_SEEDS: seeds a side before "beats it" can be said

TEST_SET = "test set"
VAL_SPLIT = "validation split"
HELD_OUT = "best validation epoch, scored on the same split (biased upward: recorded before test_acc_epoch)"
CHOSEN_ON_VAL = "best validation epoch within the budget, its test accuracy"
LAST = "last epoch within the budget (validates on the test set)"
METRICS = ("epoch_time_s", "val_acc", "test_acc_epoch")  # the histories a curve reads


def seed_curve(history: dict[str, list[tuple[int, float]]]) -> tuple:
    """(cumulative training seconds at the end of each epoch, validation accuracy then, and
    where every one of those epochs recorded it, their test accuracy `test_acc_epoch`)."""
    times = dict(history.get("epoch_time_s", []))
    accs = dict(history.get("val_acc", []))
    tests = dict(history.get("test_acc_epoch", []))
    epochs = sorted(set(times) & set(accs))
    curve = (np.cumsum([times[e] for e in epochs]), np.array([accs[e] for e in epochs]))
    return (*curve, np.array([tests[e] for e in epochs])) if epochs and all(e in tests for e in epochs) else curve


def mean_curve(curves: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds averaged epoch by epoch (over the epochs every seed has): (time, validation accuracy)."""
    n = min((len(c[0]) for c in curves), default=0)
    if n == 0:
        return np.array([]), np.array([])
    return np.mean([c[0][:n] for c in curves], axis=0), np.mean([c[1][:n] for c in curves], axis=0)


def best_within(curve: tuple, budget_s: float) -> float | None:
    """The best validation accuracy within the budget (scored on the split that chose it: biased upward)."""
    times, accs = curve[0], curve[1]
    inside = accs[times <= budget_s]
    return float(inside.max()) if len(inside) else None


def chosen_within(curve: tuple, budget_s: float) -> float | None:
    """The test accuracy of the epoch with the best validation accuracy within the budget (the
    first such epoch): chosen on the validation split, scored on the test set."""
    times, accs, tests = curve
    inside = np.flatnonzero(times <= budget_s)
    return float(tests[inside[np.argmax(accs[inside])]]) if len(inside) else None


def last_within(curve: tuple, budget_s: float) -> float | None:
    """The accuracy of the last epoch that ends within the budget (no selection)."""
    times, accs = curve[0], curve[1]
    inside = accs[times <= budget_s]
    return float(inside[-1]) if len(inside) else None


def held_out(row: Row) -> bool:
    return row.stats.get("val_on", "validation split") != "test"


def honest(row: Row, curves: list[tuple]) -> bool:
    """Whether every seed of a row with a validation split recorded its per-epoch test accuracy."""
    return bool(curves) and all(len(c) == 3 for c in curves)


def scored_on(row: Row, curves: list[tuple] | None = None) -> str:
    """The images a row's curve is scored on: the test set, or its validation split, named by
    the rule that draws it (fraction, random or stratified, per seed): rows whose splits are drawn
    alike are scored on the same images seed by seed, rows drawn otherwise are not."""
    if not held_out(row) or honest(row, curves or []):
        return TEST_SET
    p = row.runs.iloc[0] if len(row.runs) else {}
    frac, rule = p.get("params.data.val_fraction"), p.get("params.data.val_split")
    try:
        return f"{VAL_SPLIT} ({float(frac):.0%}, {rule})" if rule else VAL_SPLIT
    except (TypeError, ValueError):
        return VAL_SPLIT


def pick(row: Row, curves: list[tuple]) -> tuple:
    """(how a row's epoch within a budget is taken and scored, the function that does it)."""
    if not held_out(row):
        return LAST, last_within
    return (CHOSEN_ON_VAL, chosen_within) if honest(row, curves) else (HELD_OUT, best_within)


def budget_table(rows: list[Row], curves: dict[str, list[tuple]], budgets_min=BUDGETS_MIN, looked: frozenset[str] | set[str] = frozenset(),
                 settle: str = "") -> list[dict]:
    """For each budget and each kind of images scored on (the test set; a validation split drawn
    by one rule, for runs recorded before test_acc_epoch): the row with the highest mean (over
    seeds) accuracy a user stopping there would get, the runner-up on the same images, and whether
    the gap is beyond seed noise (Welch over seeds, MIN_SEEDS+ each, Holm over every pair of rows
    ranked at that budget: the best and runner-up are chosen by their means). `looked`: rows whose
    seed counts were chosen by looking (looked.looked_rows), whose Welch test is not valid;
    `settle`: the command that trains more seeds (looked.auto_command)."""
    out = []
    for minutes in budgets_min:
        by_kind: dict[str, list] = {}
        for r in rows:
            cs = curves.get(r.key, [])
            how, fn = pick(r, cs)
            per_seed = [v for v in (fn(c, 60 * minutes) for c in cs) if v is not None]
            if per_seed:
                by_kind.setdefault(scored_on(r, cs), []).append((float(np.mean(per_seed)), r.key, per_seed, how))
        kinds = sorted(by_kind, key=lambda k: (k != TEST_SET, k))  # the test set first
        out.extend([budget_entry(minutes, k, by_kind[k], looked, settle) for k in kinds] or [budget_entry(minutes, None, [])])
    return out


def budget_entry(minutes: int, kind: str | None, scored: list[tuple], looked: frozenset[str] | set[str] = frozenset(), settle: str = "") -> dict:
    """One budget's best and runner-up among rows scored on one kind of images. Where either was
    chosen by looking (`looked`), no p-value: its pairs count as p = 1 in the budget's Holm family
    (as stats.pair_pvalues), and the verdict says the fixed-n test does not hold (looked.LOOKED)."""
    scored = sorted(scored, key=lambda s: (-s[0], s[1]))
    entry = {"minutes": minutes, "scored_on": kind, "selected": None, "best": None, "acc": None, "n": None, "runner_up": None,
             "runner_acc": None, "runner_n": None, "p": None, "p_holm": None, "verdict": "no run fits"}
    if scored:
        entry.update(best=scored[0][1], acc=scored[0][0], n=len(scored[0][2]), verdict="only candidate",
                     selected=scored[0][3] if len(scored[0]) > 3 else (LAST if kind == TEST_SET else HELD_OUT))
    if len(scored) > 1:
        (_, key_a, sa, *_), (b, key_b, sb, *_) = scored[0], scored[1]
        entry.update(runner_up=key_b, runner_acc=b, runner_n=len(sb))
        if min(len(sa), len(sb)) < MIN_SEEDS:
            entry["verdict"] = f"untested: {min(len(sa), len(sb))} seed(s) on a side, {MIN_SEEDS} needed ({settle or f'--repeats {MIN_SEEDS}'})"
        elif key_a in looked or key_b in looked:
            entry["verdict"] = LOOKED
        else:
            entry["p"] = welch_p(sa, sb)
            # the family: every pair of rows Welch can test at this budget (the best and the runner-up,
            # both measured, are its first two: their pair is the first of the upper triangle); a pair
            # with a row chosen by looking counts as p = 1, the family keeping its size
            measured = [s for s in scored if len(s[2]) >= MIN_SEEDS]
            p = welch_matrix([np.asarray(s[2], dtype=float) for s in measured])
            chosen = np.array([s[1] in looked for s in measured])
            p[chosen[:, None] | chosen[None, :]] = 1.0
            adj = holm_array(p[np.triu_indices(len(measured), 1)])
            entry["p_holm"] = None if np.isnan(adj[0]) else float(adj[0])
            entry["verdict"] = "beats it beyond seed noise" if entry["p_holm"] is not None and entry["p_holm"] < ALPHA else "within seed noise"
    return entry
