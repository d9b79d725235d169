"""Anytime-valid comparisons of recipes over seeds: verdicts whose error rate holds however the
seeds were chosen (a loop that adds seeds where a verdict is open, or a person who reads the
report and trains more), as pure functions on the accuracies of seeds.

A pair of recipes is compared on the seeds both have, seed s of one against seed s of the other:
the differences d_s = a_s - b_s are independent and, with normal seed noise, normal with mean
a - b and variance var_a + var_b, whatever the two spreads (no equal-variance assumption, which
cost-driven allocation would punish: 6-22% false positives simulated with a two-sample pooled t
and spreads 0.4 vs 1.6). The statistic is the t e-process on those differences with a Gaussian
mixture over the standardised effect (the "safe t-test"): with the right-Haar prior on the
nuisance scale, the Bayes factor of the maximal invariant depends on the t statistic only, and
for an effect delta ~ N(0, g) it is closed form (Rouder, Speckman, Sun, Morey & Iverson 2009,
Psychon. Bull. Rev. 16(2), eq. 1 with a normal prior; Gönen, Johnson, Lu & Westfall 2005, Am.
Stat. 59(3), for two samples):

    E_g = r^(-1/2) * ((1 + t^2/nu) / (1 + t^2/(r nu)))^((nu+1)/2),  r = 1 + g n,  nu = n - 1.

Such right-Haar Bayes factors are e-variables at every n and, in the filtration of the maximal
invariant, a test martingale under the null: P(sup_n E_n >= 1/alpha) <= alpha (Grünwald, de Heide
& Koolen 2024, "Safe testing", JRSS-B; Pérez-Ortiz, Lardy, de Heide & Grünwald 2024, "E-statistics,
group invariance and anytime-valid testing", Ann. Stat.). An average of e-processes over a grid of
g is one too, so no single effect size has to be guessed (G_GRID: moderate to huge gaps).

Family: Bonferroni over e-values, a pair decided when E >= m / alpha for the m pairs of the
family (valid whatever the dependence between pairs, and whichever pairs a reader looks at).
Interval: the anytime-valid confidence sequence of the difference a - b, every shift d whose
e-value (of d_s - d) stays below m / alpha; E is increasing in |t|, so it is the t interval with
a critical value from the e-process instead of Student's quantile, intersected over the looks
(the first k seeds, every k: running_interval) so a verdict once reached stays while seeds are
added above the highest the pair has and the family (m) is fixed; a seed filled in below others
changes the earlier looks, and a change of m changes the level, and either can reopen a verdict. Verdicts read off one
interval: a better (lower bound > 0, equivalently E(0) >= m/alpha), b better, tied (the whole
interval inside +-margin), else undecided.

Assumption: seed-to-seed noise roughly normal. tests/test_sequential.py simulates the loop's own
rules under the null, with unequal spreads and costs, and with a heavy tail (one seed in 20
diverging to 10%), and shows the naive "repeat Welch until p < alpha" inflating.
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
# gap at a spread of 0.8 a recipe is 0.88 of the differences' spread), g = 100 for gaps many
# spreads wide (decided with few seeds)
G_GRID = (1.0, 100.0)
SPAN = 100.0  # accuracies are in points: a difference is within +-SPAN
MIN_SEEDS = 2  # seeds both recipes have before a spread exists (nu = n - 1 >= 1)



def e_value(t: np.ndarray | float, n: np.ndarray | int) -> np.ndarray | float:
    """The mixture e-value of a one-sample t statistic `t` on n paired differences (vectorised;
    1 where n < MIN_SEEDS)."""
    t, n = np.asarray(t, float), np.asarray(n, float)
    ok = n >= MIN_SEEDS
    every = bool(ok.all())  # no masking needed (a look of the e-process always is)
    nu = n - 1 if every else np.where(ok, n - 1, 1.0)
    x = np.minimum(t * t, 1e300) / nu
    x = x if every else np.where(ok, x, 0.0)
    lx, half_df, nn = np.log1p(x), 0.5 * (nu + 1), n if every else np.where(ok, n, 1.0)
    total = 0.0
    for g in G_GRID:  # the mean over the grid, summed in the grid's order
        r = 1.0 + g * nn
        total = total + np.exp(np.minimum(-0.5 * np.log(r) + half_df * (lx - np.log1p(x / r)), 700.0))
    e = total / len(G_GRID) if every else np.where(ok, total / len(G_GRID), 1.0)
    return float(e) if np.ndim(e) == 0 else e


@lru_cache(maxsize=65536)
def critical_t(level: float, n: int) -> float:
    """The |t| at which the e-value of n paired differences reaches 1/level (inf where it never can)."""
    if n < MIN_SEEDS or e_value(1e150, n) < 1.0 / level:
        return math.inf
    lo, hi = 0.0, 1.0
    while e_value(hi, n) < 1.0 / level:
        hi *= 2.0
    for _ in range(80):  # bisection: e is increasing in |t|
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if e_value(mid, n) < 1.0 / level else (lo, mid)
    return hi


@lru_cache(maxsize=1024)
def first_decisive(level: float, cap: int = 1000) -> int:
    """The fewest paired seeds with which a pair can be decided at `level` at all."""
    return next((n for n in range(MIN_SEEDS, cap + 1) if critical_t(level, n) < math.inf), cap)


@lru_cache(maxsize=1024)
def _looks_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For n looks: k = 1..n, which of the n differences each look sees (lower triangle), sqrt(k),
    and the variance's divisor max(k - 1, 1). Read-only: shared by every pair of n seeds."""
    k = np.arange(1, n + 1, dtype=float)
    out = (k, np.tri(n, dtype=bool), np.sqrt(k), np.maximum(k - 1.0, 1.0))
    for x in out:
        x.setflags(write=False)
    return out


@lru_cache(maxsize=65536)
def _criticals(level: float, n: int) -> np.ndarray:
    """critical_t(level, k) for the looks k = MIN_SEEDS..n (read-only)."""
    out = np.array([critical_t(level, k) for k in range(MIN_SEEDS, n + 1)], dtype=float)
    out.setflags(write=False)
    return out


def by_seed(x) -> dict[int, float]:
    return {int(k): float(v) for k, v in x.items()} if isinstance(x, dict) else {i: float(v) for i, v in enumerate(np.asarray(x, float))}


def differences(a, b) -> np.ndarray:
    """a's seed s minus b's seed s, over the seeds both have, in seed order."""
    if not isinstance(a, dict) and not isinstance(b, dict):  # arrays: seeds 0..len-1, the shorter's are shared
        a, b = np.asarray(a, float), np.asarray(b, float)
        m = min(len(a), len(b))
        return a[:m] - b[:m]
    a, b = by_seed(a), by_seed(b)
    return np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], dtype=float)


def se_floor(n_test: int | None) -> float:
    """The smallest standard error a mean difference is given: half a test image, in points.
    Accuracies move in steps of one test image, so seeds that agree to the image (a recipe and
    its copy, or a saturated one) measure a spread of 0, which would give a zero-width interval
    and a verdict on 2-3 seeds; a larger standard error only lowers the e-value (still valid)."""
    return 0.5 * 100.0 / n_test if n_test else 0.0


def one_sample_t(d: np.ndarray, shift: float = 0.0, floor: float = 0.0) -> tuple[float, float]:
    """(t of mean(d) - shift, its standard error, at least `floor`)."""
    n = len(d)
    se = max(float(d.std(ddof=1)) / math.sqrt(n), floor)
    diff = float(d.mean()) - shift
    if se == 0.0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), 0.0
    return diff / se, se


@dataclass
class Pair:
    """One comparison: the anytime-valid verdict on a - b at the family's level."""

    a: str
    b: str
    n_a: int  # seeds a has
    n_b: int
    diff: float  # mean of a - b over the seeds both have, points
    e_value: float  # the largest over the looks (first k seeds, every k): >= m / alpha exactly when decided better
    lo: float  # anytime-valid interval of a - b at level alpha / m
    hi: float
    verdict: str  # a_better | b_better | tied | undecided
    seeds_needed: int | None = None  # rough seeds a side still needed (undecided pairs)
    n_paired: int = 0  # seeds both have: what the test uses


def compare(a, b, level: float, margin: float = MARGIN, names: tuple[str, str] = ("a", "b"), floor: float = 0.0) -> Pair:
    """The pair's e-value against "equal means" on the seeds both have, its confidence sequence
    at `level` (alpha over the family's size) and the verdict they give. `a`, `b`: accuracies
    by seed (dicts), or arrays whose i-th is seed i; `floor`: se_floor of their test set."""
    a, b = (by_seed(x) if isinstance(x, dict) else np.asarray(x, float) for x in (a, b))
    d = differences(a, b)
    n = len(d)
    diff = float(d.mean()) if n else math.nan
    if n < MIN_SEEDS:
        return Pair(*names, len(a), len(b), diff, 1.0, -math.inf, math.inf, "undecided", None, n)
    t, se = one_sample_t(d, floor=floor)
    mean, se_k = looks(d, floor)
    e = running_e(mean, se_k)  # the e-process's running max, as the interval
    lo, hi = running_interval(d, level, floor, (mean, se_k))
    if lo > 0:
        verdict = "a_better"
    elif hi < 0:
        verdict = "b_better"
    elif -margin < lo and hi < margin:
        verdict = "tied"
    else:
        verdict = "undecided"
    pair = Pair(*names, len(a), len(b), diff, float(e), float(lo), float(hi), verdict, None, n)
    if verdict == "undecided":
        pair.seeds_needed = seeds_needed(diff, se * math.sqrt(n), n, level, margin)
    return pair


def looks(d: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the first k differences and its standard error (at least `floor`; 0 spread at
    k = 1), for every look k = 1..n at once: each look's two-pass variance (as numpy's std) on
    the rows of a lower-triangular array, instead of n calls."""
    n = len(d)
    k, seen, root, divisor = _looks_grid(n)
    mean = np.cumsum(d) / k
    dev = np.where(seen, d[None, :] - mean[:, None], 0.0)
    sd = np.sqrt((dev * dev).sum(axis=1) / divisor)
    if n:
        sd[0] = 0.0
    return mean, np.maximum(sd / root, floor)


def running_e(mean: np.ndarray, se: np.ndarray) -> float:
    """The e-process's running max over the looks k >= MIN_SEEDS (`looks`), 1 before any: the
    t of each look (0 at no difference and no spread, infinite at a difference and no spread)
    through e_value, one vectorised call."""
    m, s = mean[MIN_SEEDS - 1:], se[MIN_SEEDS - 1:]
    if not len(m):
        return 1.0
    t = np.divide(m, s, out=np.copysign(np.where(m == 0, 0.0, np.inf), m), where=s > 0)
    t[np.isnan(m) | np.isnan(s)] = np.nan  # a look with a NaN accuracy is no evidence (not an infinite t)
    return float(np.fmax.reduce(e_value(t, _looks_grid(len(mean))[0][MIN_SEEDS - 1:])))


def running_interval(d: np.ndarray, level: float, floor: float = 0.0, at_looks: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """The confidence sequence of mean(d) at `level`, intersected over the looks: the interval
    on the first k differences (seed order, the order the loop adds them) for every k, all at
    once. The guarantee holds for all k together, so the intersection holds too, and a verdict
    reached at one look cannot be undone by a later one (the interval only narrows) as long as
    `d` only grows at its end: a seed filled in below others changes the earlier looks.
    `at_looks`: looks(d, floor), where already computed."""
    mean, se = looks(d, floor) if at_looks is None else at_looks
    crit, s, m = _criticals(level, len(d)), se[MIN_SEEDS - 1:], mean[MIN_SEEDS - 1:]
    half = np.multiply(crit, s, out=np.where(np.isfinite(crit), 0.0, np.inf), where=s > 0)  # no spread: 0 (inf where no verdict can be)
    lo, hi = float(np.max(m - half)), float(np.min(m + half))
    return max(lo, -SPAN), min(hi, SPAN)  # a difference of accuracies lies within +-100 points


def seeds_needed(diff: float, spread: float, n: int, level: float, margin: float, cap: int = 1000) -> int | None:
    """A rough estimate of the further seeds a side a pair needs: the smallest n at which, were
    the observed difference and spread of the differences the truth, the interval would exclude 0
    or fit inside +-margin. None past `cap` (e.g. a true difference right at the margin). The
    seed counts tried: one at a time to 50, then 10% at a time (_ladder), all at once."""
    m = max(n, MIN_SEEDS)
    if m > cap:
        return None
    start = MIN_SEEDS if m <= 50 else m  # below 50 every start's ladder is a tail of the one from MIN_SEEDS
    ms, crit, root = _ladder(level, start, cap)
    with np.errstate(invalid="ignore"):  # an infinite critical value times a spread of 0
        half = crit[m - start:] * spread / root[m - start:]
        hit = (abs(diff) > half) | (abs(diff) + half < margin)
    return int(ms[m - start + int(np.argmax(hit))]) - n if hit.any() else None


@lru_cache(maxsize=4096)
def _ladder(level: float, start: int, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed counts seeds_needed tries from `start` (each one more to 50, then 10% more, to
    `cap`), their critical values at `level` and square roots."""
    ms, m = [], start
    while m <= cap:
        ms.append(m)
        m = m + 1 if m < 50 else int(m * 1.1)
    ms_arr = np.array(ms, dtype=np.int64)
    return ms_arr, np.array([critical_t(level, m) for m in ms]), np.sqrt(ms_arr.astype(float))


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


def decide(samples: dict[str, np.ndarray], alpha: float = ALPHA, margin: float = MARGIN, floor: float = 0.0) -> Decisions:
    """Every pair of `samples` (row -> accuracies of its seeds, in points), corrected over all
    k(k-1)/2 pairs (so any pair a reader picks, the leader's included, is covered), and the
    question the loop answers: the top group (rows no row is decided better than) with each pair
    inside it tied or decided. Open rows: those in the top group with an undecided pair inside it
    (a row decided worse than another stops: racing)."""
    names = list(samples)
    m = max(1, len(names) * (len(names) - 1) // 2)
    pairs = [compare(samples[x], samples[y], alpha / m, margin, (x, y), floor) for x, y in combinations(names, 2)]
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


def next_seeds(decisions: Decisions, n_seeds: dict[str, int], cost: dict[str, float], cap: int, slots: int) -> list[str]:
    """The rows that get a seed in the next round. A pair is tested on the seeds both rows have,
    so the open rows move up together: each to the round's target, the lowest open row's seeds
    plus one (plus more where that would leave some of `slots` workers idle), at least the fewest
    with which a pair can be decided at all (first_decisive) and at most `cap`. A row ahead of the
    target waits for its partners. Cheapest first at each seed level, so a budget (cutting the
    list from the end) drops the dearest evidence. A row may appear several times."""
    rows = [r for r in decisions.open_rows if n_seeds.get(r, 0) < cap]
    if not rows:
        return []
    n = {r: n_seeds.get(r, 0) for r in rows}
    step = max(1, slots // len(rows))
    target = min(cap, max(first_decisive(decisions.alpha / decisions.m), min(n.values()) + step))
    entries = [(level, cost.get(r, 1.0), r) for r in rows for level in range(n[r], target)]
    return [r for _, _, r in sorted(entries, key=lambda x: (x[0], x[1]))]
