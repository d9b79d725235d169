"""Is a difference real? Paired tests on the same test images, seed spread, Holm's correction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..tracking import TAG
from .rows import Row

BOOTSTRAP = 2000
ALPHA = 0.05


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired correctness: (b, c, two-sided p)."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    return b, c, float(p)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), resampling test images (in points of %)."""
    rng = np.random.default_rng(seed)
    d = correct_a.astype(float) - correct_b.astype(float)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    means = 100.0 * d[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_compare(a: Row, b: Row, preds: dict[str, pd.DataFrame]) -> dict:
    """a (the higher) against b on the same test images, first run of each, plus seed spread."""
    entry = {"best": a.key, "other": b.key, "diff": a.stats["mean"] - b.stats["mean"], "b": None, "c": None, "p": None, "ci": None}
    pa, pb = preds.get(a.runs["run_id"].iloc[0]), preds.get(b.runs["run_id"].iloc[0])
    same_data = a.runs[f"tags.{TAG}data_fingerprint"].iloc[0] == b.runs[f"tags.{TAG}data_fingerprint"].iloc[0]
    if pa is not None and pb is not None and same_data and len(pa) == len(pb) and (pa["label"].to_numpy() == pb["label"].to_numpy()).all():
        ca = (pa["pred"] == pa["label"]).to_numpy()
        cb = (pb["pred"] == pb["label"]).to_numpy()
        entry["b"], entry["c"], entry["p"] = mcnemar(ca, cb)
        entry["ci"] = paired_bootstrap(ca, cb)
    spread = max([s for s in (a.stats["std"], b.stats["std"]) if s is not None], default=None)
    entry["spread"] = spread
    real = entry["p"] is not None and entry["p"] < ALPHA
    if spread is not None and entry["diff"] < 2 * spread:
        real = False  # inside the seed-to-seed spread: not a ranking
    entry["verdict"] = "real" if real else ("within noise" if entry["p"] is not None or spread is not None else "untested")
    return entry


def ranked_rows(rows: list[Row]) -> list[Row]:
    """Uncapped rows by accuracy (capped ones only when nothing else exists)."""
    ranked = [r for r in rows if not r.capped] or rows
    return sorted(ranked, key=lambda r: -r.stats["mean"])


def compare_to_best(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    ranked = ranked_rows(rows)
    return [paired_compare(ranked[0], r, preds) for r in ranked[1:]]


def compare_neighbours(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    """Each rank against the next one down: where the ordering itself is inside the noise."""
    ranked = ranked_rows(rows)
    return [paired_compare(a, b, preds) for a, b in zip(ranked, ranked[1:])]


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names not dominated in (lower time, higher accuracy)."""
    front = set()
    for name, t, a in points:
        if not any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for _, t2, a2 in points):
            front.add(name)
    return front
