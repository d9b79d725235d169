"""Anytime-valid comparisons of recipes over seeds: verdicts whose error rate holds however the
seeds were chosen (a loop that adds seeds where a verdict is open, or a person who reads the
report and trains more), as pure functions on arrays of accuracies.

The statistic is the two-sample t e-process with a Gaussian mixture over the standardised effect
(the "safe t-test"): with the right-Haar prior on the nuisance mean and scale, the Bayes factor
of the maximal invariant depends on the pooled two-sample t statistic only, and for an effect
delta ~ N(0, g) it is closed form (Gönen, Johnson, Lu & Westfall 2005, "The Bayesian two-sample
t test", Am. Stat. 59(3), eq. 3):

    E_g = r^(-1/2) * ((1 + t^2/nu) / (1 + t^2/(r nu)))^((nu+1)/2),  r = 1 + g n_eff,
    nu = n_a + n_b - 2,  n_eff = (1/n_a + 1/n_b)^-1.

Such right-Haar Bayes factors are e-variables at every n and, in the filtration of the maximal
invariant, a test martingale under the null: P(sup_n E_n >= 1/alpha) <= alpha (Grünwald, de Heide
& Koolen 2024, "Safe testing", JRSS-B; Pérez-Ortiz, Lardy, de Heide & Grünwald 2024, "E-statistics,
group invariance and anytime-valid testing", Ann. Stat.). An average of e-processes over a grid of
g is one too, so no single effect size has to be guessed (G_GRID: moderate to huge gaps).

Family: Bonferroni over e-values, a pair decided when E >= m / alpha for the m pairs of the
family (valid whatever the dependence between pairs, and whichever pairs a reader looks at).
Interval: the anytime-valid confidence sequence of the difference a - b, every shift d whose
e-value (of a - d against b) stays below m / alpha; E is increasing in |t|, so it is the t
interval with a critical value from the e-process instead of Student's quantile. Verdicts read
off one interval: a better (lower bound > 0, equivalently E(0) >= m/alpha), b better, tied (the
whole interval inside +-margin), else undecided.

Assumptions: seeds of a recipe independent and normal with one spread for both recipes of a pair;
tests/test_sequential.py simulates the loop's own rules under the null, also with a heavy tail
(one seed in 20 diverging to 10%), and shows the naive "repeat Welch until p < alpha" inflating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations

import numpy as np

ALPHA = 0.05
MARGIN = 0.5  # accuracy points within which two recipes are "tied"
# prior variances of the standardised effect, averaged: g = 1 for seed-noise-sized gaps (a 1-point
# gap at a spread of 0.8 is 1.25), g = 100 for gaps many spreads wide (decided with few seeds)
G_GRID = (1.0, 100.0)
MIN_SEEDS = 2  # a side: a pooled spread needs nu = n_a + n_b - 2 >= 2 and a spread on each side


def e_value(t: np.ndarray | float, n_a: np.ndarray | int, n_b: np.ndarray | int) -> np.ndarray | float:
    """The mixture e-value for a pooled two-sample t statistic `t` with n_a and n_b seeds
    (vectorised; 1 where a side has fewer than MIN_SEEDS)."""
    t, n_a, n_b = np.asarray(t, float), np.asarray(n_a, float), np.asarray(n_b, float)
    ok = (n_a >= MIN_SEEDS) & (n_b >= MIN_SEEDS)
    nu = np.where(ok, n_a + n_b - 2, 1.0)
    n_eff = np.where(ok, 1.0 / (1.0 / np.maximum(n_a, 1) + 1.0 / np.maximum(n_b, 1)), 1.0)
    x = np.where(ok, np.minimum(t * t, 1e300) / nu, 0.0)
    logs = [(-0.5 * np.log(r) + 0.5 * (nu + 1) * (np.log1p(x) - np.log1p(x / r))) for r in (1.0 + g * n_eff for g in G_GRID)]
    e = np.mean(np.exp(np.minimum(np.stack(logs), 700.0)), axis=0)
    e = np.where(ok, e, 1.0)
    return float(e) if e.ndim == 0 else e


@lru_cache(maxsize=65536)
def critical_t(level: float, n_a: int, n_b: int) -> float:
    """The |t| at which the e-value reaches 1/level (inf where it never can with these n)."""
    if n_a < MIN_SEEDS or n_b < MIN_SEEDS:
        return math.inf
    target = 1.0 / level
    if e_value(1e150, n_a, n_b) < target:
        return math.inf
    lo, hi = 0.0, 1.0
    while e_value(hi, n_a, n_b) < target:
        hi *= 2.0
    for _ in range(80):  # bisection: e is increasing in |t|
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if e_value(mid, n_a, n_b) < target else (lo, mid)
    return hi


def pooled_t(a: np.ndarray, b: np.ndarray, shift: float = 0.0) -> tuple[float, float]:
    """(t of mean(a) - mean(b) - shift, its standard error) with the pooled spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    ss = ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
    se = math.sqrt(ss / (na + nb - 2) * (1 / na + 1 / nb))
    diff = a.mean() - b.mean() - shift
    if se == 0.0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), 0.0
    return diff / se, se


@dataclass
class Pair:
    """One comparison: the anytime-valid verdict on a - b at the family's level."""

    a: str
    b: str
    n_a: int
    n_b: int
    diff: float  # mean(a) - mean(b), points
    e_value: float
    lo: float  # anytime-valid interval of a - b at level alpha / m
    hi: float
    verdict: str  # a_better | b_better | tied | undecided
    seeds_needed: int | None = None  # rough seeds a side still needed (undecided pairs)


def compare(a: np.ndarray, b: np.ndarray, level: float, margin: float = MARGIN, names: tuple[str, str] = ("a", "b")) -> Pair:
    """The pair's e-value against "equal means", its confidence sequence at `level` (alpha over
    the family's size) and the verdict they give."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    diff = float(a.mean() - b.mean()) if na and nb else math.nan
    if na < MIN_SEEDS or nb < MIN_SEEDS:
        return Pair(*names, na, nb, diff, 1.0, -math.inf, math.inf, "undecided", None)
    t, se = pooled_t(a, b)
    e = e_value(t, na, nb)
    half = critical_t(level, na, nb) * se
    if se == 0.0:
        half = 0.0 if critical_t(level, na, nb) < math.inf else math.inf
    lo, hi = diff - half, diff + half
    if lo > 0:
        verdict = "a_better"
    elif hi < 0:
        verdict = "b_better"
    elif -margin < lo and hi < margin:
        verdict = "tied"
    else:
        verdict = "undecided"
    pair = Pair(*names, na, nb, diff, float(e), float(lo), float(hi), verdict)
    if verdict == "undecided":
        pair.seeds_needed = seeds_needed(diff, math.sqrt(se**2 / (1 / na + 1 / nb)), na, nb, level, margin)
    return pair


def seeds_needed(diff: float, spread: float, n_a: int, n_b: int, level: float, margin: float, cap: int = 1000) -> int | None:
    """A rough estimate of the seeds a side a pair still needs: the smallest n (each side) at
    which, were the observed difference and spread the truth, the interval would exclude 0 or fit
    inside +-margin. None past `cap` (e.g. a true difference right at the margin)."""
    n = max(n_a, n_b)
    while n <= cap:
        half = critical_t(level, n, n) * spread * math.sqrt(2 / n)
        if abs(diff) > half or (abs(diff) + half < margin):
            return n - min(n_a, n_b)
        n = n + 1 if n < 50 else int(n * 1.1)
    return None


@dataclass
class Decisions:
    """All pairs of a family, and what they say about the top group."""

    pairs: list[Pair]
    top: list[str]  # rows no other row is decided better than
    below: dict[str, str]  # row -> a row decided better than it
    open_rows: list[str]  # rows whose seeds can still change the answer
    alpha: float
    m: int  # the family's size: pairs corrected over
    margin: float = MARGIN
    answered: bool = field(default=False)


def decide(samples: dict[str, np.ndarray], alpha: float = ALPHA, margin: float = MARGIN) -> Decisions:
    """Every pair of `samples` (row -> accuracies of its seeds, in points), corrected over all
    k(k-1)/2 pairs (so any pair a reader picks, the leader's included, is covered), and the
    question the loop answers: the top group (rows no row is decided better than) with each pair
    inside it tied or decided. Open rows: those in the top group with an undecided pair inside it
    (a row decided worse than another stops: racing)."""
    names = list(samples)
    m = max(1, len(names) * (len(names) - 1) // 2)
    pairs = [compare(samples[x], samples[y], alpha / m, margin, (x, y)) for x, y in combinations(names, 2)]
    below: dict[str, str] = {}
    for p in pairs:
        if p.verdict == "a_better":
            below.setdefault(p.b, p.a)
        elif p.verdict == "b_better":
            below.setdefault(p.a, p.b)
    top = [n for n in names if n not in below]
    open_rows: list[str] = []
    for p in pairs:
        if p.verdict == "undecided" and p.a in top and p.b in top:
            open_rows += [x for x in (p.a, p.b) if x not in open_rows]
    open_rows = [n for n in names if n in open_rows]  # in the samples' order
    return Decisions(pairs, top, below, open_rows, alpha, m, margin, answered=not open_rows)


def naive_welch_decide(samples: dict[str, np.ndarray], alpha: float = ALPHA) -> set[tuple[str, str]]:
    """The rule a user applies by re-reading a fixed-n report: Welch's p below alpha over the
    family (Bonferroni), recomputed after every seed. Only for the simulations that show why the
    report must not use it on seeds chosen by looking."""
    from scipy.stats import ttest_ind

    names = list(samples)
    m = max(1, len(names) * (len(names) - 1) // 2)
    out = set()
    for x, y in combinations(names, 2):
        a, b = samples[x], samples[y]
        if len(a) >= 2 and len(b) >= 2:
            p = ttest_ind(a, b, equal_var=False).pvalue
            if p == p and p < alpha / m:
                out.add((x, y))
    return out


def next_seeds(decisions: Decisions, n_seeds: dict[str, int], cost: dict[str, float], cap: int, slots: int) -> list[str]:
    """The rows that get a seed in the next round, cheapest per unit of evidence first: every open
    row below the cap once (up to MIN_SEEDS where it has fewer: the fewest a test can use), then, while fewer than `slots`
    workers would be busy, more seeds to the open rows where one costs least per unit of variance
    it removes from the row's mean (sigma^2 / (n (n + 1)) for the (n+1)-th seed). A row may appear
    several times; the list is in priority order (a budget cuts it from the end)."""
    want = {r: n_seeds.get(r, 0) for r in decisions.open_rows if n_seeds.get(r, 0) < cap}
    plan: list[str] = []
    planned = dict(want)

    def price(r: str) -> float:
        n = planned[r]
        return cost.get(r, 1.0) * max(n, 1) * (n + 1)

    for r in sorted(want, key=price):
        for _ in range(min(cap, max(MIN_SEEDS, want[r] + 1)) - want[r]):  # a row's first round: the fewest a test can use
            plan.append(r)
            planned[r] += 1
    while len(plan) < slots:
        room = [r for r in want if planned[r] < cap]
        if not room:
            break
        r = min(room, key=price)
        plan.append(r)
        planned[r] += 1
    return plan
