"""Statistics as pure functions on arrays: paired tests on the same test images, a
confidence interval over seeds, Welch's test between seed groups, Holm's correction."""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 2000


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


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error <= alpha at p_adj < alpha);
    None (no test) stays None and does not count towards the family size."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def t_interval(values: np.ndarray, level: float = 0.95, bounds: tuple[float, float] = (0.0, 100.0)) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean over seeds (None with fewer than 2), clipped
    to the values an accuracy can take (with 2 seeds t = 12.7 makes it wide)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return None
    half = t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return max(bounds[0], float(values.mean() - half)), min(bounds[1], float(values.mean() + half))


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test over seeds; None unless both sides have 2+ seeds."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    p = ttest_ind(a, b, equal_var=False).pvalue
    return None if np.isnan(p) else float(p)
