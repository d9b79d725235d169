"""Statistics as pure functions on arrays: paired tests on the same test images, a
confidence interval over seeds, Welch's test between seed groups (Hsu's df at unequal n), Holm's correction."""

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
    """Two-sided test over seeds (Welch's, with Hsu's df at unequal n: welch_matrix); None unless both
    sides have 2+ seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    p = welch_matrix([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])[0, 1]
    return None if np.isnan(p) else float(p)


def welch_matrix(samples: list[np.ndarray]) -> np.ndarray:
    """Two-sided p-values of every pair of `samples` (k x k, NaN on the diagonal and where a side
    has fewer than 2 values or both have no spread and equal means): Welch's statistic, referred to
    t with Welch-Satterthwaite's df where both sides have as many seeds, and with Hsu's df =
    min(n_a, n_b) - 1 where they differ. With few seeds on one side and many on the other,
    Satterthwaite's df trusts the small side's variance estimate too much (null false positives
    6.5-7.4% for 3 vs 10 or 20 seeds, variance ratios 1/4 to 4, at a nominal 5%);
    Hsu's df is conservative at every n and variance ratio (0.2-4%; Hsu 1938; Best & Rayner 1987,
    Technometrics 29: 205-210), and at equal n Welch's is close to exact (3.4-5.2% simulated, 3 and
    10 a side, variance ratios 1/4 to 4) and has the more power (tests/test_report_fwer.py)."""
    from scipy.special import stdtr

    k = len(samples)
    n = np.array([len(s) for s in samples], dtype=float)
    mean = np.array([np.mean(s) if len(s) else np.nan for s in samples])
    var = np.array([np.var(s, ddof=1) if len(s) > 1 else np.nan for s in samples])
    with np.errstate(divide="ignore", invalid="ignore"):
        se2 = var / n
        s = se2[:, None] + se2[None, :]
        stat = (mean[:, None] - mean[None, :]) / np.sqrt(s)
        ws = s**2 / ((se2**2 / (n - 1))[:, None] + (se2**2 / (n - 1))[None, :])
        df = np.where(n[:, None] == n[None, :], ws, np.minimum(n[:, None], n[None, :]) - 1)
        # t's survival function (scipy.stats.t.sf is stdtr(df, -x) behind argument checks that cost
        # more than the sum here), on the upper triangle only: the matrix is symmetric exactly
        iu = np.triu_indices(k, 1)
        p = np.full((k, k), np.nan)
        p[iu] = 2 * stdtr(np.where(df[iu] >= 1, df[iu], np.nan), -np.abs(stat[iu]))
        p.T[iu] = p[iu]
    return p


def mcnemar_matrix(correct: np.ndarray) -> np.ndarray:
    """Exact two-sided McNemar p-values of every pair of rows of `correct` (k x n_images, bool),
    as mcnemar, vectorised (the binomial is symmetric at 1/2: p = min(1, 2 P(X <= min(b, c))))."""
    from scipy.stats import binom

    c = correct.astype(np.int64)
    b = c @ (1 - c).T  # b[i, j]: images i gets right and j wrong
    lo, tot = np.minimum(b, b.T), b + b.T
    p = np.where(tot == 0, 1.0, np.minimum(1.0, 2 * binom.cdf(lo, np.maximum(tot, 1), 0.5)))
    p = p.astype(float)
    p[np.eye(len(c), dtype=bool)] = np.nan
    return p


def holm_array(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of a flat array (NaN: no test, not counted in the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out
